"""`python eval/formats.py [--arch small] [--context 2048] [--batch 8] [overrides]`: decode speed per format.

What bf16 buys over fp32, and what packing the weights for the CPU's matrix kernels buys in each
format, measured the only way this shared machine allows: GPTHF and GPT twins (random weights, the
same seed) in every format, each decoding the same real corpus text teacher-forced, every variant
timed once per round over `--repeats` rounds, interleaved, and the median run kept. Variants:
`plain` (torch's matmuls on the weights as stored), `packed` (gpthf.generation.packed, what
`generate` does by default), with `--compile` also `compiled` (the step under torch.compile, the
packed weights frozen into it, as `generate --compile` runs it). Prints one JSON line of tokens/s and ratios; writes formats.json and formats.png.
On a GPU (`--device cuda`) nothing is packed, so `packed` is not measured there, and the steps are
timed by CUDA events.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import ArgumentParser, positive_int, run_cli, writable_folder
from gpthf.measure import DEFAULT_DEVICE, DEVICE_HELP


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="formats.py", description=__doc__)
    parser.add_argument("--arch", default="small", help="size of the twins: gpthf-<arch> and gpt-<arch>")
    parser.add_argument("--models", nargs="+", default=["gpthf", "gpt"], choices=["gpthf", "gpt"])
    parser.add_argument("--context", type=positive_int, default=2048)
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--new-tokens", type=positive_int, default=16, help="decode steps per timing")
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds; medians")
    parser.add_argument("--compile", action="store_true", help="also time the compiled step")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=DEVICE_HELP)
    parser.add_argument("--quick", action="store_true", help="tiny shape, small context: the smoke test")
    parser.add_argument("--out", type=Path, default=Path("outputs/formats"))
    parser.add_argument(
        "overrides",
        nargs="*",
        help="config overrides of the data set the text comes from (cache_dir=..., data.*)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.context, args.batch, args.new_tokens, args.repeats = "tiny", 256, 2, 6, 2
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    writable_folder(args.out)
    import torch

    from gpthf.measure.formats import FORMATS, format_ratios, time_variants, twins_in_formats
    from gpthf.precision import resolve_dtype
    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")
    dtypes = {name: resolve_dtype(name, device) for name in FORMATS}  # before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    from gpthf.measure.speed import batch_of_contexts
    from gpthf.measure.timing import machine_name
    from gpthf.measure.workload import prepare_workload

    work = prepare_workload(args.overrides, args.context, args.new_tokens, args.batch)
    # One row prefilled and its state copied into `--batch` rows: a step costs the same whatever the
    # rows hold, and 2,048-token prefills of eight rows would take most of the run.
    tokens = batch_of_contexts(work.stream, args.context, args.new_tokens, 1)
    models = twins_in_formats(args.models, args.arch, dtypes, work.vocab_size, device)
    packs = device.type == "cpu"  # packing is a layout of the CPU's kernels (gpthf.generation.packed)
    modes = ["plain"] + (["packed"] if packs else []) + (["compiled"] if args.compile else [])
    variants = [(kind, name, mode) for kind in args.models for name in FORMATS for mode in modes]
    rows = time_variants(models, variants, tokens, args.context, args.batch, args.repeats)
    ratios = format_ratios(rows, models, args.models, modes, args.batch, args.repeats)
    result = {
        "arch": args.arch,
        "context": args.context,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "machine": machine_name(device),
        "rows": rows,
        "ratios": ratios,
    }
    atomic_write(args.out / "formats.json", json.dumps(result, indent=2))
    plot(result, modes, args.out / "formats.png")
    for r in rows:
        print(
            f"  {r['model']:6s} {r['dtype']} {r['mode']:8s} {r['tokens_per_s']:8.1f} tokens/s  {r['ms_per_step']:7.2f} ms/step",
            file=sys.stderr,
        )
    for kind in args.models:
        print(
            f"  {kind} step matmuls alone (packed): {ratios[kind]['step_matmuls_ms_packed']} ms, "
            f"bf16 ÷ fp32 at most {ratios[kind]['bf16_over_fp32_matmuls_alone']:.2f}",
            file=sys.stderr,
        )
    print(json.dumps(result))
    return 0


def plot(result: dict, modes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["dtype"]) for r in result["rows"]}, key=lambda g: (g[0] != "gpthf", g[1]))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        values = [
            next(
                r["tokens_per_s"] for r in result["rows"] if (r["model"], r["dtype"], r["mode"]) == (*g, mode)
            )
            for g in groups
        ]
        ax.bar([j + i * width for j in range(len(groups))], values, width, label=mode, color=f"C{i}")
    ax.set_xticks(
        [j + width * (len(modes) - 1) / 2 for j in range(len(groups))], [f"{m} {d}" for m, d in groups]
    )
    ax.set(
        ylabel="generated tokens/s",
        title=f"cached decode, {result['arch']} shape, {result['context']} context × batch {result['batch']}, "
        f"medians of {result['repeats']}",
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
