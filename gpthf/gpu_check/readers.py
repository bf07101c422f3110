"""What each gpu-check stage did, read from its log and its folder once its process has ended.

Counts come from what torch prints with TORCH_LOGS set by the stage (graph breaks, recompiles,
cudagraph skips), figures from the files the stage's script writes (metrics.jsonl, the generation
results, compare.json). A reader that finds less than it expects raises; the runner records that.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

DECODE_SHAPE = (2048, 8)  # context, batch: the compare stage's shape, the paper's claim
STATE_BUDGET = "4GiB"  # the compare stage's fixed generation-state budget


def compile_events(log: str) -> dict:
    """Graph breaks and recompiles as TORCH_LOGS="graph_breaks,recompiles" reports them (one record
    each; a record's later lines say "Graph Break Reason"), and cudagraph skips (TORCH_LOGS=perf_hints)."""
    breaks = [line for line in log.splitlines() if "Graph break" in line]
    sites = sorted({m.group(1) for line in breaks if (m := re.search(r" at (\S+:\d+)", line))})
    return {
        "graph_breaks": len(breaks),
        "graph_break_sites": sites[:5],
        "recompiles": log.count("Recompiling function"),
        "cudagraph_skips": log.lower().count("skipping cudagraphs"),
    }


def read_doctor(log: str, folder: Path) -> dict:
    info, _ = json.JSONDecoder().raw_decode(log[log.index("\n{") + 1 :])
    keys = ("device", "attention backends (impl.attention)", "packages")
    return {"report": {key: info[key] for key in keys if key in info}}


_TEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b")


def read_pytest(log: str, folder: Path) -> dict:
    """The counts of pytest's last line ("3 passed, 2 skipped, 1 deselected in 9.1s")."""
    summary = next(
        (
            line
            for line in reversed(log.splitlines())
            if _TEST_COUNT.search(line) and re.search(r" in [\d.]+s", line)
        ),
        "",
    )
    counts = {("errors" if kind == "error" else kind): int(n) for n, kind in _TEST_COUNT.findall(summary)}
    return {"tests": counts, "summary": summary.strip(" =")}


def read_training(log: str, folder: Path) -> dict:
    from gpthf.training.metrics import final_record, read_metrics

    figures = compile_events(log)
    del figures["cudagraph_skips"]
    runs = sorted(folder.glob("*/*/metrics.jsonl"))
    if runs:
        records = read_metrics(runs[-1].parent)
        windows = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
        steady = windows[1:] or windows  # the first window holds the compilation
        final = final_record(records) or {}
        figures.update(
            tokens_per_s=round(statistics.median(steady)) if steady else None,
            steps=records[-1]["step"] if records else 0,
            tokens=records[-1]["tokens"] if records else 0,
            val_loss=final.get("val_loss"),
        )
    return figures


def read_generation(log: str, folder: Path) -> dict:
    out = folder / "completions.jsonl"
    records = (
        [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    )
    return {"completions": [r["completion"] for r in records] or None, **compile_events(log)}


def read_compare(log: str, folder: Path) -> dict:
    results = json.loads((folder / "compare.json").read_text())
    context, batch = DECODE_SHAPE
    row = next(r for r in results["ratios"] if (r["context"], r["batch"]) == DECODE_SHAPE)
    speeds = {
        r["model"]: round(r["tokens_per_s"], 1)
        for r in results["decode"]
        if r["strategy"] == "cached" and (r["context"], r["batch"]) == DECODE_SHAPE
    }
    return {
        "shape": f"{context}x{batch}",
        "dtype": results.get("dtype"),
        "device": results.get("device"),
        "decode_tokens_per_s": speeds,
        "decode_gpthf_over_gpt": row["gpthf_cached_over_gpt_cached"],
        # the compiled pair: how a GPU decodes when kernel launches no longer bound the eager step
        "decode_compiled_gpthf_over_gpt": row.get("gpthf_compiled_over_gpt_compiled"),
        "state_gpthf_over_gpt": row["gpthf_state_over_gpt_state"],
        "budget_gpthf_over_gpt": results.get("state_budget_ratios", {}).get(str(context)),
    }
