"""eval/scaling.py: one command runs the sweep and measures every run; a failed run is named and left
out; every point of the table comes from a run."""

import json

import pytest

from gpthf.measure.scaling import pareto_front
from tests.conftest import SMALL_DATA, run_script

DECODE = ("--context", "48", "--batch", "2", "--new-tokens", "3", "--repeats", "1", "--eval-rows", "8")


def overrides(data_cache, tmp_path, *extra):
    every = [f"cache_dir={data_cache}", f"output_dir={tmp_path / 'outputs'}", "train=test", "train.eval_rows=8",
             *SMALL_DATA, *extra]  # fmt: skip
    return [arg for o in every for arg in ("--override", o)]


def test_scaling_runs_its_sweep_and_measures_every_run(data_cache, tmp_path):
    out = tmp_path / "study"
    run = run_script(
        "eval/scaling.py", "--sizes", "test", "--kinds", "gpthf", "gpt", "--tokens", "1200",
        *DECODE, *overrides(data_cache, tmp_path), "--out", str(out), timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["runs"] == summary["finished"] == 2 and summary["failed"] == []
    assert summary["sweep_s"] > 0 and summary["pareto_front"]
    rows = json.loads((out / "scaling.json").read_text())["rows"]
    sweep = {o["job"]: o for o in json.loads((out / "sweep" / "sweep.json").read_text())}
    assert sorted(r["arch"] for r in rows) == ["gpt-test", "gpthf-test"]
    for row in rows:  # every point is a run of the sweep: its job, its tokens, its own score
        assert sweep[row["job"]]["status"] == "finished"
        assert row["train_tokens"] >= 1200 and row["train_flops"] > 0 and 0 < row["test_bits_per_byte"] < 20
        assert row["decode_tokens_per_s"] > 0 and row["state_bytes_per_row"] > 0
    ratio = summary["gpthf_over_gpt_test"]
    assert 0.5 < ratio["bits_per_byte"] < 2 and ratio["state_bytes"] < 1, (
        "GPTHF keeps less state than the GPT"
    )
    assert (out / "scaling.png").stat().st_size > 10_000 and "| gpthf-test |" in (
        out / "scaling.md"
    ).read_text()


@pytest.mark.slow  # CI time: run with `pytest -m slow`
def test_a_failed_run_of_the_sweep_is_named_and_the_rest_measured(data_cache, tmp_path):
    sweep_dir = tmp_path / "sweep"
    trained = run_script(
        "pretrain.py", "-m", "arch=gpthf-test,gpt-test", "init_from=null,/nonexistent", "budget=1h",
        "train.max_tokens=1200", f"hydra.sweep.dir={sweep_dir}",
        *(o for o in overrides(data_cache, tmp_path) if o != "--override"), timeout=600,
    )  # fmt: skip
    assert trained.returncode == 2, trained.stderr[-3000:]
    run = run_script("eval/scaling.py", "--sweep-dir", str(sweep_dir), *DECODE, "--sizes", "test",
                     "--out", str(tmp_path / "study"), timeout=600)  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["finished"] == 2 and [f["job"] for f in summary["failed"]] == [1, 3]
    assert all("does not exist" in f["error"] for f in summary["failed"])
    assert "run #1 (gpthf-test) failed, left out" in run.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sizes", "7m"], "no arch config for gpthf-7m"),
        (["--sweep-dir", "/nonexistent"], "sweep.json does not exist"),
        (["--tokens", "0"], "must be > 0"),
    ],
)
def test_bad_scaling_arguments_are_one_line(tmp_path, args, message):
    run = run_script("eval/scaling.py", *args, "--out", str(tmp_path), timeout=120)
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error:") and message in line


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(1.0, 3.0), (2.0, 2.0), (3.0, 2.5), (4.0, 1.0), (2.0, 2.0)]
    assert pareto_front(points) == [0, 1, 4, 3]  # (3, 2.5) is beaten by (2, 2); equal points both stay
