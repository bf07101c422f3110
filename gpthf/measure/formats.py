"""Decode speed per number format (eval/formats.py): the twins in every format, each variant's timing
(plain, packed, compiled), and what bf16 and packing buy over fp32 and plain."""

from __future__ import annotations

import sys

import torch

from gpthf.measure.speed import interleaved_timings, time_decode
from gpthf.models import LanguageModel

FORMATS = ("fp32", "bf16")


def twins_in_formats(
    kinds: list[str], size: str, dtypes: dict[str, torch.dtype], vocab_size: int, device: torch.device
) -> dict[tuple[str, str], LanguageModel]:
    """`<kind>-<size>` with random weights, the same in every format (same seed)."""
    from gpthf.config import load_config
    from gpthf.measure.scaling import arch_name
    from gpthf.models import build_model

    models = {}
    for kind in kinds:
        for name, dtype in dtypes.items():
            torch.manual_seed(0)
            arch = load_config([f"arch={arch_name(kind, size)}"]).arch
            models[kind, name] = build_model(arch, vocab_size).to(device, dtype).eval()
    return models


def time_variants(
    models: dict,
    variants: list[tuple[str, str, str]],
    tokens: torch.Tensor,
    context: int,
    batch: int,
    repeats: int,
) -> list[dict]:
    """Cached decode of every (kind, format, mode) variant, interleaved over `repeats` rounds (compiled
    variants compiled first, outside the rounds); one row of medians per variant. One row of `tokens`
    is prefilled and its state copied into `batch` rows."""

    def job(kind: str, name: str, mode: str):
        def run():
            timing = time_decode(
                models[kind, name],
                kind,
                "cached",
                tokens,
                context,
                tile_to=batch,
                compile=mode == "compiled",
                pack=mode in ("packed", "compiled"),
            )
            print(f"  {kind} {name} {mode}: {timing.tokens_per_s:.1f} tokens/s", file=sys.stderr)
            return timing

        return run

    for kind, name, mode in variants:  # compile outside the timed rounds
        if mode == "compiled":
            job(kind, name, mode)()
    timings = interleaved_timings([job(*v) for v in variants], repeats)
    return [
        {
            "model": kind,
            "dtype": name,
            "mode": mode,
            "tokens_per_s": t.tokens_per_s,
            "ms_per_step": t.ms_per_token,
        }
        for (kind, name, mode), t in zip(variants, timings)
    ]


def format_ratios(
    rows: list[dict], models: dict, kinds: list[str], modes: list[str], rows_per_step: int, repeats: int
) -> dict:
    """Per kind: bf16 over fp32 in every mode, packed over plain in every format (where packed was
    timed), and the bound the step's matmuls alone set on bf16 over fp32; GPTHF over GPT when both ran."""
    speed = {(r["model"], r["dtype"], r["mode"]): r["tokens_per_s"] for r in rows}
    ratios = {}
    for kind in kinds:
        ratios[kind] = {
            "bf16_over_fp32": {mode: speed[kind, "bf16", mode] / speed[kind, "fp32", mode] for mode in modes}
        }
        if "packed" in modes:
            ratios[kind]["packed_over_plain"] = {
                name: speed[kind, name, "packed"] / speed[kind, name, "plain"] for name in FORMATS
            }
            ratios[kind]["bf16_packed_over_fp32_plain"] = (
                speed[kind, "bf16", "packed"] / speed[kind, "fp32", "plain"]
            )
    for kind in kinds:  # the matmuls alone: what the formats' ratio can reach at most
        ms = {name: step_matmuls_ms(models[kind, name], rows_per_step, repeats) for name in FORMATS}
        ratios[kind]["step_matmuls_ms_packed"] = ms
        ratios[kind]["bf16_over_fp32_matmuls_alone"] = ms["fp32"] / ms["bf16"]
    if {"gpthf", "gpt"} <= set(kinds):
        ratios["gpthf_over_gpt"] = {
            f"{name} {mode}": speed["gpthf", name, mode] / speed["gpt", name, mode]
            for name in FORMATS
            for mode in modes
        }
    return ratios


def step_matmuls_ms(model: LanguageModel, rows: int, repeats: int) -> float:
    """Milliseconds of one decode step's matrix products alone (every linear once, `rows` rows,
    packed as `generate` packs them), the fastest of `repeats` passes. Every other op of a step costs
    about the same in either format, so bf16 ÷ fp32 of these bounds bf16 ÷ fp32 of the whole step."""
    from gpthf.generation.packed import packed_linears
    from gpthf.measure.timing import best_seconds

    with torch.inference_mode(), packed_linears(model, rows):
        linears = [m for m in model.modules() if hasattr(m, "in_features") and hasattr(m, "weight")]
        weight = model.embed.weight
        inputs = {
            m.in_features: torch.randn(rows, 1, m.in_features, device=weight.device).to(weight.dtype)
            for m in linears
        }
        return 1000 * best_seconds(
            lambda: [m(inputs[m.in_features]) for m in linears], max(repeats, 3), weight.device
        )
