"""Validation while training: it changes nothing the training computes (a token-driven run with it
equals one without, weights included), its time is charged to the budget and shown apart, a resume
neither repeats nor loses it, every DDP rank runs it at the same step, and at the default row count
it costs a third of a training step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gpthf.config import load_config
from gpthf.training.checkpoint import latest_checkpoint
from gpthf.training.metrics import read_metrics
from gpthf.training.trainer import train
from tests.conftest import REPO, frozen_clock, run_overrides

TOKEN_DRIVEN = ["budget=1h", "train.max_tokens=3000"]


class TickingClock:
    """Every call is `tick` seconds after the last: steps and validations take time, reproducibly."""

    def __init__(self, tick: float = 1.0, start: float = 0.0):
        self.now, self.tick = start, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def split(records: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """(training records, periodic validation records, the final record)."""
    periodic = [r for r in records if "eval_s" in r]
    return [r for r in records if "loss" in r], periodic, [r for r in records if "ranks_agree" in r][-1]


def test_validation_while_training_changes_no_training_result(data_cache, tmp_path):
    plain = train(load_config(run_overrides(data_cache, tmp_path / "a", *TOKEN_DRIVEN)), clock=frozen_clock)
    checked = train(
        load_config(run_overrides(data_cache, tmp_path / "b", *TOKEN_DRIVEN, "train.eval_every_tokens=700")),
        clock=frozen_clock,
    )
    steps_a, none, final_a = split(read_metrics(plain))
    steps_b, periodic, final_b = split(read_metrics(checked))
    # Due at the loop's top after a step crossed a multiple of 700: none after the last step.
    assert none == [] and len(periodic) == steps_b[-2]["tokens"] // 700 >= 3
    fields = ("step", "tokens", "loss", "lr", "grad_norm")
    assert [[r[k] for k in fields] for r in steps_a] == [[r[k] for k in fields] for r in steps_b]
    assert final_a["val_loss"] == final_b["val_loss"]
    weights_a, weights_b = (
        load_file(latest_checkpoint(run) / "model.safetensors") for run in (plain, checked)
    )
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), "the same weights"
    # Each validation at the first step past a multiple of 700 tokens, on the rows asked for.
    tokens_at = {r["step"]: r["tokens"] for r in steps_b} | {0: 0}
    for k, record in enumerate(periodic, start=1):
        assert tokens_at[record["step"] - 1] < 700 * k <= record["tokens"]
        assert record["val_tokens"] == periodic[0]["val_tokens"] > 0 and record["val_bpb"] > 0
    assert (checked / "loss.png").stat().st_size > 0


def test_validation_time_is_charged_to_the_budget_and_shown_apart(data_cache, tmp_path):
    overrides = run_overrides(data_cache, tmp_path, "budget=40s", "train.eval_every_minutes=0.1")
    first = train(load_config(overrides), clock=TickingClock(), stop_after_steps=6)
    spent = max(r["elapsed_s"] for r in read_metrics(first))
    run_dir = train(load_config([*overrides, "resume=true"]), clock=TickingClock(start=1000.0))
    steps, periodic, final = split(read_metrics(run_dir))
    assert len(periodic) >= 3 and all(r["eval_s"] > 0 for r in periodic)
    assert any(r["step"] <= 6 for r in periodic) and any(r["elapsed_s"] > spent for r in periodic), (
        "both sessions"
    )
    assert final["elapsed_s"] >= 40, "the budget, validations included, ran out"
    validating = sum(r["eval_s"] for r in periodic)
    assert final["elapsed_s"] - final["train_elapsed_s"] == pytest.approx(validating)
    for earlier, later in zip(periodic, periodic[1:]):
        assert later["elapsed_s"] - earlier["elapsed_s"] >= 6.0, "every 0.1 minutes of budget, no more often"
    for record in steps:
        done = sum(r["eval_s"] for r in periodic if r["elapsed_s"] <= record["elapsed_s"])
        assert record["elapsed_s"] - record["train_elapsed_s"] == pytest.approx(done)


@pytest.mark.slow  # two processes under torchrun
def test_ddp_ranks_validate_at_the_same_steps(data_cache, tmp_path):
    # Validation every 0.6 s of each rank's own clock: the ranks must still agree when it is due.
    args = run_overrides(data_cache, tmp_path, "impl=ddp", *TOKEN_DRIVEN, "train.eval_every_minutes=0.01")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29531",
            "pretrain.py",
        ]
        + args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (run_dir,) = (tmp_path / "gpthf-kjv").glob("*/")
    _, periodic, final = split(read_metrics(run_dir))
    assert periodic and final["world_size"] == 2 and final["ranks_agree"] is True


@pytest.mark.slow  # eight steps of the default (CPU) shape and optimisation
def test_a_validation_at_the_default_row_count_costs_a_third_of_a_step(data_cache, tmp_path):
    """The default row count (train.periodic_eval_rows, 32 rows, forwards only) against the default
    optimisation (train=default: 32 rows a step, forward and backward): about a third of a step's
    time, so validating every N minutes costs that over 60·N seconds: with N = 1, ≤ 5 % of the
    budget wherever a step takes under ~9 s. Timed as a ratio, which a busy machine slows alike."""
    test_only = ("train=test", "train.eval_rows=16")
    overrides = [o for o in run_overrides(data_cache, tmp_path, arch="gpthf-tiny") if o not in test_only]
    overrides += ["train=default", "budget=1h", "train.max_tokens=16000", "train.eval_every_tokens=5000"]
    run_dir = train(load_config(overrides))
    steps, periodic, final = split(read_metrics(run_dir))
    step_s = final["train_elapsed_s"] / final["step"]
    ratio = sum(r["eval_s"] for r in periodic) / len(periodic) / step_s
    shares = ", ".join(f"every {n} min: {ratio * step_s / (60 * n):.1%}" for n in (1, 10))
    print(f"a validation costs {ratio:.2f} of a {step_s:.2f} s step; share of the budget here {shares}")
    assert len(periodic) == 3 and ratio <= 0.5
