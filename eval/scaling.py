"""`python eval/scaling.py [--sizes 1m 2m 5m] [--tokens 300000]`: quality against training and
generation cost, for every model kind across sizes.

Runs one sweep (`pretrain.py -m`, every kind × size at the same `--tokens`, token-driven schedule), or
reads a finished one (`--sweep-dir`), then for each finished run: test bits per byte of its final
checkpoint, training FLOPs (FLOPs per token × tokens trained), and the decode cost of that model at
`--context` × `--batch` (cached strategy, medians of `--repeats` interleaved timings, and the state
bytes each row holds). Writes scaling.json, scaling.md (the table) and scaling.png (bits per byte
against training FLOPs; against decode time per token with the Pareto front) to --out, and prints
one JSON line. A failed run is named and left out; the others are still measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import ArgumentParser, positive_int, run_cli, writable_folder
from gpthf.measure.scaling import KINDS, LADDER, arch_name, pareto_front, read_sweep, sweep_overrides

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="scaling.py", description=__doc__)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument(
        "--sizes", nargs="+", default=["1m", "2m", "5m"], help=f"of {', '.join(LADDER)} (or test)"
    )
    parser.add_argument("--tokens", type=positive_int, default=300_000, help="training tokens of every run")
    parser.add_argument(
        "--budget", default="1h", help="wall-clock cap of each run (the schedule follows --tokens)"
    )
    parser.add_argument("--sweep-dir", type=Path, help="read this finished sweep instead of running one")
    parser.add_argument(
        "--override", action="append", default=[], help="KEY=VALUE for every run (repeatable)"
    )
    parser.add_argument("--context", type=positive_int, default=2048, help="decode measured at this context")
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--new-tokens", type=positive_int, default=16, help="decode steps timed per repeat")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved decode timings; medians")
    parser.add_argument("--eval-rows", type=positive_int, help="score only the first N test rows")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/scaling"))
    return parser.parse_args(argv)


def run_sweep(args) -> tuple[Path, float]:
    """The study's sweep through pretrain.py; a failed job does not stop it (or this script)."""
    from gpthf.errors import ConfigError

    sweep_dir = (args.out / "sweep").resolve()
    if (sweep_dir / "sweep.json").exists():
        raise ConfigError(
            f"{sweep_dir} already holds a sweep; read it with --sweep-dir {sweep_dir} or give another --out"
        )
    command = [sys.executable, str(REPO / "pretrain.py")]
    command += sweep_overrides(args.kinds, args.sizes, args.tokens, args.budget, sweep_dir, args.override)
    print("  sweep: " + " ".join(command[1:]), file=sys.stderr)
    started = time.time()
    finished = subprocess.run(command, cwd=REPO)
    if not (sweep_dir / "sweep.json").is_file():
        raise ConfigError(
            f"the sweep stopped before it started any run (exit {finished.returncode}); see its error above"
        )
    return sweep_dir, time.time() - started


def measure_run(run, args, stream_cache: dict) -> dict:
    """One finished run: its size, training cost, test bits per byte and decode cost."""
    import torch
    from omegaconf import OmegaConf

    from gpthf.config import ArchConfig
    from gpthf.data.dataset import prepare_data
    from gpthf.evaluation.perplexity import evaluate_checkpoint
    from gpthf.evaluation.results import load_results, save_result
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.measure import flops
    from gpthf.measure.speed import batch_of_contexts, decode_stream
    from gpthf.training.metrics import final_record, read_metrics
    from gpthf.training.run_dir import CONFIG_FILE

    checkpoint = run.folder / "checkpoints" / "final"
    model, meta, _ = load_model_from_checkpoint(checkpoint)
    key = (
        "perplexity-test" if args.eval_rows is None else f"perplexity-test-{args.eval_rows}-rows"
    )  # as perplexity.py names it
    scored = load_results(run.folder).get(key)
    if scored is None:  # scored once per run; a rerun of this script reads it back
        scored = evaluate_checkpoint(checkpoint, max_rows=args.eval_rows, samples=0)
        save_result(checkpoint, key, scored)
    final = final_record(read_metrics(run.folder))
    run_cfg = OmegaConf.load(run.folder / CONFIG_FILE)
    data = prepare_data(run_cfg)  # the run's own prepared data set, found in its cache
    tokens_per_sentence = data.stats["splits"]["train"]["tokens_per_sentence_mean"]
    arch, vocab, seq_len = ArchConfig(**meta.arch), meta.vocab_size, run_cfg.data.seq_len
    train_flops = flops.training_flops_per_token(arch, vocab, seq_len, tokens_per_sentence) * final["tokens"]
    if "stream" not in stream_cache:  # the same real text for every model of the study
        stream_cache["stream"] = decode_stream(
            data.split("test"), seq_len, args.context, args.new_tokens, args.batch
        )
    tokens = batch_of_contexts(stream_cache["stream"], args.context, args.new_tokens, args.batch)
    torch.manual_seed(0)
    return {
        "kind": meta.arch["model"],
        "arch": run.arch,
        "job": run.job,
        "params": model.num_parameters(),
        "train_tokens": final["tokens"],
        "train_steps": final["step"],
        "train_s": final.get("elapsed_s"),
        "train_flops": train_flops,
        "test_bits_per_byte": scored["bits_per_byte"],
        "decode_flops_per_token": flops.decode_flops(arch, vocab, args.context, tokens_per_sentence),
        "_model": model,
        "_tokens": tokens,
    }


