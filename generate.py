"""`python generate.py --ckpt PATH --prompt "..." [options]`: continue text with a GPTHF or GPT checkpoint.

--ckpt takes a checkpoint folder or a run folder (its newest checkpoint). A prompt that ends with
sentence punctuation starts a new sentence; otherwise its last sentence is continued.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from gpthf.cli import ArgumentParser, positive_int, run_cli, writable_folder
from gpthf.errors import GpthfError
from gpthf.precision import DEFAULT_DTYPE, DTYPE_NAMES


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="generate.py", description=__doc__)
    parser.add_argument(
        "--ckpt", required=True, help="checkpoint folder, or a run folder (its newest checkpoint)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text to continue")
    source.add_argument(
        "--batch-file",
        type=Path,
        help="one prompt per line (blank lines skipped), generated --batch-size at a time",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="rows generated at once; with more prompts, a finished row's slot takes the next prompt",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="write results as JSON lines (input order) to this file"
    )
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--max-sentences", type=int, default=None, help="stop after this many new sentences")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", choices=["cached", "full"], default="cached")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES, help="weights and generation state"
    )
    parser.add_argument("--no-stream", action="store_true", help="print only when done")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step (torch.compile; pays ~15-60 s once, wins on long or many generations)",
    )
    parser.add_argument(
        "--no-pack",
        action="store_true",
        help="multiply from the weights as stored, not packed for the CPU's kernels (changes rounding only)",
    )
    args = parser.parse_args(argv)
    # Checked before torch is imported, so a typo costs no model load.
    if args.max_new_tokens < 0:
        raise GpthfError(f"--max-new-tokens={args.max_new_tokens} must be >= 0 (max_new_tokens)")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise GpthfError(f"--temperature={args.temperature} must be a finite number >= 0 (0 = greedy)")
    if args.max_sentences is not None and args.max_sentences < 1:
        raise GpthfError(f"--max-sentences={args.max_sentences} must be >= 1 (leave it out for no limit)")
    if args.compile and args.strategy != "cached":
        raise GpthfError("--compile applies to --strategy cached (full recomputes a growing context)")
    if args.output is not None:
        if args.output.is_dir():
            raise GpthfError(f"--output {args.output} is a folder; give a file name (results.jsonl)")
        writable_folder(args.output.parent, flag="--output's folder")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        if not args.prompt.strip():
            raise GpthfError("the prompt is empty; give some text to continue")
        return [args.prompt]
    try:
        lines = args.batch_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise GpthfError(f"cannot read --batch-file {args.batch_file}: {err}") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise GpthfError(f"--batch-file {args.batch_file} has no prompts (only blank lines)")
    return prompts


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    prompts = read_prompts(args)
    from tqdm import tqdm

    from gpthf.data.splitter import build_splitter
    from gpthf.generation import (
        ContextLimit,
        GenerationSettings,
        SamplingSettings,
        decode_continuation,
        encode_prompt,
        generate,
    )
    from gpthf.training.checkpoint import load_checkpoint_tokenizer, load_model_from_checkpoint
    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0)
    if args.compile:
        from gpthf.generation.compiled import check_compiler

        check_compiler(device)  # before the model is read
    model, meta, checkpoint = load_model_from_checkpoint(args.ckpt, device, dtype=args.dtype)
    tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
    splitter = build_splitter(meta["data"]["language"])
    max_sentence_len = meta["data"]["max_sentence_len"]
    encoded = [encode_prompt(p, tokenizer, splitter, max_sentence_len) for p in prompts]
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        max_sentences=args.max_sentences,
        sampling=SamplingSettings(args.temperature, args.top_k, args.top_p),
        seed=args.seed,
        max_sentence_len=max_sentence_len,
        limit=ContextLimit(**meta.get("context", {})),
    )
    stream = len(prompts) == 1 and not args.no_stream
    generated: list[int] = []
    printed = ""

    def show(row: int, token: int) -> None:
        nonlocal printed
        generated.append(token)
        text = decode_continuation(tokenizer, generated)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text

    if stream:
        sys.stdout.write(prompts[0])
    progress = tqdm(total=len(prompts), unit="prompt", disable=len(prompts) == 1, file=sys.stderr)
    started = time.perf_counter()
    result = generate(
        model,
        encoded,
        settings,
        strategy=args.strategy,
        on_token=show if stream else None,
        slots=args.batch_size,
        on_finish=lambda _: progress.update(),
        compile=args.compile,
        pack=not args.no_pack,
    )
    elapsed = time.perf_counter() - started
    progress.close()
    if stream:
        sys.stdout.write("\n")
    completions = [decode_continuation(tokenizer, tokens) for tokens in result.tokens]
    if args.output is not None:
        write_results(args.output, prompts, completions, result)
    elif not stream:
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            prefix = f"[{i}] " if len(prompts) > 1 else ""
            print(f"{prefix}{prompt}{completion}")
    if len(prompts) > 1:
        new_tokens = sum(len(t) for t in result.tokens)
        slots = min(args.batch_size, len(prompts))
        print(
            f"{len(prompts)} prompts, {new_tokens:,} new tokens in {elapsed:.1f} s: "
            f"{new_tokens / elapsed:.1f} tokens/s with {slots} slot{'s' if slots > 1 else ''}"
            + (" (compilation included)" if args.compile else ""),
            file=sys.stderr,
        )
    return 0


def write_results(path: Path, prompts: list[str], completions: list[str], result) -> None:
    """One JSON object per prompt, in input order; written to a temporary file, then renamed."""
    lines = [
        json.dumps(
            {
                "index": i,
                "prompt": prompt,
                "completion": completion,
                "new_tokens": len(tokens),
                "finish_reason": reason,
            },
            ensure_ascii=False,
        )
        for i, (prompt, completion, tokens, reason) in enumerate(
            zip(prompts, completions, result.tokens, result.finish_reasons)
        )
    ]
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise GpthfError(f"cannot write --output {path} ({err.strerror}); give a writable path") from None


if __name__ == "__main__":
    sys.exit(run_cli(main))
