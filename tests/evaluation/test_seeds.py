"""eval/seeds.py: runs that differ in seed, scored in and out of domain and grouped with their spread;
runs that cannot be compared (unequal tokens, a seed twice, an unfinished run) are refused."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

from gpthf.cli import run_cli
from gpthf.config import load_config
from gpthf.errors import ConfigError
from gpthf.training.trainer import train
from tests.conftest import REPO, frozen_clock, run_overrides

SEEDS = runpy.run_path(str(REPO / "eval" / "seeds.py"))


@pytest.fixture(scope="module")
def seed_one_runs(data_cache, tmp_path_factory) -> dict:
    """The same tiny runs as `trained_runs`, with train.seed=1."""
    out = tmp_path_factory.mktemp("seed1")
    return {
        kind: train(
            load_config(
                run_overrides(data_cache, out, "train.max_tokens=3000", "train.seed=1", arch=f"{kind}-test")
            ),
            clock=frozen_clock,
        )
        for kind in ("gpthf", "gpt")
    }


def test_two_seeds_of_two_kinds_make_two_groups_with_their_spread(
    trained_runs, seed_one_runs, tmp_path, capsys
):
    runs = [trained_runs["gpthf"], seed_one_runs["gpthf"], trained_runs["gpt"], seed_one_runs["gpt"]]
    code = run_cli(SEEDS["main"], [*map(str, runs), "--max-rows", "4", "--out", str(tmp_path)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    headline = json.loads(printed[-1])
    assert headline["groups"] == 2 and headline["runs"] == 4
    assert sum(key.endswith("_test") for key in headline) == 2, "a key per group"
    saved = json.loads((tmp_path / "seeds.json").read_text())
    for group in saved["groups"]:
        assert group["seeds"] == [0, 1]
        for name in ("test", "ood"):
            values, stats = group[f"{name}_bpb"], group[name]
            assert all(math.isfinite(v) and 0 < v < 20 for v in values)
            assert stats["min"] <= stats["mean"] <= stats["max"] and stats["sd"] >= 0
        assert group["test"]["min"] < group["ood"]["min"], "text like the training text is the easier"
    assert [g["kind"] for g in saved["groups"]] == ["gpthf", "gpt"]
    assert (tmp_path / "seeds.md").read_text().count("\n| gpt") == 2


RECIPE = {"arch.model": "gpt", "arch.d_model": 64, "train.lr": 1e-3, "init_from": None}


def facts(kind="gpt", seed=0, tokens=1000, run=None, **recipe):
    return SEEDS["RunFacts"](
        Path(run or f"runs/{kind}-s{seed}"), kind, 100, seed, tokens, {**RECIPE, **recipe}
    )


def seed_run(kind="gpt", seed=0, tokens=1000):
    return SEEDS["SeedRun"]("r", kind, 100, seed, tokens, 1.5, 3.0)


@pytest.mark.parametrize(
    "runs, error",
    [
        ([facts(tokens=1000), facts(seed=1, tokens=1100)], "1,000 to 1,100 tokens"),
        ([facts(), facts(run="elsewhere")], "two runs of gpt .* with seed 0"),
        ([facts(tokens=0)], "0 to 0 tokens"),
        ([facts(), facts(seed=1, **{"train.lr": 2e-3})], r"differ in train.lr \(0.001 vs 0.002\)"),
        ([facts(), facts(seed=1, **{"arch.d_model": 96})], "differ in arch.d_model"),
        ([facts(), facts(seed=1, init_from="gpt-ckpt")], "differ in init_from"),
        ([facts(), facts(run="runs/../runs/gpt-s0", seed=1)], "is given twice"),
    ],
)
def test_runs_that_cannot_be_compared_are_refused(runs, error):
    with pytest.raises(ConfigError, match=error):
        SEEDS["check_comparable"](runs)


def test_runs_that_differ_in_seed_only_or_in_kind_are_comparable():
    SEEDS["check_comparable"]([facts(), facts(seed=1), facts(kind="gpthf"), facts(kind="gpthf", seed=1)])


def test_a_score_that_is_not_finite_is_refused_naming_the_run(monkeypatch):
    import gpthf.evaluation.perplexity as perplexity

    monkeypatch.setattr(perplexity, "evaluate_checkpoint", lambda *a, **k: {"bits_per_byte": math.nan})
    with pytest.raises(ConfigError, match="runs/gpt-s0 scores nan bits per byte"):
        SEEDS["score_run"](facts(), Path("ood.jsonl"), None)


def test_one_seed_has_no_standard_deviation_and_the_table_says_only_the_mean():
    rows = SEEDS["group_rows"]([seed_run()])
    assert rows[0]["test"]["sd"] is None
    assert "| 1.5000 |" in SEEDS["markdown"](rows)


def test_a_folder_that_is_not_a_finished_run_is_one_error_line_before_any_scoring(
    trained_runs, tmp_path, capsys
):
    code = run_cli(SEEDS["main"], [str(trained_runs["gpt"]), str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "not a finished run folder" in err[0], err
    assert not (tmp_path / "out" / "seeds.json").exists()
