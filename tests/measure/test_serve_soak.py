"""eval/serve_soak.py against our real server on 127.0.0.1: a short soak in the suite, the full
1,000-request one marked slow; and the verdict's table of what counts as a leak or a failure."""

from __future__ import annotations

import json

import pytest

from gpthf.measure.serving_soak import SoakPlan, verdict
from tests.conftest import run_script

CLEAN = {
    "sent": 10,
    "disconnects": 2,
    "outcomes": {"ok": 8, "disconnected": 2},
    "burst_outcomes": {"ok": 3, "refused": 17},
    "memory": {"at_rss_from": 100 * 2**20, "at_end": 104 * 2**20, "trace": []},
    "after": {"running": 0, "waiting": 0, "state_in_use_bytes": 0, "health": 200},
}


@pytest.mark.parametrize(
    "change, problem",
    [
        ({}, None),
        ({"sent": 9}, "only 9 of 10"),
        ({"outcomes": {"ok": 7, "disconnected": 2, "status 500": 1}}, "status 500"),
        ({"outcomes": {"ok": 9, "ReadTimeout": 1}}, "ReadTimeout"),
        (
            {"outcomes": {"ok": 6, "disconnected": 2, "refused": 2}},
            None,
        ),  # 503s while the burst fills the queue
        ({"burst_outcomes": {"refused": 19, "status 400": 1}}, "status 400"),
        ({"after": {**CLEAN["after"], "running": 1}}, "running is 1"),
        ({"after": {**CLEAN["after"], "state_in_use_bytes": 4096}}, "state_in_use_bytes is 4096"),
        ({"after": {**CLEAN["after"], "health": 503}}, "/health answers 503"),
        ({"memory": {"at_rss_from": 100 * 2**20, "at_end": 106 * 2**20}}, "more than 5%"),
        ({"memory": {"at_rss_from": 100 * 2**20, "at_end": 90 * 2**20}}, "more than 5%"),  # either way
        ({"memory": {"at_rss_from": None, "at_end": None}}, None),  # no /proc: not judged
    ],
)
def test_verdict_names_each_failure(change, problem):
    problems = verdict({**CLEAN, **change}, SoakPlan(requests=10, rss_from=5))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def _soak(trained_runs, tmp_path, *extra: str, timeout: float):
    run = run_script(
        "eval/serve_soak.py", "--ckpt", str(trained_runs["gpthf"]), "--out", str(tmp_path), *extra,
        timeout=timeout,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    line = json.loads(run.stdout.strip().splitlines()[-1])
    assert line["passed"] and line["problems"] == [] and line["server_running"]
    assert line["after"] == {"running": 0, "waiting": 0, "state_in_use_bytes": 0, "health": 200}
    assert line["burst_outcomes"].get("refused", 0) > 0, "a burst past the queue must meet 503s"
    assert (tmp_path / "serve_soak.png").stat().st_size > 5_000
    return line


def test_short_soak_leaves_nothing_running_and_no_state_held(trained_runs, tmp_path):
    line = _soak(
        trained_runs, tmp_path, "--requests", "60", "--rss-from", "20", "--disconnect-share", "0.3",
        "--max-batch", "2", "--max-queue", "3", "--burst-factor", "4", "--concurrency", "4",
        "--max-tokens", "6", "--max-seconds", "150", timeout=240,
    )  # fmt: skip
    assert line["sent"] == 60 and line["disconnects"] > 5
    assert line["outcomes"].get("disconnected", 0) > 0 and set(line["outcomes"]) <= {
        "ok",
        "disconnected",
        "refused",
    }


@pytest.mark.slow
def test_soak_of_1000_requests_with_a_fifth_disconnecting_keeps_memory_flat(trained_runs, tmp_path):
    line = _soak(trained_runs, tmp_path, "--max-seconds", "900", timeout=1000)
    assert line["sent"] == 1000 and 150 < line["disconnects"] < 250


@pytest.mark.parametrize(
    "argv",
    [
        ["--disconnect-share", "1.5"],
        ["--disconnect-share", "nan"],
        ["--requests", "0"],
        ["--requests", "100", "--rss-from", "100"],
        ["--max-batch", "-1"],
    ],
)
def test_cli_refuses_bad_numbers_with_one_error_line(argv, tmp_path):
    run = run_script("eval/serve_soak.py", "--ckpt", str(tmp_path), *argv, "--out", str(tmp_path), timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: serve_soak.py: "), (
        run.stderr
    )
