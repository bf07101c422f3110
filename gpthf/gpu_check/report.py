"""The gpu-check report: issue 28's targets evaluated from the stages' results, the JSON and the
one-screen summary. Pure functions of results, so they are tested on CPU with fabricated ones."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from gpthf.gpu_check.readers import DECODE_SHAPE, STATE_BUDGET
from gpthf.gpu_check.runner import INTERRUPTED

DEADLINE_S = 600.0  # the target: every stage of one run within 10 minutes (--deadline only stops stages)
RATIO_TARGET = 3.0  # GPTHF's decode tokens/s over GPT's at DECODE_SHAPE, bf16


VERSIONS = ("torch", "cuda")  # stamped on each stage's result: merged results say what made them


def _target(text: str, value, met: bool, reason: str | None = None) -> dict:
    return {"target": text, "value": value, "met": bool(met), **({"reason": reason} if reason else {})}


def evaluate_targets(
    stages: dict[str, dict], names: list[str], this_run: dict[str, dict] | None = None
) -> dict:
    """Issue 28's targets, each met or not, from the stages' results (a stage that did not run meets none).

    `this_run`: the results this run made (default: all of `stages`). The deadline is one run's: it is
    evaluated only when this run ran every stage, never by adding seconds of different runs."""
    this_run = stages if this_run is None else this_run
    tests = stages.get("cuda-tests", {})
    counts = tests.get("tests", {})
    eager, compiled = stages.get("generate-eager", {}), stages.get("generate-compiled", {})
    both = eager.get("status") == compiled.get("status") == "passed"
    same = (
        sum(a == b for a, b in zip(eager["completions"], compiled["completions"]))
        if both and eager.get("completions") and compiled.get("completions")
        else None
    )
    skips = compiled.get("cudagraph_skips") if compiled.get("status") == "passed" else None
    compare = stages.get("compare", {})
    ratio = compare.get("decode_compiled_gpthf_over_gpt") or compare.get("decode_gpthf_over_gpt")
    deadline = f"every stage run within {DEADLINE_S / 60:g} minutes"
    ran = [n for n in names if n in this_run]
    if any(this_run[n]["status"] == INTERRUPTED for n in ran):
        under_deadline = _target(deadline, None, False, "not evaluated: this run was interrupted")
    elif len(ran) < len(names):
        under_deadline = _target(
            deadline, None, False, f"not evaluated: this run ran {len(ran)} of the {len(names)} stages"
        )
    else:
        seconds = round(sum(this_run[n].get("seconds", 0.0) for n in names), 1)
        finished = all(this_run[n]["status"] in ("passed", "failed", "absent") for n in names)
        under_deadline = _target(deadline, seconds, finished and seconds <= DEADLINE_S)
    context, batch = DECODE_SHAPE
    return {
        "cuda_tests_pass": _target(
            "all CUDA tests pass",
            counts or None,
            tests.get("status") == "passed"
            and counts.get("passed", 0) > 0
            and not counts.get("failed")
            and not counts.get("errors"),
        ),
        "cudagraph_skips": _target("compiled decode skips no CUDA graph", skips, skips == 0),
        "compiled_equals_eager": _target(
            "compiled == eager greedy tokens (bf16)",
            None if same is None else f"{same} of {len(eager['completions'])} prompts",
            same is not None and same == len(eager["completions"]) == len(compiled["completions"]),
        ),
        "decode_ratio": _target(
            f"GPTHF / GPT decode tokens/s >= {RATIO_TARGET:g}x at {context:,} x {batch} (bf16, compiled)",
            ratio,
            ratio is not None and ratio >= RATIO_TARGET,
        ),
        "under_deadline": under_deadline,
    }


def previous_stages(out: Path, gpu: str) -> dict[str, dict]:
    """The stage results of an earlier report on the same GPU (kept for the stages not rerun), each
    with the versions that made it (from the report's header where an older report lacks them)."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict) or earlier.get("gpu") != gpu:
        return {}
    stamp = {key: earlier.get(key) for key in VERSIONS}
    return {name: {**stamp, **result} for name, result in earlier.get("stages", {}).items()}


def build_report(info: dict, results: dict[str, dict], names: list[str], earlier: dict[str, dict],
                 command: str) -> dict:  # fmt: skip
    """The JSON written: GPU and versions, every stage's latest result (in stage order), the targets."""
    stamp = {key: info.get(key) for key in VERSIONS}
    this_run = {name: {**result, **stamp} for name, result in results.items()}
    stages = {n: this_run[n] if n in this_run else earlier[n] for n in names if n in this_run or n in earlier}
    return {
        **info,
        "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "stages": stages,
        "targets": evaluate_targets(stages, names, this_run),
    }


def stage_line(name: str, result: dict) -> str:
    """One line of the summary: the stage, how it ended, its time and its headline figures."""
    status = result.get("status", "?")
    detail = result.get("reason", "")
    if result.get("tests"):
        detail = ", ".join(f"{n} {k}" for k, n in result["tests"].items())
    elif result.get("tokens_per_s") is not None:
        detail = (f"{result['tokens_per_s']:,} tokens/s, {result['graph_breaks']} graph breaks, "
                  f"{result['recompiles']} recompiles")  # fmt: skip
    elif result.get("decode_gpthf_over_gpt") is not None:
        budget = result.get("budget_gpthf_over_gpt")
        compiled = result.get("decode_compiled_gpthf_over_gpt")
        detail = f"GPTHF/GPT decode {result['decode_gpthf_over_gpt']:.2f}x eager" + (
            f", {compiled:.2f}x compiled" if compiled is not None else ""
        ) + (
            f", {budget:.2f}x at a {STATE_BUDGET} state budget" if budget is not None else ""
        )
    elif name == "generate-compiled" and status == "passed":
        detail = f"{result['cudagraph_skips']} cudagraph skips, {result['graph_breaks']} graph breaks"
    if status in ("failed", "timed out", INTERRUPTED) and not detail and result.get("last_lines"):
        detail = result["last_lines"][-1][:100]
    return f"  {name:<19} {status:<9} {result.get('seconds', 0):>5.0f} s  {detail}".rstrip()


def summary(report: dict, out: Path, work: Path) -> str:
    lines = [
        f"gpu-check on {report['gpu']} ({report['gpu_memory_gib']} GiB), torch {report['torch']}, "
        f"CUDA {report['cuda']}, flash-attn {report['flash_attn'] or 'absent'}"
    ]
    lines += [stage_line(name, result) for name, result in report["stages"].items()]
    lines.append("targets:")
    for target in report["targets"].values():
        value = target["value"]
        if isinstance(value, dict):  # test counts
            value = ", ".join(f"{n} {kind}" for kind, n in value.items())
        if target.get("reason"):
            value = target["reason"]
        lines.append(f"  {'met' if target['met'] else 'NOT MET':<8} {target['target']}: {value}")
    lines.append(f"report: {out}; logs: {work}/<stage>/log.txt")
    return "\n".join(lines)
