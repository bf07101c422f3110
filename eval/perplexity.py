"""`python eval/perplexity.py --ckpt PATH [--data default|FILE|DIR] [--split test]`

Bits per byte, token perplexity and tokens/s of a GPTHF or GPT checkpoint on the held-out split of its
own corpus or on any text, with the loss of the first token of a sentence reported apart from the
rest. Prints a table, then one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpthf.cli import ArgumentParser, non_negative_int, positive_int, run_cli
from gpthf.data.readers import LOCAL_SUFFIXES
from gpthf.precision import DEFAULT_DTYPE, DTYPE_NAMES


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="perplexity.py", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint, run folder or folder of runs")
    parser.add_argument(
        "--data",
        default="default",
        help=f"default (the checkpoint's corpus) or a {'/'.join(LOCAL_SUFFIXES)} file or folder",
    )
    parser.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="with --data default"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-rows", type=positive_int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES, help="weights and activations")
    parser.add_argument(
        "--samples",
        type=non_negative_int,
        default=16,
        help="sampled continuations for the sentence/repetition checks (0: none)",
    )
    args = parser.parse_args(argv)
    from gpthf.evaluation.perplexity import evaluate_checkpoint
    from gpthf.evaluation.results import save_result
    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")
    result = evaluate_checkpoint(
        args.ckpt, args.data, args.split, args.batch_size, args.max_rows, device, args.samples, args.dtype
    )
    print(
        f"{result['model']} on {result['data']} ({result['split']}): {result['bits_per_byte']:.4f} bits/byte, "
        f"perplexity {result['perplexity']:.2f}, {result['tokens']:,} tokens at {result['tokens_per_s']:.0f} tokens/s"
    )
    for group, loss in result["loss_by_position"].items():
        print(f"  {group:<18} {loss:.4f} nats/token over {result['tokens_by_position'][group]:,} tokens")
    if "generation" in result:
        sanity = result["generation"]
        print(
            f"  samples: {sanity['closed_share']:.2f} of {sanity['sentences']} sentences closed by the model, distinct-1/2/3 "
            + "/".join(f"{v:.2f}" for v in sanity["distinct_n"].values())
        )
    if result["skipped_records"]:  # already warned about, as prepare does; here for the record too
        print(
            f"  skipped records: {', '.join(f'{n:,} {why}' for why, n in result['skipped_records'].items())}"
        )
    print(json.dumps(result))
    if args.data == "default":  # saved last: a result the disk has no room for is printed all the same
        suffix = "" if args.dtype == DEFAULT_DTYPE else f"-{args.dtype}"  # report.py reads the fp32 one
        save_result(Path(result["checkpoint"]), f"perplexity-{args.split}{suffix}", result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
