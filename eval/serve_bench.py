"""`python eval/serve_bench.py --ckpt GPTHF_RUN GPT_RUN --max-state-memory 4GiB`: serving under load.

A load generator for any OpenAI-compatible server, measured as `vllm bench serve` measures one.
Requests arrive as a Poisson process at each rate of `--request-rates` (`inf`: all at once),
at most `--max-concurrency` in flight; each streams a greedy completion of exactly
`--output-tokens` tokens (`ignore_eos`). Prompts are windows of about `--prompt-tokens` tokens of
the held-out split (cut with the checkpoint's tokenizer; by words without one), or the lines of
`--prompts-file`. Reported per rate with vLLM's field names: completed, failed, duration,
request/output/total token throughput, and mean/median/p99 of TTFT, TPOT, ITL and E2EL in ms.

`--ckpt RUN [RUN ...]` starts our server (`python -m gpthf serve`) for each checkpoint in turn on a
free local port with the same `--max-state-memory`/`--max-batch`/`--dtype`, measures it and stops
it (its queue as long as `--num-prompts`, so no request is refused for a full queue); for two
checkpoints it prints GPTHF ÷ GPT (output throughput, median TPOT) at each rate on stderr and puts
them in the summary line.
`--base-url` measures a server already running (ours, or a vLLM serving an exported GPT).

Prints one JSON line per rate and a summary line last; writes serve_bench.json and
serve_bench.png (output throughput and p99 TPOT against rate) and each server's log to --out.
Everything is bounded: each request by `--request-timeout`, the whole run by `--max-seconds`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import (
    ArgumentParser,
    byte_size,
    positive_float,
    positive_int,
    run_cli,
    stop_on_sigterm,
    writable_folder,
)
from gpthf.measure.serving import (
    base_url,
    completion_body,
    completions_url,
    first_request,
    ratios,
    run_sweep,
    served_model,
)
from gpthf.measure.serving_inprocess import load_served, run_engine_sweep
from gpthf.measure.serving_process import free_port, running_server, server_command
from gpthf.measure.serving_prompts import Prompt, cut_prompts, file_prompts, held_out_text
from gpthf.precision import DTYPE_NAMES
from gpthf.settings import MAX_BATCH


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="serve_bench.py", description=__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--ckpt", nargs="+", help="checkpoints or run folders: start our server for each")
    target.add_argument("--base-url", type=base_url, help="a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="with --base-url: the model name to ask for (default: its first)")
    parser.add_argument("--max-state-memory", type=byte_size, help="our server's state budget, e.g. 4GiB")
    parser.add_argument("--max-batch", type=MAX_BATCH.argument, help="our server's slots")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="our server's number format")
    parser.add_argument("--server-timeout", type=positive_float, default=300.0, help="seconds to get ready")
    parser.add_argument(
        "--request-rates", type=positive_float, nargs="+", default=[1.0, 2.0, 4.0, float("inf")]
    )
    parser.add_argument("--max-concurrency", type=positive_int, help="requests in flight at most")
    parser.add_argument("--num-prompts", type=positive_int, default=100, help="requests at each rate")
    parser.add_argument("--prompt-tokens", type=positive_int, default=256, help="about, per prompt")
    parser.add_argument("--output-tokens", type=positive_int, default=512, help="exactly, per request")
    parser.add_argument("--prompts-file", type=Path, help="one prompt per line instead of held-out text")
    parser.add_argument(
        "--tokenizer",
        help="with --base-url: a checkpoint whose tokenizer and held-out split make the prompts",
    )
    parser.add_argument("--seed", type=int, default=0, help="prompt places and arrival times")
    parser.add_argument("--request-timeout", type=positive_float, default=600.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=positive_float, default=3600.0, help="for the whole run")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="with --ckpt: also send the same load straight to the engine in this process (the HTTP cost)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/serve_bench"))
    args = parser.parse_args(argv)
    mode, misplaced = (
        ("--ckpt", ("tokenizer", "model"))
        if args.ckpt
        else ("--base-url", ("max_state_memory", "max_batch", "dtype", "in_process"))
    )
    wrong = [f"--{name.replace('_', '-')}" for name in misplaced if getattr(args, name) not in (None, False)]
    if wrong:
        parser.error(f"{', '.join(wrong)} cannot be used with {mode}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    writable_folder(args.out)
    deadline = time.monotonic() + args.max_seconds
    checkpoints = checkpoint_infos(args.ckpt or [])  # a bad path fails before any wait
    prompts = make_prompts(args, checkpoints[0]["checkpoint"] if checkpoints else args.tokenizer)
    targets = []
    for i, info in enumerate(checkpoints):  # an equal share of the time left for each
        share = time.monotonic() + (deadline - time.monotonic()) / (len(checkpoints) - i)
        targets.append(bench_checkpoint(args, info, prompts, share))
    if not checkpoints:
        targets.append(bench_server(args, args.base_url, args.model, args.base_url, prompts, deadline))
    comparison = compare(targets) if len(targets) == 2 else None
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["eval/serve_bench.py", *argv],
        "num_prompts": args.num_prompts,
        "prompt_tokens": args.prompt_tokens if args.prompts_file is None else None,
        "output_tokens": args.output_tokens,
        "max_state_memory": args.max_state_memory,
        "targets": targets,
        "comparison": comparison,
    }
    atomic_write(args.out / "serve_bench.json", json.dumps(result, indent=2))
    plot(targets, args.out / "serve_bench.png")
    summary = {"summary": {t["target"]: headline(t) for t in targets}, "comparison": comparison}
    print(json.dumps(summary), flush=True)
    every_rate = all(len(t["rates"]) == len(args.request_rates) for t in targets)
    return 0 if every_rate and all(row["completed"] for t in targets for row in t["rates"]) else 1


def headline(target: dict) -> dict:
    """A target in one line: what it completed and failed over all rates, its best throughput, and
    (with --in-process) its HTTP ÷ in-process output throughput at each rate."""
    rows = target["rates"]
    best = max(rows, key=lambda row: row["output_throughput"] or 0, default=None)
    line = {
        "rates": len(rows),
        "completed": sum(row["completed"] for row in rows),
        "failed": sum(row["failed"] for row in rows),
        "max_output_throughput": best and best["output_throughput"],
        "median_tpot_ms_there": best and best["median_tpot_ms"],
    }
    if "in_process" in target:
        line["http_over_in_process"] = [
            r["output_throughput"] for r in target["in_process"]["http_over_in_process"]
        ]
    return line


def checkpoint_infos(paths: list[str]) -> list[dict]:
    """Each checkpoint with its model kind, which names it (numbered when two share one)."""
    from gpthf.training.checkpoint import read_meta, resolve_checkpoint

    infos = [{"checkpoint": resolve_checkpoint(path)} for path in paths]
    archs = [read_meta(info["checkpoint"]).arch["model"] for info in infos]
    for i, (info, arch) in enumerate(zip(infos, archs)):
        info.update(arch=arch, label=arch if archs.count(arch) == 1 else f"{arch}-{i + 1}")
    return infos


def make_prompts(args, tokenizer_source: str | Path | None) -> list[Prompt]:
    """The same prompts for every server: the tokenizer and held-out split of the first checkpoint
    (or --tokenizer); without one, the default corpus's held-out split cut by words."""
    tokenizer, data_cfg = None, None
    if tokenizer_source is not None:
        from gpthf.training.checkpoint import load_checkpoint_tokenizer, read_meta, resolve_checkpoint

        checkpoint = resolve_checkpoint(tokenizer_source)
        meta = read_meta(checkpoint)
        tokenizer, data_cfg = load_checkpoint_tokenizer(checkpoint, meta), meta.data
    if args.prompts_file is not None:
        return file_prompts(args.prompts_file, args.num_prompts, tokenizer)
    if data_cfg is None:
        from gpthf.config import load_config

        data_cfg = load_config().data
    text = held_out_text(data_cfg)
    return cut_prompts(text, args.num_prompts, args.prompt_tokens, args.seed, tokenizer)


