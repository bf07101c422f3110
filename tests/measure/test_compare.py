"""`eval/compare.py --quick` runs and its numbers are sane (benchmarks are not tests of speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_compare_quick_smoke(tmp_path, data_cache):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "eval/compare.py", "--quick", "--no-hf", "--threads", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    headline = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < headline["gpthf_state_over_gpt_state"] < 1
    assert headline["gpthf_cached_over_gpt_full"] > 1
    results = json.loads((tmp_path / "compare.json").read_text())
    assert {r["strategy"] for r in results["decode"]} == {"cached", "full"}
    assert all(
        r["tokens_per_s"] > 0 and r["ms_per_token"] > 0 and r["prefill_s"] > 0 for r in results["decode"]
    )
    assert results["training_tokens_per_s"]["gpthf"] > 0 and results["training_tokens_per_s"]["gpt"] > 0
    assert (tmp_path / "compare.png").stat().st_size > 10_000
