"""`python eval/serve_soak.py --ckpt RUN`: our server under a long, rough load, checked for leaks.

Starts `python -m gpthf serve` for the checkpoint on a free local port (127.0.0.1) with small
`--max-batch`/`--max-queue`, then sends `--requests` completions (greedy and sampled, streamed and
not) from `--concurrency` clients. A `--disconnect-share` of them leave abruptly (a stream closed
after its first chunk, or a plain request's connection dropped while it is generated), and halfway
a burst of `--burst-factor` × (max batch + max queue) requests arrives at once (most get 503).

Passes (exit 0) when every request either finished or was left by its client, the burst got only
200s and 503s, and afterwards nothing runs or waits, no generation state is held, /health is 200
and the server's resident memory grew at most 5 % from request `--rss-from` to the end.
Prints one JSON line; writes serve_soak.json and serve_soak.png (memory against requests) to --out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import (
    ArgumentParser,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
    stop_on_sigterm,
    writable_folder,
)
from gpthf.measure.serving import served_model
from gpthf.measure.serving_process import free_port, rss_bytes, server_command, server_process
from gpthf.measure.serving_prompts import cut_prompts, held_out_text
from gpthf.measure.serving_soak import SoakPlan, run_soak, verdict
from gpthf.settings import MAX_BATCH, MAX_QUEUE


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:  # NaN fails both
        raise ValueError(f"{text} is not a share from 0 to 1")
    return value


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="serve_soak.py", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint or run folder to serve")
    parser.add_argument("--requests", type=positive_int, default=1000)
    parser.add_argument("--disconnect-share", type=share, default=0.2, help="of the requests, 0 to 1")
    parser.add_argument("--burst-factor", type=non_negative_int, default=10, help="× what the server holds")
    parser.add_argument("--max-batch", type=MAX_BATCH.argument, default=4, help="the server's slots")
    parser.add_argument("--max-queue", type=MAX_QUEUE.argument, default=16, help="the server's queue")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="clients of the main requests")
    parser.add_argument(
        "--max-tokens", type=positive_int, default=16, help="each request asks for up to this"
    )
    parser.add_argument(
        "--rss-from", type=positive_int, default=200, help="requests done at the first memory sample"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=positive_float, default=900.0, help="for the whole run")
    parser.add_argument("--out", type=Path, default=Path("outputs/serve_soak"))
    args = parser.parse_args(argv)
    if args.rss_from >= args.requests:
        parser.error(f"--rss-from {args.rss_from} must be below --requests {args.requests}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    writable_folder(args.out)
    deadline = time.monotonic() + args.max_seconds
    plan = SoakPlan(
        requests=args.requests, disconnect_share=args.disconnect_share,
        burst=args.burst_factor * (args.max_batch + args.max_queue), concurrency=args.concurrency,
        max_tokens=args.max_tokens, rss_from=args.rss_from, seed=args.seed,
    )  # fmt: skip
    prompts = soak_prompts(args.ckpt, args.seed)
    port = free_port()
    command = server_command(args.ckpt, port, max_batch=args.max_batch, max_queue=args.max_queue)
    with server_process(command, port, args.out / "server.log", startup_timeout_s=300) as (url, process):
        report = asyncio.run(
            run_soak(url, served_model(url), prompts, plan, lambda: rss_bytes(process.pid), deadline)
        )
        report["server_running"] = process.poll() is None
    problems = verdict(report, plan) + ([] if report["server_running"] else ["the server process died"])
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["eval/serve_soak.py", *argv],
        "plan": plan.__dict__,
        **report,
        "passed": not problems,
        "problems": problems,
    }
    atomic_write(args.out / "serve_soak.json", json.dumps(result, indent=2))
    plot(report["memory"]["trace"], args.rss_from, args.out / "serve_soak.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("memory", "command", "plan")}), flush=True)
    for problem in problems:
        print(f"soak failed: {problem}", file=sys.stderr)
    return 0 if not problems else 1


def soak_prompts(ckpt: str, seed: int, count: int = 64, tokens: int = 24) -> list[str]:
    """Held-out windows of the checkpoint's own corpus, cut with its tokenizer."""
    from gpthf.training.checkpoint import load_checkpoint_tokenizer, read_meta, resolve_checkpoint

    checkpoint = resolve_checkpoint(ckpt)
    meta = read_meta(checkpoint)
    tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
    return [p.text for p in cut_prompts(held_out_text(meta.data), count, tokens, seed, tokenizer)]


def plot(trace: list, rss_from: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    points = [(done, rss / 2**20) for done, rss in trace if rss]
    ax.plot([d for d, _ in points], [m for _, m in points], "o-")
    ax.axvline(rss_from, color="grey", linestyle=":", label=f"request {rss_from}")
    ax.set(xlabel="requests done", ylabel="server resident memory (MiB)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    stop_on_sigterm()  # the servers this run started are stopped, as on Ctrl-C
    sys.exit(run_cli(main))
