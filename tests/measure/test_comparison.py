"""The figures the benchmark scripts derive from their timings, on rows made up here (nothing timed)."""

from __future__ import annotations

import pytest
import torch

from gpthf.measure import flops
from gpthf.measure.agreement import free_running_agreement, teacher_forced_agreement
from gpthf.measure.batching import BatchingRuns
from gpthf.measure.comparison import flops_table, headline, memory_peaks, state_budget_ratios
from gpthf.measure.roofline import DecodeRoofline, MachinePeaks, weight_bytes
from gpthf.measure.styles import decode_styles, kind_style
from gpthf.models import SPECS
from gpthf.models.gpt import gpt_token_flops
from tests.models.helpers import VOCAB, tiny_model


def row(model: str, strategy: str, context: int, batch: int, tokens_per_s: float, **more) -> dict:
    return {"model": model, "strategy": strategy, "context": context, "batch": batch,
            "tokens_per_s": tokens_per_s, **more}  # fmt: skip


def test_headline_is_the_largest_cell_with_its_speeds_and_every_ratio():
    results = {
        "arch": "tiny", "dtype": "fp32", "device": "cpu", "machine": "m",
        "parameters": {"gpthf": 1, "gpt": 1, "lstm": 1},
        "ratios": [{"context": 64, "batch": 1, "x": 1.0}, {"context": 32, "batch": 2, "x": 2.0}],
        "decode": [row("gpthf", "cached", 32, 2, 30.0), row("gpt", "cached", 32, 2, 10.0)],
        "training_tokens_per_s": {"gpthf": 4.0, "gpt": 2.0, "lstm": 1.0},
        "state_budget_ratios": {"32": 5.0},
    }  # fmt: skip
    assert headline(results) == {
        "arch": "tiny", "dtype": "fp32", "device": "cpu", "machine": "m", "context": 32, "batch": 2, "x": 2.0,
        "gpthf_tokens_per_s": 30.0, "gpt_tokens_per_s": 10.0, "training_gpthf_over_gpt": 2.0,
        "training_lstm_over_gpt": 0.5, "budget_gpthf_over_gpt_at_32": 5.0,
    }  # fmt: skip


def test_budget_ratios_and_memory_peaks():
    budget = [
        row("gpthf", "cached", 64, 40, 80.0, peak_rss_mb=9.0),
        row("gpt", "cached", 64, 4, 20.0, peak_rss_mb=7.0),
    ]
    assert state_budget_ratios(budget, [64]) == {"64": 4.0} and state_budget_ratios([], [64]) == {}
    assert memory_peaks(budget, torch.device("cpu")) == {"peak_rss_mb": 9.0}


def test_flops_table_and_roofline_count_each_kind_by_its_spec():
    models = {"gpthf": tiny_model("gpthf"), "gpt": tiny_model("gpt")}
    table = flops_table(models, VOCAB, [16, 256], 64, 8.0)
    assert table["per_generated_token"]["256"]["gpt"] == gpt_token_flops(models["gpt"].arch, VOCAB, 257)
    assert table["per_training_token"]["gpthf"] == flops.training_flops_per_token(
        models["gpthf"].arch, VOCAB, 64, 8.0
    )
    peaks = MachinePeaks("fp32", 10.0, 100.0, 1000.0)
    roof = DecodeRoofline(models, VOCAB, 8.0, peaks)
    cached = roof(row("gpt", "cached", 16, 2, 1.0, state_bytes=1000, ms_per_token=1.0))["roofline"]
    peer = roof(row("hf-llama", "generate", 16, 2, 1.0, state_bytes=1000, ms_per_token=1.0))["roofline"]
    full = roof(row("gpt", "full", 16, 2, 1.0, state_bytes=1000, ms_per_token=1.0))["roofline"]
    assert cached == peer and cached["step_bytes"] == weight_bytes(models["gpt"]) + 1000
    assert full["step_bytes"] == weight_bytes(models["gpt"]) and full["step_flops"] > cached["step_flops"]


def test_every_kind_has_a_line_style_and_gpthf_keeps_its_own():
    styles = decode_styles()
    assert all((kind, "cached") in styles for kind in SPECS) and ("hf-llama", "generate") in styles
    assert (kind_style("gpthf"), kind_style("gpthf", "full"), kind_style("gpt", "compiled")) == (
        "C0-o",
        "C0:o",
        "C1--x",
    )
    assert len({kind_style(kind) for kind in SPECS}) == len(SPECS), "two kinds drawn alike"


def test_agreement_of_generations():
    share, first = free_running_agreement([[1, 2, 3], [4, 5]], [[1, 9, 3], [4, 5]])
    assert share == pytest.approx(4 / 5) and first == [1, 2]
    model = tiny_model("gpt")
    assert teacher_forced_agreement(model, model, [[5, 6, 7]], [[8, 9]]) == 1.0


def test_batching_summary():
    runs = BatchingRuns(3, 2, [[1], [2, 3], [4]], [[1], [2, 3], [4]], [2.0, 4.0], [1.0, 1.0])
    summary = runs.summary()
    assert summary["new_tokens"] == 4 and summary["new_tokens_per_prompt"] == {
        "min": 1,
        "mean": 4 / 3,
        "max": 2,
    }
    assert summary["continuous_over_fixed"] == 3.0 and summary["median_round_ratio"] == 3.0
    assert summary["step_bound"] == 3 / 2 and summary["same_tokens"]
