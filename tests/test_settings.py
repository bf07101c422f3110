"""The settings' rules (gpthf.settings): importable without torch, one rule for a flag and the field
it sets, and a command line that refuses a bad flag before it imports torch."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from gpthf.errors import ConfigError
from gpthf.settings import (
    CHOICES,
    MAX_BATCH,
    MAX_NEW_TOKENS,
    MAX_QUEUE,
    MAX_SENTENCES,
    MAX_STATE_BYTES,
    MAX_TOKENS,
    SEED,
    SLOTS,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    Range,
    Setting,
)
from tests.conftest import REPO


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_the_rules_and_the_config_schema_import_without_torch_or_numpy():
    run = run_python(
        "import sys, gpthf.settings, gpthf.config; "
        "heavy = {'torch', 'numpy'} & set(sys.modules); assert not heavy, heavy"
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    "flags, error",
    [
        (["--max-new-tokens", "-1"], "--max-new-tokens=-1 must be >= 0"),
        (["--temperature", "inf"], "--temperature=inf must be a finite number >= 0 (0 = greedy)"),
        (["--top-k", "0"], "--top-k=0 must be >= 1"),
        (["--top-p", "1.5"], "--top-p=1.5 must be a number in (0, 1]"),
        (["--max-sentences", "0"], "--max-sentences=0 must be >= 1 (leave it out for no limit)"),
        (["--batch-size", "0"], "argument --batch-size: 0 must be > 0"),
    ],
)
def test_generate_refuses_a_bad_flag_before_importing_torch(flags, error):
    """One `error:` line, exit 2, and torch never imported (no checkpoint is even looked at)."""
    run = run_python(
        "import runpy, sys\n"
        "from gpthf.cli import run_cli\n"
        "main = runpy.run_path('generate.py')['main']\n"
        f"code = run_cli(main, ['--ckpt', 'no-such-checkpoint', '--prompt', 'Hi.', *{flags!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert error in lines[0]


# Values at and around each rule's edges, and values of the wrong kind.
PROBES = [None, True, "3", -1, 0, 1, 2, 0.5, 1.0, 1.5, -0.0, math.nan, math.inf, -math.inf, 2**40]


@pytest.mark.parametrize(
    "setting",
    [MAX_NEW_TOKENS, MAX_SENTENCES, MAX_TOKENS, SEED, SLOTS, TOP_K, MAX_BATCH, MAX_QUEUE, MAX_STATE_BYTES, CHOICES],
)
def test_a_whole_number_setting_allows_whole_numbers_in_its_range_only(setting: Setting):
    for value in PROBES:
        whole = type(value) is int
        allowed = (value is None and setting.optional) or (whole and setting.valid.contains(value))
        assert (setting.problem(value) is None) == allowed, (setting.name, value)


@pytest.mark.parametrize("setting", [TEMPERATURE, TOP_P])
def test_a_number_setting_allows_finite_numbers_in_its_range_only(setting: Setting):
    for value in PROBES:
        number = type(value) in (int, float) and math.isfinite(value)
        allowed = (value is None and setting.optional) or (number and setting.valid.contains(value))
        assert (setting.problem(value) is None) == allowed, (setting.name, value)


def test_a_library_error_and_a_flag_error_say_the_same_of_one_rule():
    for as_flag, name in [(False, "max_sentences"), (True, "--max-sentences")]:
        with pytest.raises(ConfigError) as caught:
            MAX_SENTENCES.check(0, as_flag=as_flag)
        assert str(caught.value) == f"{name}=0 must be >= 1 (leave it out for no limit)"
    with pytest.raises(ConfigError, match=r"^max_tokens=2\.5 must be an integer >= 1$"):
        MAX_TOKENS.check(2.5)


def test_a_range_is_written_as_a_requirement_and_around_its_key():
    assert Range(0, 1, low_open=True).bounds() == "in (0, 1]"
    assert Range(0, 1, high_open=True).bounds() == "in [0, 1)"
    assert Range(1).bounds() == ">= 1" and Range(0, low_open=True).bounds() == "> 0"
    assert Range(high=3).bounds() == "<= 3" and Range().bounds() == ""
    assert Range(0, 2**32 - 1).describe("train.seed") == "0 ≤ train.seed ≤ 4294967295"
    assert Range(0, 1e-3, low_open=True).describe("x") == "0 < x ≤ 0.001"
    low = Range(1, too_low=lambda _: "null for no limit")
    assert low.problem("k", 0) == "k=0 is out of range; valid: 1 ≤ k (null for no limit)"
    assert low.problem("k", None) is None and low.problem("k", 1) is None
    assert low.problem("k", math.nan) == "k=nan is out of range; valid: 1 ≤ k"


def test_the_server_the_engine_and_a_batch_job_share_one_rule_per_setting():
    """A seed below 0 is refused by a batch job, by the engine's requests and by the HTTP API alike,
    and the engine's admission limits say what the server's flags say."""
    from gpthf.generation import GenerationSettings
    from gpthf.generation.limits import GenerationError
    from gpthf.generation.requests import RequestSettings
    from gpthf.serving.openai_api import ApiError, parse_completion

    with pytest.raises(GenerationError, match=r"^seed=-1 must be >= 0$"):
        GenerationSettings(seed=-1)
    with pytest.raises(GenerationError, match=r"^seed=-1 must be >= 0$"):
        RequestSettings(max_tokens=4, seed=-1)
    for field, value, message in [("seed", -1, "seed=-1 must be >= 0"), ("n", 129, "n=129 must be in [1, 128]")]:
        with pytest.raises(ApiError) as caught:
            parse_completion({"prompt": "x", field: value}, "m")
        assert caught.value.param == field and message in str(caught.value.message)
    assert MAX_BATCH.problem(0) == MAX_QUEUE.problem(0) == "must be >= 1"
