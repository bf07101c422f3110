"""Runs that must not trample each other or themselves: two processes at once, a resume into a live
run, a resume after the data or the optimisation changed, a diverging loss, a crafted training state,
Ctrl-C. Real processes where the property is about processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpthf.cli import EXIT_USER_ERROR, run_cli
from gpthf.config import load_config
from gpthf.errors import CheckpointError, ConfigError, TrainingError
from gpthf.training import trainer as trainer_module
from gpthf.training.checkpoint import latest_checkpoint
from gpthf.training.metrics import read_metrics
from gpthf.training.run_dir import RunLock, claim_run
from gpthf.training.trainer import train
from tests.conftest import REPO, frozen_clock, run_overrides, tiny_overrides

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def pretrain(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "pretrain.py", *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def steps_of(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if "loss" in r]


def test_two_runs_of_the_same_name_started_at_once_get_their_own_folders(data_cache, tmp_path):
    args = run_overrides(data_cache, tmp_path, "budget=1h", "train.max_tokens=3000")
    first, second = pretrain(*args), pretrain(*args)
    outs = [p.communicate(timeout=240) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1][-1500:] for o in outs]
    runs = sorted((tmp_path / "gpthf-kjv").iterdir())
    assert len(runs) == 2, "one folder per run"
    for run in runs:
        steps = steps_of(run)
        assert steps == sorted(set(steps)), "no step written twice into one metrics.jsonl"
        assert (run / "checkpoints" / "final" / "model.safetensors").is_file()
    finals = {o[0].strip().splitlines()[-1].rsplit("checkpoint ", 1)[1] for o in outs}
    assert len(finals) == 2, "each run reports its own final checkpoint"


def test_resume_into_a_live_run_is_refused_and_works_once_it_stopped(data_cache, tmp_path):
    args = run_overrides(data_cache, tmp_path, "budget=60s", "train.checkpoint_every_minutes=0.01")
    live = pretrain(*args)
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob("gpthf-kjv/*/checkpoints/step-*/model.safetensors")):
            assert time.monotonic() < deadline and live.poll() is None, "the live run wrote no checkpoint"
            time.sleep(0.2)
        intruder = subprocess.run(
            [sys.executable, "pretrain.py", *args, "resume=true"],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert intruder.returncode == EXIT_USER_ERROR, intruder.stderr[-1500:]
        (line,) = intruder.stderr.strip().splitlines()
        assert "is in use by process" in line and str(live.pid) in line
    finally:
        live.send_signal(signal.SIGTERM)
        out, err = live.communicate(timeout=120)
    assert live.returncode == 0, err[-1500:]
    (run_dir,) = (tmp_path / "gpthf-kjv").iterdir()
    steps = steps_of(run_dir)
    assert steps == sorted(set(steps)), "the refused resume wrote nothing into the live run"
    resumed = subprocess.run(
        [sys.executable, "pretrain.py", *args, "resume=true", "budget=1s"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-1500:]  # its budget already spent: it only finishes
    assert latest_checkpoint(run_dir).name == "final"


def test_a_stale_lock_of_a_dead_process_does_not_block(data_cache, tmp_path):
    first = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000")),
        clock=frozen_clock,
        stop_after_steps=2,
    )
    (first / ".lock").write_text("process 4194305 on a crashed host")  # a leftover: no process holds it
    resumed = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000", "resume=true")),
        clock=frozen_clock,
    )
    assert resumed == first and latest_checkpoint(resumed).name == "final"


def test_resume_refuses_a_run_this_process_holds(data_cache, tmp_path):
    run_dir = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000")),
        clock=frozen_clock,
        stop_after_steps=2,
    )
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        with pytest.raises(ConfigError, match="is in use by process"):
            train(load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000", "resume=true")))
    finally:
        lock.release()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_refused_resume_touches_nothing_of_the_live_run(data_cache, tmp_path):
    """A live run mid-write has a staging folder and may have moved a checkpoint aside: a refused
    resume=true must not 'recover' them (that deleted the checkpoint the live run was writing)."""
    run_dir = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000")),
        clock=frozen_clock,
        stop_after_steps=2,
    )
    checkpoints = run_dir / "checkpoints"
    (checkpoints / ".step-00000004.tmp").mkdir()  # what the live run is writing right now
    (checkpoints / ".step-00000004.tmp" / "model.safetensors").write_bytes(b"half")
    (checkpoints / ".final.old-123").mkdir()  # a checkpoint it moved aside for its replacement
    (checkpoints / ".final.old-123" / "config.json").write_text("{}")
    lock = RunLock(run_dir)
    lock.acquire()  # the live run
    before = _files(run_dir)
    try:
        with pytest.raises(ConfigError, match="is in use by process"):
            train(load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000", "resume=true")))
    finally:
        lock.release()
    assert _files(run_dir) == before, "the refused resume changed or removed the live run's files"


def test_a_live_run_with_nothing_to_resume_yet_does_not_hide_an_older_one(data_cache, tmp_path):
    older = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000")),
        clock=frozen_clock,
        stop_after_steps=2,
    )
    newer = older.parent / "29991231-000000"  # started later, still before its first checkpoint
    newer.mkdir()
    (newer / "config.yaml").write_bytes((older / "config.yaml").read_bytes())
    lock = RunLock(newer)
    lock.acquire()
    try:
        resumed = train(
            load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000", "resume=true")),
            clock=frozen_clock,
        )
    finally:
        lock.release()
    assert resumed == older and latest_checkpoint(older).name == "final"
    assert sorted(p.name for p in newer.iterdir()) == [".lock", "config.yaml"], "the live run untouched"


def test_resume_into_a_run_folder_that_cannot_be_locked_is_one_line(data_cache, tmp_path):
    from tests.test_bad_input import read_only

    run_dir = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000")),
        clock=frozen_clock,
        stop_after_steps=2,
    )
    (run_dir / ".lock").unlink()  # as a run copied from elsewhere, or on a read-only mount
    with read_only(run_dir):
        with pytest.raises(ConfigError, match="cannot lock run folder"):
            train(load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000", "resume=true")))


def test_resume_after_the_corpus_changed_is_refused_before_any_rebuild(tmp_path, tales_dir):
    for i in range(4, 40):  # enough rows for a batch
        (tales_dir / f"tale{i}.txt").write_text(
            f"Tale {i} begins here. The fox ran far. It came home at night."
        )
    overrides = [
        *tiny_overrides(tmp_path / "cache", tales_dir),
        "arch=gpthf-test",
        "train=test",
        f"output_dir={tmp_path / 'out'}",
        "train.max_tokens=2000",
    ]
    train(load_config(overrides), clock=frozen_clock, stop_after_steps=2)
    builds = sorted(p.name for p in (tmp_path / "cache").iterdir())
    (tales_dir / "tale0.txt").write_text("An edited tale. It is different now.")
    with pytest.raises(ConfigError, match="the data set changed since this run started"):
        train(load_config([*overrides, "resume=true"]), clock=frozen_clock)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == builds, "nothing rebuilt"


@pytest.mark.parametrize("change", ["train.lr=0.002", "train.batch_size=8", "train.seed=3"])
def test_resume_with_changed_optimisation_is_refused(data_cache, tmp_path, change):
    args = run_overrides(data_cache, tmp_path, "train.max_tokens=3000")
    train(load_config(args), clock=frozen_clock, stop_after_steps=2)
    key = change.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}=.* \(given .*\) differ"):
        train(load_config([*args, change, "resume=true"]), clock=frozen_clock)
    resumed = train(load_config([*args, "resume=true", "train.log_every_steps=5"]), clock=frozen_clock)
    assert latest_checkpoint(resumed).name == "final", "harmless keys may change"


def test_a_diverging_loss_stops_with_the_last_good_checkpoint(data_cache, tmp_path, monkeypatch, capsys):
    real_loss, calls = trainer_module.next_token_loss, {"n": 0}

    def poisoned(logits, ids, reduction="mean"):
        calls["n"] += 1
        loss = real_loss(logits, ids, reduction=reduction)
        return loss * float("nan") if calls["n"] > 12 else loss  # from step 7 on (2 micro-batches a step)

    monkeypatch.setattr(trainer_module, "next_token_loss", poisoned)
    args = run_overrides(data_cache, tmp_path, "train.max_tokens=100000")
    first = train(load_config(args), clock=frozen_clock, stop_after_steps=3)  # a good checkpoint at step 3
    main = __import__("runpy").run_path(str(REPO / "pretrain.py"))["main"]
    assert run_cli(main, [*args, "resume=true"]) == EXIT_USER_ERROR
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the resume's log lines
    assert line.startswith("error: the training loss became nan at step 7") and "step-00000003" in line
    assert [p.name for p in (first / "checkpoints").iterdir()] == ["step-00000003"], "nothing saved after it"
    with pytest.raises(TrainingError):  # and the same from Python
        train(load_config([*args, "resume=true"]), clock=frozen_clock)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp") / f"gpthf-pwned-{os.getpid()}"


def test_a_crafted_training_state_cannot_run_code(data_cache, tmp_path):
    run_dir = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000")),
        clock=frozen_clock,
        stop_after_steps=2,
    )
    state_file = latest_checkpoint(run_dir) / "train_state.pt"
    state = torch.load(state_file, weights_only=True)  # what gpthf writes loads without pickle's trust
    assert isinstance(state["rng"][0]["numpy"][1], torch.Tensor)
    torch.save({"progress": RunsCode()}, state_file)
    with pytest.raises(CheckpointError, match="holds objects other than tensors and numbers"):
        train(
            load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000", "resume=true")),
            clock=frozen_clock,
        )
    assert not MARKER.exists(), "the crafted object was not unpickled"


def test_ctrl_c_saves_a_checkpoint_then_stops(data_cache, tmp_path):
    run = pretrain(*run_overrides(data_cache, tmp_path, "budget=60s"))
    deadline = time.monotonic() + 90
    while not list(tmp_path.glob("gpthf-kjv/*/metrics.jsonl")) or not steps_of(
        next(tmp_path.glob("gpthf-kjv/*"))
    ):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err[-1500:]
    assert "continue with resume=true" in err
    (run_dir,) = (tmp_path / "gpthf-kjv").iterdir()
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name.startswith("step-")
    assert json.loads((checkpoint / "config.json").read_text())["step"] >= steps_of(run_dir)[0]


def test_a_claim_left_unstarted_leaves_nothing_and_a_started_one_keeps_its_run(data_cache, tmp_path):
    cfg = load_config(run_overrides(data_cache, tmp_path))
    with claim_run(cfg) as claim:  # the data, model or saved state failed to build, or hydra never ran it
        assert (claim.run_dir / "config.yaml").is_file()
    assert not claim.run_dir.exists()
    with claim_run(cfg) as claim:
        claim.started = True
    assert (claim.run_dir / "config.yaml").is_file()
    lock = RunLock(claim.run_dir)
    lock.acquire()  # released with the claim
    lock.release()
