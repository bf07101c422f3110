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


def main(argv: list[str]) -> int:
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
    args = parser.parse_args(argv)
    writable_folder(args.out)
    import numpy as np
    import torch

    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")
    from gpthf.data.special_tokens import PAD_ID
    from gpthf.evaluation.perplexity import rows_for_text
    from gpthf.generation import GenerationSettings, SamplingSettings, generate
    from gpthf.measure.timing import machine_name, peak_device_mb, reset_peak_memory, timed_seconds
    from gpthf.training.checkpoint import load_checkpoint_tokenizer, load_model_from_checkpoint

    model, meta, checkpoint = load_model_from_checkpoint(args.ckpt, device, dtype=args.dtype)
    tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
    input_ids, _, _ = rows_for_text(meta, tokenizer, "test")
    stream = [t for t in input_ids.reshape(-1).tolist() if t != PAD_ID]
    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(args.prompts):  # mixed lengths, from 4 to 128 tokens, at random places in the text
        length = int(rng.integers(4, 129))
        start = int(rng.integers(0, max(len(stream) - length, 1)))
        prompts.append(stream[start : start + length])
    settings = GenerationSettings(
        max_new_tokens=args.new_tokens,
        max_sentences=args.max_sentences,
        sampling=SamplingSettings(temperature=0),
        max_sentence_len=meta["data"]["max_sentence_len"],
    )
    generate(model, prompts[: args.slots], GenerationSettings(max_new_tokens=2))  # warm-up
    reset_peak_memory(device)
    fixed, continuous, fixed_times, continuous_times = [], [], [], []

    def fixed_batches() -> None:
        fixed.clear()
        for begin in range(0, len(prompts), args.slots):
            fixed.extend(generate(model, prompts[begin : begin + args.slots], settings).tokens)

    def continuous_batching() -> None:
        continuous[:] = generate(model, prompts, settings, slots=args.slots).tokens

    for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits both
        fixed_times.append(timed_seconds(fixed_batches, device))
        continuous_times.append(timed_seconds(continuous_batching, device))
    fixed_s, continuous_s = float(np.median(fixed_times)), float(np.median(continuous_times))

    new_tokens = sum(len(t) for t in continuous)
    lengths = [len(t) for t in continuous]
    result = {
        "checkpoint": str(checkpoint),
        "model": meta["arch"]["model"],
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "machine": machine_name(device),
        "prompts": len(prompts),
        "slots": args.slots,
        "new_tokens": new_tokens,
        "new_tokens_per_prompt": {
            "min": min(lengths),
            "mean": new_tokens / len(prompts),
            "max": max(lengths),
        },
        "fixed_tokens_per_s": new_tokens / fixed_s,
        "continuous_tokens_per_s": new_tokens / continuous_s,
        "continuous_over_fixed": fixed_s / continuous_s,
        # Each round times both back to back, so its ratio cancels a slow spell that spans the round;
        # the median of those is the steadier figure on a shared machine.
        "continuous_over_fixed_per_round": [f / c for f, c in zip(fixed_times, continuous_times)],
        "median_round_ratio": float(np.median([f / c for f, c in zip(fixed_times, continuous_times)])),
        "fixed_seconds": fixed_times,
        "continuous_seconds": continuous_times,
        # Decode steps: fixed batches take their longest row's length each; continuous batching
        # can at best keep every slot busy, so this ratio bounds its gain on this workload.
        "step_bound": sum(max(lengths[b : b + args.slots]) for b in range(0, len(lengths), args.slots))
        / -(-new_tokens // args.slots),
        "same_tokens": continuous == fixed,
    }
    if device.type == "cuda":
        result["peak_cuda_mb"] = peak_device_mb(device)
    atomic_write(args.out / "batching.json", json.dumps(result, indent=2))
    plot(result, lengths, args.out / "batching.png")
    print(
        f"{len(prompts)} prompts, {args.slots} slots, {new_tokens:,} new tokens: fixed batches "
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
