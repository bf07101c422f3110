"""`python generate.py --ckpt PATH --prompt "..." [options]`: continue text with a GPTHF or GPT checkpoint.

--ckpt takes a checkpoint folder or a run folder (its newest checkpoint). A prompt that ends with
sentence punctuation starts a new sentence; otherwise its last sentence is continued.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpthf.atomic import WriteFailed
from gpthf.batch_output import check_batch_file, is_stream, job_output, partial_path
from gpthf.batch_results import BatchResults, check_complete
from gpthf.cli import ArgumentParser, run_cli, writable_folder
from gpthf.errors import GpthfError
from gpthf.precision import DEFAULT_DTYPE, DTYPE_NAMES
from gpthf.settings import MAX_NEW_TOKENS, MAX_SENTENCES, SAMPLING, SEED, SLOTS, check_all

if TYPE_CHECKING:
    from gpthf.generation import GenerationSettings
    from gpthf.training.checkpoint import CheckpointMeta

BOM = "\ufeff"  # the byte order mark some editors put before UTF-8 text: never part of a prompt


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
        help="one prompt per line, UTF-8 (blank lines and byte order marks skipped), generated "
        "--batch-size at a time",
    )
    parser.add_argument(
        "--batch-size",
        type=SLOTS.argument,
        default=16,
        help="rows generated at once; with more prompts, a finished row's slot takes the next prompt",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write results as JSON lines (input order) to this file (its folder is created if "
        "needed); they stream to FILE.partial as they finish, and FILE appears when all are done. "
        "A symlink is followed (its target is written); a device, FIFO or open file (/dev/stdout, "
        "a named pipe) is appended to straight, with no partial file and no --resume",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted job whose results are in --output's FILE.partial; one "
        "whose results are all there is only completed, and a complete FILE of these prompts is kept",
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
    # Checked before torch is imported (a typo costs no model load), by the rules the library checks with.
    check_all(args, (MAX_NEW_TOKENS, MAX_SENTENCES, *SAMPLING, SEED), as_flags=True)
    if args.compile and args.strategy != "cached":
        raise GpthfError("--compile applies to --strategy cached (full recomputes a growing context)")
    if args.resume and args.output is None:
        raise GpthfError("--resume continues a job's --output file; give the same --output as that job")
    if args.output is not None:
        args.output = job_output(args.output, args.resume)  # a symlink's target; what it cannot be
        if args.batch_file is not None:
            check_batch_file(args.batch_file, args.output)
        if not is_stream(args.output):
            writable_folder(args.output.parent, flag="--output's folder")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        prompt = args.prompt.removeprefix(BOM)  # e.g. --prompt "$(cat notes.txt)"
        if not prompt.strip():
            raise GpthfError("the prompt is empty; give some text to continue")
        return [prompt]
    try:  # line by line: the file's text is never held twice (whole and split)
        prompts = [prompt for _, prompt in prompt_lines(args.batch_file)]
    except (OSError, UnicodeDecodeError) as err:
        raise GpthfError(f"cannot read --batch-file {args.batch_file}: {err}") from None
    if not prompts:
        raise GpthfError(f"--batch-file {args.batch_file} has no prompts (only blank lines)")
    return prompts


def prompt_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, prompt) of each prompt of a batch file: its lines that are not blank, without
    a leading byte order mark (which would change the first prompt's tokens, and its output)."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.removeprefix(BOM)  # the file's, or one a concatenated file brought mid-way
            if line.strip():
                yield number, line.rstrip("\n")


def name_prompt(args: argparse.Namespace, index: int) -> str:
    """How an error names prompt `index`: the --prompt, or its line of the --batch-file (blank lines
    are skipped, so the index is not the line; the file is read again only for this)."""
    if args.prompt is not None:
        return "the prompt"
    line, _ = next(itertools.islice(prompt_lines(args.batch_file), index, None), (None, None))
    if line is None:  # the file changed since, or was a pipe read once: no line to point at
        return f"prompt {index} of {args.batch_file}"
    return f"prompt {index} (line {line} of {args.batch_file})"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    prompts = read_prompts(args)
    if args.resume and not partial_path(args.output).exists() and args.output.exists():
        check_complete(args.output, prompts)  # or another batch file's results: refused
        print(
            f"nothing to resume: {args.output} is complete (drop --resume to generate it again)",
            file=sys.stderr,
        )
        return 0
    from gpthf.training.checkpoint import resolve_checkpoint
    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")
    if args.compile:
        from gpthf.generation.compiled import check_compiler

        check_compiler(device)  # before the model is read
    checkpoint = resolve_checkpoint(args.ckpt)
    # Opened before the model loads, so a second process on the same output, or a partial file of
    # another job, is refused at once.
    results = open_results(args, prompts, checkpoint) if args.output is not None else None
    try:
        if results is not None and results.done == len(prompts):
            finish_only(results)  # an earlier run wrote every result; only the output file is missing
        else:
            run_job(args, prompts, checkpoint, device, results)
    except BaseException as err:
        if results is None:
            raise
        results.close()
        if not results.written:
            raise
        if isinstance(err, WriteFailed):  # the output file's own failure: one sentence, told once
            raise err.keeping(results.kept()) from None
        if isinstance(err, GpthfError):  # still one error line
            raise type(err)(f"{err}; {results.kept()}") from None
        print(results.kept(), file=sys.stderr)
        raise
    return 0


def finish_only(results: BatchResults) -> None:
    """Complete a resumed job whose results were all written (its final rename failed, or it was
    killed just before): no model is needed, and there is nothing left to generate."""
    results.finish()
    print(f"all {results.done:,} results were written before; {results.path} completed", file=sys.stderr)


def run_job(
    args: argparse.Namespace, prompts: list[str], checkpoint, device, results: BatchResults | None
) -> None:
    """Generate what `results` does not hold yet; each result goes out (to the file, or printed)
    in input order as soon as every earlier one has."""
    from tqdm import tqdm

    from gpthf.generation import PromptError, check_prompts, generate
    from gpthf.generation.job import InputOrderOutput, StreamPrinter, encode_prompts, speed_line
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.training.checkpoint import load_checkpoint_tokenizer

    model, meta, checkpoint = load_model_from_checkpoint(checkpoint, device, dtype=args.dtype)
    start = results.done if results is not None else 0  # prompts an interrupted run already wrote
    tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
    encoded = encode_prompts(prompts[start:], tokenizer, meta.data)
    settings = generation_settings(args, meta)
    try:  # before any output: a bad prompt costs no work and leaves no half-printed line
        check_prompts(model, encoded, settings.limit)
    except PromptError as err:
        raise GpthfError(f"{name_prompt(args, start + err.prompt)} {err.problem}") from None
    stream = len(prompts) == 1 and not args.no_stream
    progress = tqdm(
        total=len(prompts), initial=start, unit="prompt", disable=len(prompts) == 1, file=sys.stderr
    )
    output = InputOrderOutput(prompts, start, tokenizer, results, progress, streamed=stream)
    if stream:
        sys.stdout.write(prompts[0])
    started = time.perf_counter()
    with progress:
        if encoded:
            generate(
                model,
                encoded,
                settings,
                strategy=args.strategy,
                on_token=StreamPrinter(tokenizer) if stream else None,
                slots=args.batch_size,
                on_finish=output,
                compile=args.compile,
                pack=not args.no_pack,
                keep_results=False,
                sampling_keys=range(start, len(prompts)),  # a resumed job draws what it would have
            )
    elapsed = time.perf_counter() - started
    if stream:
        sys.stdout.write("\n")
    if results is not None:
        results.finish()
    if len(prompts) > 1:
        slots = min(args.batch_size, len(encoded))
        print(
            speed_line(len(encoded), start, output.new_tokens, elapsed, slots, args.compile), file=sys.stderr
        )


def generation_settings(args: argparse.Namespace, meta: CheckpointMeta) -> GenerationSettings:
    """The flags as the library's settings, with what the checkpoint was trained for (its sentence
    length and context)."""
    from gpthf.generation import ContextLimit, GenerationSettings, SamplingSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        max_sentences=args.max_sentences,
        sampling=SamplingSettings(args.temperature, args.top_k, args.top_p),
        seed=args.seed,
        max_sentence_len=meta.data["max_sentence_len"],
        limit=ContextLimit(**meta.context),
    )


def open_results(args: argparse.Namespace, prompts: list[str], checkpoint: Path) -> BatchResults:
    """The job's output file; its header records what makes results of two runs comparable."""
    from gpthf.training.checkpoint import weights_fingerprint

    settings = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "weights": weights_fingerprint(checkpoint),
        "dtype": args.dtype,
        "strategy": args.strategy,
        "max_new_tokens": args.max_new_tokens,
        "max_sentences": args.max_sentences,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    return BatchResults(args.output, prompts, settings, resume=args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main))