def bench_checkpoint(args, info: dict, prompts: list[Prompt], deadline: float) -> dict:
    """Our server for one checkpoint, measured, then stopped (however the measurement ends)."""
    port = free_port()
    command = server_command(
        info["checkpoint"], port, max_batch=args.max_batch, max_state_memory=args.max_state_memory,
        # the benchmark's own load never meets a full queue: every request waits its turn, as in vLLM
        max_queue=args.num_prompts, dtype=args.dtype,
    )  # fmt: skip
    log = args.out / f"server-{info['label']}.log"
    startup = min(args.server_timeout, max(deadline - time.monotonic(), 1.0))
    with running_server(command, port, log, startup) as url:
        target = bench_server(args, url, None, info["label"], prompts, deadline)
    target = {**target, "checkpoint": str(info["checkpoint"]), "arch": info["arch"], "server_log": str(log)}
    if args.in_process:
        target["in_process"] = bench_in_process(args, info, prompts, target["rates"], deadline)
    return target


def bench_in_process(args, info: dict, prompts: list[Prompt], http_rows: list[dict], deadline: float) -> dict:
    """The same load on the same engine without HTTP, after the server has stopped (never both at
    once on shared cores); the server's output throughput ÷ this one's is the HTTP cost."""
    served = load_served(
        info["checkpoint"], max_batch=args.max_batch, max_state_memory=args.max_state_memory,
        max_queue=args.num_prompts, dtype=args.dtype,
    )  # fmt: skip
    label = f"{info['label']} in process"
    rows = run_engine_sweep(
        served, prompts, output_tokens=args.output_tokens, rates=args.request_rates,
        max_concurrency=args.max_concurrency, seed=args.seed, request_timeout_s=args.request_timeout,
        deadline=deadline, report=lambda row: print(json.dumps({"target": label, **row}), flush=True),
    )  # fmt: skip
    by_rate = ratios(http_rows, rows)
    for row in by_rate:
        share = row["output_throughput"]
        print(
            f"{info['label']} over HTTP ÷ in process at rate {row['request_rate']}: output throughput "
            f"{'n/a' if share is None else f'{share:.2f}×'}",
            file=sys.stderr,
        )
    return {"rates": rows, "http_over_in_process": by_rate}


