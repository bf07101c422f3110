"""`python eval/batching.py --ckpt PATH [--prompts 256] [--slots 16]`: continuous against fixed batches.

Serving a batch job of many prompts: fixed batches of `--slots` rows wait for their longest row
before the next batch starts; continuous batching hands a finished row's slot to the next prompt at
once. Prompts of mixed lengths come from the checkpoint's held-out text, generation is greedy and
stops at the first finished sentence (or `--new-tokens`), so rows finish at different steps as they
do in practice. Both runs must produce the same tokens for every prompt. Prints one JSON line and
writes batching.json and batching.png to --out. `--device cuda` serves from a GPU (timed by CUDA
events, its peak tensor memory reported).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import ArgumentParser, positive_int, run_cli, writable_folder
from gpthf.measure import DEFAULT_DEVICE, DEVICE_HELP
from gpthf.precision import DEFAULT_DTYPE, DTYPE_NAMES


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="batching.py", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint or run folder")
    parser.add_argument("--prompts", type=positive_int, default=256)
    parser.add_argument("--slots", type=positive_int, default=16)
    parser.add_argument("--new-tokens", type=positive_int, default=64, help="cap per prompt")
    parser.add_argument("--max-sentences", type=positive_int, default=1)
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES)
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed runs of each, interleaved; medians reported"
    )
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=DEVICE_HELP)
    parser.add_argument("--out", type=Path, default=Path("outputs/batching"))
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    writable_folder(args.out)
    import torch

    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")
    from gpthf.generation import GenerationSettings, SamplingSettings
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.measure.batching import held_out_prompts, time_batching
    from gpthf.measure.timing import machine_name, peak_device_mb
    from gpthf.training.checkpoint import load_checkpoint_tokenizer

    model, meta, checkpoint = load_model_from_checkpoint(args.ckpt, device, dtype=args.dtype)
    prompts = held_out_prompts(meta, load_checkpoint_tokenizer(checkpoint, meta), args.prompts)
    settings = GenerationSettings(
        max_new_tokens=args.new_tokens,
        max_sentences=args.max_sentences,
        sampling=SamplingSettings(temperature=0),
        max_sentence_len=meta.data["max_sentence_len"],
    )
    runs = time_batching(model, prompts, settings, args.slots, args.repeats, device)
    result = {
        "checkpoint": str(checkpoint),
        "model": meta.arch["model"],
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "machine": machine_name(device),
        **runs.summary(),
    }
    if device.type == "cuda":
        result["peak_cuda_mb"] = peak_device_mb(device)
    atomic_write(args.out / "batching.json", json.dumps(result, indent=2))
    plot(result, [len(t) for t in runs.continuous], args.out / "batching.png")
    print(
        f"{len(prompts)} prompts, {args.slots} slots, {result['new_tokens']:,} new tokens: fixed batches "
        f"{result['fixed_tokens_per_s']:.1f} tokens/s, continuous {result['continuous_tokens_per_s']:.1f} tokens/s "
        f"({result['continuous_over_fixed']:.2f}×, median of rounds {result['median_round_ratio']:.2f}×, "
        f"at most {result['step_bound']:.2f}× in decode steps); "
        f"same tokens: {result['same_tokens']}"
    )
    print(json.dumps(result))
    return 0 if result["same_tokens"] else 1


def plot(result: dict, lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hist, bars) = plt.subplots(1, 2, figsize=(9, 3.5))
    hist.hist(lengths, bins=30, color="C0")
    hist.set(xlabel="new tokens per prompt", ylabel="prompts", title="where rows stop")
    bars.bar(
        ["fixed", "continuous"],
        [result["fixed_tokens_per_s"], result["continuous_tokens_per_s"]],
        color=["C1", "C0"],
    )
    bars.set(ylabel="generated tokens/s", title=f"{result['prompts']} prompts, {result['slots']} slots")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
