"""`eval/data_bench.py` runs end to end on a tiny corpus and its numbers are sane (not a speed test)."""

import json

import pytest

from tests.conftest import run_script


@pytest.mark.slow  # CI time: run with `pytest -m slow`
def test_data_bench_smoke(tmp_path):
    run = run_script(
        "eval/data_bench.py", "--sizes-mb", "0.3", "--num-proc", "1", "2", "--train-steps", "1",
        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    # uint16 tokens plus a small row index; at 0.3 MB the ~270 KB tokenizer.json adds about one byte
    assert 1.9 < summary["bytes_per_token_max"] < 4
    assert 0 < summary["prepare_peak_rss_mb_max"] < 1500
    assert 0 < summary["first_step_s_max"] < 120
    results = json.loads((tmp_path / "out" / "data_bench.json").read_text())
    (row,) = results["sizes"]
    assert row["prepare"]["1"]["tokens"] == row["prepare"]["2"]["tokens"] > 10_000
    assert (tmp_path / "out" / "data_bench.png").stat().st_size > 0
    assert not list((tmp_path / "work").glob("cache-*")), "prepared data sets are removed unless kept"
