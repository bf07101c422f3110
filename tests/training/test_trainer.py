"""Integration tests of `pretrain.py`'s loop on the embedded corpus with a model that steps in ms."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpthf.config import load_config
from gpthf.loading import load_model_from_checkpoint
from gpthf.training import metrics
from gpthf.training.checkpoint import latest_checkpoint
from gpthf.training.metrics import read_metrics
from gpthf.training.trainer import train
from tests.conftest import frozen_clock, run_overrides

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def final_record(run_dir: Path) -> dict:
    return metrics.final_record(read_metrics(run_dir))


def test_budget_stops_on_time_with_lr_at_zero(data_cache, tmp_path):
    run_dir = train(load_config(run_overrides(data_cache, tmp_path, "budget=10s")))
    final = final_record(run_dir)
    assert 9.0 <= final["elapsed_s"] <= 11.0
    assert final["lr"] == 0.0
    assert math.isfinite(final["val_bpb"]) and 0 < final["val_bpb"] < 8
    assert latest_checkpoint(run_dir).name == "final"
    assert (run_dir / "loss.png").stat().st_size > 0 and (run_dir / "config.yaml").is_file()
    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    assert losses[-1] < losses[0], "it learns"


@pytest.mark.parametrize("arch", ["gpthf-test", "gpt-test"])
def test_resume_continues_exactly(data_cache, tmp_path, arch):
    steps = ["budget=1h", "train.max_tokens=4000"]
    straight = train(
        load_config(run_overrides(data_cache, tmp_path / "a", *steps, arch=arch)), clock=frozen_clock
    )
    first = train(
        load_config(run_overrides(data_cache, tmp_path / "b", *steps, arch=arch)),
        clock=frozen_clock,
        stop_after_steps=7,
    )
    assert latest_checkpoint(first).name == "step-00000007"
    resumed = train(
        load_config(run_overrides(data_cache, tmp_path / "b", *steps, "resume=true", arch=arch)),
        clock=frozen_clock,
    )
    assert resumed == first
    expected = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(straight) if "loss" in r]
    got = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(resumed) if "loss" in r]
    assert len(expected) > 10 and got == expected
    assert final_record(resumed)["val_loss"] == final_record(straight)["val_loss"]
    assert final_record(straight)["lr"] == 0.0


def test_resume_refuses_a_finished_or_missing_run(data_cache, tmp_path):
    from gpthf.errors import ConfigError

    with pytest.raises(ConfigError, match="no run"):
        train(load_config(run_overrides(data_cache, tmp_path, "resume=true")))
    train(load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=500")), clock=frozen_clock)
    with pytest.raises(ConfigError, match="already finished"):
        train(load_config(run_overrides(data_cache, tmp_path, "resume=true")))


def test_kill_9_during_training_loses_only_work_since_the_last_checkpoint(data_cache, tmp_path):
    args = run_overrides(data_cache, tmp_path, "budget=120s", "train.checkpoint_every_minutes=0.005")
    proc = subprocess.Popen(
        [sys.executable, "pretrain.py", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            runs = list((tmp_path / "gpthf-kjv").glob("*/checkpoints/step-*"))
            if len(runs) >= 2:
                break
            time.sleep(0.2)
        time.sleep(0.37)  # land somewhere inside a step or a checkpoint write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run_dir,) = (tmp_path / "gpthf-kjv").glob("*/")
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name.startswith("step-")
    model, meta, _ = load_model_from_checkpoint(checkpoint)
    assert meta.step > 0
    # Continue the same run; a short budget finishes it at once.
    done = cli(
        sys.executable, "pretrain.py", *run_overrides(data_cache, tmp_path, "resume=true", "budget=1s")
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert latest_checkpoint(run_dir).name == "final"
    assert final_record(run_dir)["step"] >= meta.step


def test_torchrun_ddp_two_processes_agree_with_one_process(data_cache, tmp_path):
    steps = ["budget=1h", "train.max_tokens=3000"]  # token-driven: both runs see the same rows and schedule
    ddp = cli(
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "pretrain.py",
        *run_overrides(data_cache, tmp_path / "ddp", "impl=ddp", *steps),
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = cli(sys.executable, "pretrain.py", *run_overrides(data_cache, tmp_path / "single", *steps))
    assert single.returncode == 0, single.stderr[-3000:]
    (ddp_run,) = (tmp_path / "ddp" / "gpthf-kjv").glob("*/")
    (single_run,) = (tmp_path / "single" / "gpthf-kjv").glob("*/")
    final = final_record(ddp_run)
    assert final["world_size"] == 2 and final["ranks_agree"] is True
    assert load_model_from_checkpoint(ddp_run)[1].step == final["step"]
    ddp_losses = [(r["step"], r["tokens"], r["loss"]) for r in read_metrics(ddp_run) if "loss" in r]
    single_losses = [(r["step"], r["tokens"], r["loss"]) for r in read_metrics(single_run) if "loss" in r]
    assert [r[:2] for r in ddp_losses] == [r[:2] for r in single_losses], "same steps over the same tokens"
    for (_, _, a), (_, _, b) in zip(ddp_losses, single_losses):
        assert a == pytest.approx(b, rel=2e-2), "gradients averaged over ranks equal the one-process gradient"


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason='deepspeed is not installed (pip install ".[distributed]")',
)
@pytest.mark.slow  # CI time: run with `pytest -m slow`
def test_deepspeed_zero1_single_process_run_finishes(data_cache, tmp_path):
    run = cli(
        sys.executable,
        "pretrain.py",
        *run_overrides(data_cache, tmp_path, "impl=deepspeed", "impl.zero_stage=1", "budget=6s"),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (tmp_path / "gpthf-kjv").glob("*/")
    final = final_record(run_dir)
    assert math.isfinite(final["val_loss"]) and final["step"] > 0
    assert (latest_checkpoint(run_dir) / "deepspeed").is_dir()


@pytest.mark.parametrize(
    "bad, message",
    [("budget=abc", "not a duration"), ("arch=nope", "choose one of"), ("budget=-2", "not a duration")],
)
def test_bad_override_exits_with_one_line(bad, message):
    run = cli(sys.executable, "pretrain.py", bad)
    assert run.returncode == 2
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_metrics_records_are_complete(data_cache, tmp_path):
    run_dir = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=1000")), clock=frozen_clock
    )
    records = read_metrics(run_dir)
    step_records = [r for r in records if "loss" in r]
    assert {"step", "tokens", "loss", "lr", "tokens_per_s", "elapsed_s"} <= set(step_records[0])
    assert [r["step"] for r in step_records] == list(range(1, len(step_records) + 1))
    assert all(b["tokens"] > a["tokens"] for a, b in zip(step_records, step_records[1:]))
    assert json.loads((latest_checkpoint(run_dir) / "config.json").read_text())["arch"]["model"] == "gpthf"
