"""`eval/precision.py` and `eval/batching.py` run on a trained checkpoint and report sane numbers."""

import json

import pytest

from tests.conftest import run_script


def test_precision_compares_bf16_with_fp32(trained_runs, tmp_path):
    run = run_script(
        "eval/precision.py", "--ckpt", str(trained_runs["gpthf"]), "--prompts", "3", "--new-tokens", "40",
        "--max-rows", "8", "--out", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < result["teacher_forced_same_share"] <= 1 and 0 < result["greedy_same_share"] <= 1
    assert result["bits_per_byte"]["fp32"] > 0 and abs(result["bpb_relative_change"]) < 0.05
    assert len(result["first_difference"]) == 3 and (tmp_path / "precision.png").stat().st_size > 5_000


def test_continuous_batching_bench_gives_the_same_tokens(trained_runs, tmp_path):
    run = run_script(
        "eval/batching.py", "--ckpt", str(trained_runs["gpthf"]), "--prompts", "20", "--slots", "4",
        "--new-tokens", "12", "--repeats", "1", "--out", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["same_tokens"] is True and result["prompts"] == 20 and result["step_bound"] >= 1
    assert result["device"] == "cpu" and "peak_cuda_mb" not in result
    assert result["fixed_tokens_per_s"] > 0 and result["continuous_tokens_per_s"] > 0
    assert len(result["continuous_over_fixed_per_round"]) == 1
    assert result["median_round_ratio"] == pytest.approx(result["continuous_over_fixed"])  # one round
    assert 1 <= result["new_tokens_per_prompt"]["min"] <= result["new_tokens_per_prompt"]["max"] <= 12
    assert (tmp_path / "batching.png").stat().st_size > 5_000
