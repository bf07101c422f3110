"""`python eval/precision.py --ckpt PATH [--dtype bf16]`: what a lower number format costs in quality.

On a trained checkpoint, against fp32 in the same run, over several prompts from the held-out split
with a few hundred greedy tokens each:
- teacher-forced agreement: on fp32's greedy continuation, the share of positions where the lower
  format's argmax is the same token (each position judged on the same context);
- free-running agreement: each format generates on its own; the share of equal positions and where
  each row first differs (one near-tie flip changes everything after it, so this is the harsher one);
- bits per byte on the held-out split in both formats. Prints a table, then one JSON line; writes
precision.json and precision.png to --out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import ArgumentParser, positive_int, run_cli, writable_folder
from gpthf.precision import DTYPE_NAMES


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="precision.py", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint or run folder")
    lower = [name for name in DTYPE_NAMES if name != "fp32"]  # fp32 is the reference
    parser.add_argument("--dtype", default="bf16", choices=lower, help="compared with fp32")
    parser.add_argument("--prompts", type=positive_int, default=8)
    parser.add_argument("--new-tokens", type=positive_int, default=300)
    parser.add_argument("--max-rows", type=positive_int, default=None, help="rows scored for bits per byte")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("outputs/precision"))
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    writable_folder(args.out)
    import torch

    from gpthf.data.special_tokens import PAD_ID
    from gpthf.evaluation.perplexity import rows_for_text, score
    from gpthf.generation import GenerationSettings, SamplingSettings, generate
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.measure.agreement import free_running_agreement, teacher_forced_agreement
    from gpthf.training.checkpoint import load_checkpoint_tokenizer
    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")
    loaded = {
        name: load_model_from_checkpoint(args.ckpt, device, dtype=name) for name in ("fp32", args.dtype)
    }
    _, meta, checkpoint = loaded["fp32"]
    models = {name: model for name, (model, _, _) in loaded.items()}
    tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
    input_ids, sentence_ids, n_bytes = rows_for_text(meta, tokenizer, "test", None, args.max_rows)
    prompts = [[t for t in row[:64].tolist() if t != PAD_ID] for row in input_ids[: args.prompts]]
    settings = GenerationSettings(
        max_new_tokens=args.new_tokens,
        sampling=SamplingSettings(temperature=0),
        max_sentence_len=meta.data["max_sentence_len"],
    )
    tokens = {name: generate(model, prompts, settings).tokens for name, model in models.items()}
    forced = teacher_forced_agreement(models[args.dtype], models["fp32"], prompts, tokens["fp32"])
    greedy, first_difference = free_running_agreement(tokens[args.dtype], tokens["fp32"])
    bpb = {
        name: score(model, input_ids, sentence_ids, n_bytes).bits_per_byte for name, model in models.items()
    }
    result = {
        "checkpoint": str(checkpoint),
        "model": meta.arch["model"],
        "dtype": args.dtype,
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "teacher_forced_same_share": forced,
        "greedy_same_share": greedy,
        "first_difference": first_difference,
        "bits_per_byte": bpb,
        "bpb_relative_change": bpb[args.dtype] / bpb["fp32"] - 1,
        "torch": torch.__version__,
    }
    atomic_write(args.out / "precision.json", json.dumps(result, indent=2))
    plot(result, args.out / "precision.png")
    print(
        f"{result['model']} {args.dtype} against fp32 ({len(prompts)} prompts × {args.new_tokens} greedy tokens)"
    )
    print(f"  teacher-forced: same argmax at {100 * result['teacher_forced_same_share']:.2f} % of positions")
    print(
        f"  free-running: same greedy token at {100 * result['greedy_same_share']:.1f} % of positions; first difference at {first_difference}"
    )
    print(
        f"  bits per byte: fp32 {bpb['fp32']:.4f}, {args.dtype} {bpb[args.dtype]:.4f} "
        f"({100 * result['bpb_relative_change']:+.3f} %)"
    )
    print(json.dumps(result))
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(result["first_difference"])), result["first_difference"], color="C0")
    ax.axhline(result["new_tokens"], color="grey", linestyle=":", label="tokens generated")
    ax.set(
        xlabel="prompt",
        ylabel="first position that differs",
        title=f"{result['dtype']} vs fp32: {100 * result['greedy_same_share']:.1f} % same greedy tokens",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