def bench_server(
    args, url: str, model: str | None, label: str, prompts: list[Prompt], deadline: float
) -> dict:
    model = model or served_model(url)
    endpoint = completions_url(url)
    timeout = min(args.request_timeout, max(deadline - time.monotonic(), 1.0))
    first = first_request(
        endpoint, completion_body(model, prompts[0].text, args.output_tokens), prompts[0].tokens, timeout
    )
    if first.output_tokens != args.output_tokens:
        print(
            f"warning: {label} streamed {first.output_tokens} tokens for max_tokens {args.output_tokens}: "
            "it does not honour ignore_eos, so its requests do different amounts of work",
            file=sys.stderr,
        )
    rows = run_sweep(
        endpoint, prompts, model=model, output_tokens=args.output_tokens, rates=args.request_rates,
        max_concurrency=args.max_concurrency, seed=args.seed, request_timeout_s=args.request_timeout,
        deadline=deadline, report=lambda row: print(json.dumps({"target": label, **row}), flush=True),
    )  # fmt: skip
    if len(rows) < len(args.request_rates):
        print(f"warning: --max-seconds reached; {label} ran {len(rows)} of the rates", file=sys.stderr)
    return {"target": label, "base_url": url, "model": model, "rates": rows}


def compare(targets: list[dict]) -> dict:
    """GPTHF ÷ GPT when the two are one of each, else the first ÷ the second; printed as a table."""
    first, second = targets
    if second.get("arch") == "gpthf" and first.get("arch") != "gpthf":
        first, second = second, first
    rows = ratios(first["rates"], second["rates"])
    name = f"{first['target']} ÷ {second['target']}"
    for row in rows:
        throughput, tpot = (row[k] for k in ("output_throughput", "median_tpot_ms"))
        print(
            f"{name} at rate {row['request_rate']}: output throughput "
            f"{'n/a' if throughput is None else f'{throughput:.2f}×'}, median TPOT "
            f"{'n/a' if tpot is None else f'{tpot:.2f}×'}",
            file=sys.stderr,
        )
    return {"numerator": first["target"], "denominator": second["target"], "by_rate": rows}


def plot(targets: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (throughput, tpot) = plt.subplots(1, 2, figsize=(9, 3.5))
    rates = list(
        dict.fromkeys(row["request_rate"] for t in targets for row in t["rates"])
    )  # in the order given
    for target in targets:
        x = [rates.index(row["request_rate"]) for row in target["rates"]]
        throughput.plot(
            x, [row["output_throughput"] or 0 for row in target["rates"]], "o-", label=target["target"]
        )
        p99 = [
            (i, row["p99_tpot_ms"]) for i, row in zip(x, target["rates"]) if row["p99_tpot_ms"] is not None
        ]
        tpot.plot([i for i, _ in p99], [v for _, v in p99], "o-", label=target["target"])
    for ax, ylabel in ((throughput, "output tokens/s"), (tpot, "p99 TPOT (ms)")):
        ax.set(xlabel="request rate (requests/s)", ylabel=ylabel)
        ax.set_xticks(range(len(rates)), [r if isinstance(r, str) else f"{r:g}" for r in rates])
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    stop_on_sigterm()  # the servers this run started are stopped, as on Ctrl-C
    sys.exit(run_cli(main))