def time_decodes(rows: list[dict], args) -> None:
    """Decode timings of every model, interleaved over `--repeats` rounds so a slow spell of a shared
    machine hits all of them; each row gets its median."""
    from gpthf.measure.speed import interleaved_timings, time_decode

    jobs = [
        lambda row=row: time_decode(row["_model"], row["kind"], "cached", row["_tokens"], args.context)
        for row in rows
    ]
    for row, timing in zip(rows, interleaved_timings(jobs, args.repeats)):
        row["decode_tokens_per_s"] = timing.tokens_per_s
        row["decode_ms_per_step"] = timing.ms_per_token
        row["state_bytes_per_row"] = timing.state_bytes // args.batch
        for private in ("_model", "_tokens"):
            row.pop(private)


def write_table(rows: list[dict], path: Path, args) -> None:
    lines = [
        f"| model | params | test bits/byte | training FLOPs | decode tokens/s ({args.context} × {args.batch}) | state per row |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["params"], r["kind"])):
        lines.append(
            f"| {r['arch']} | {r['params'] / 1e6:.2f}M | {r['test_bits_per_byte']:.4f} | {r['train_flops']:.2e} | "
            f"{r['decode_tokens_per_s']:.0f} | {r['state_bytes_per_row'] / 2**20:.2f} MiB |"
        )
    atomic_write(path, "\n".join(lines) + "\n", f"{path.with_suffix('.json')} is written")


def plot(rows: list[dict], front: list[int], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpthf.measure.styles import kind_style
    from gpthf.models import spec_for

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for kind in KINDS:
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["train_flops"])
        if not mine:
            continue
        spec = spec_for(kind)
        left.plot(
            [r["train_flops"] for r in mine],
            [r["test_bits_per_byte"] for r in mine],
            kind_style(kind),
            label=kind,
        )
        right.plot(
            [1000 / r["decode_tokens_per_s"] for r in mine], [r["test_bits_per_byte"] for r in mine],
            color=spec.color, marker=spec.marker, linestyle="none", label=kind,
        )  # fmt: skip
        for r in mine:
            right.annotate(r["arch"].rsplit("-", 1)[1], (1000 / r["decode_tokens_per_s"], r["test_bits_per_byte"]),
                           fontsize=7, xytext=(3, 3), textcoords="offset points")  # fmt: skip
    if front:
        right.plot([1000 / rows[i]["decode_tokens_per_s"] for i in front],
                   [rows[i]["test_bits_per_byte"] for i in front], "k--", lw=0.8, label="Pareto front")  # fmt: skip
    left.set(
        xscale="log", xlabel="training FLOPs", ylabel="test bits per byte", title="scaling at equal tokens"
    )
    right.set(xscale="log", xlabel=f"decode ms per generated token ({args.context} context, batch {args.batch})",
              ylabel="test bits per byte", title="quality against generation cost")  # fmt: skip
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    writable_folder(args.out)
    import torch

    from gpthf.errors import ConfigError

    if args.sweep_dir is None:
        sweep_overrides(
            args.kinds, args.sizes, args.tokens, args.budget, args.out, args.override
        )  # names a bad size now
    sweep_dir, sweep_s = (args.sweep_dir, None) if args.sweep_dir else run_sweep(args)
    torch.set_num_threads(args.threads)
    runs = read_sweep(sweep_dir)
    failed = [r for r in runs if r.status != "finished"]
    for run in failed:
        print(f"  run #{run.job} ({run.arch}) failed, left out: {run.error}", file=sys.stderr)
    cache: dict = {}
    rows = []
    for run in (r for r in runs if r.status == "finished"):
        rows.append(measure_run(run, args, cache))
        print(f"  scored {run.arch}: {rows[-1]['test_bits_per_byte']:.4f} bits/byte", file=sys.stderr)
    if not rows:
        raise ConfigError(f"no run of the sweep in {sweep_dir} finished; nothing to measure")
    time_decodes(rows, args)
    front = pareto_front([(1000 / r["decode_tokens_per_s"], r["test_bits_per_byte"]) for r in rows])
    for i, row in enumerate(rows):
        row["pareto"] = i in front
    summary = {
        "sweep_dir": str(sweep_dir),
        "sweep_s": sweep_s,
        "runs": len(runs),
        "finished": len(rows),
        "failed": [{"job": r.job, "arch": r.arch, "error": r.error} for r in failed],
        "context": args.context,
        "batch": args.batch,
        "pareto_front": [rows[i]["arch"] for i in front],
    }
    by_arch = {r["arch"]: r for r in rows}
    for size in args.sizes:  # GPTHF against its equal-size GPT, as ratios from this run
        ours, twin = by_arch.get(arch_name("gpthf", size)), by_arch.get(arch_name("gpt", size))
        if ours and twin:
            summary[f"gpthf_over_gpt_{size}"] = {
                "bits_per_byte": ours["test_bits_per_byte"] / twin["test_bits_per_byte"],
                "decode_tokens_per_s": ours["decode_tokens_per_s"] / twin["decode_tokens_per_s"],
                "state_bytes": ours["state_bytes_per_row"] / twin["state_bytes_per_row"],
            }
    atomic_write(args.out / "scaling.json", json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    write_table(rows, args.out / "scaling.md", args)
    plot(rows, front, args.out / "scaling.png", args)
    print(json.dumps(summary))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
