"""`python eval/data_bench.py [--sizes-mb 100 400 1000] [--num-proc 1 2]`: the data pipeline at scale.

Writes synthetic corpora of real text (the embedded Bible, verses shuffled per copy) of each size,
prepares each with every `--num-proc`, and reports MB/s and tokens/s of preparation, its peak memory
(summed over the main process and its workers), bytes per token on disk, and, for a training process
started on the prepared corpus, its peak memory over its first steps and the time from
`python pretrain.py` to its first step. Writes `data_bench.json` and `data_bench.png` to --out and
prints one JSON line. The targets (issue 14): preparation ≤ 1.5 GB and flat in corpus size (+10 %),
≥ 3 MB/s with 2 workers, ≤ 2.2 bytes per token, training memory flat (±10 %), first step ≤ 10 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import ArgumentParser, positive_float, positive_int, run_cli, writable_folder

REPO = Path(__file__).resolve().parents[1]
TRAIN_STEP_TOKENS = 32 * 256  # train/default.yaml: 32 rows of 256 tokens per step


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="data_bench.py", description=__doc__)
    parser.add_argument(
        "--sizes-mb",
        type=positive_float,
        nargs="+",
        default=[100, 400, 1000],
        help="corpus sizes (10^6 bytes of text)",
    )
    parser.add_argument(
        "--num-proc", type=positive_int, nargs="+", default=[1, 2], help="preparation workers to compare"
    )
    parser.add_argument(
        "--train-steps", type=positive_int, default=5, help="training steps run on each prepared corpus"
    )
    parser.add_argument(
        "--work", default="data_bench_work", help="where corpora and caches are written (reused)"
    )
    parser.add_argument("--out", default="outputs/data_bench")
    parser.add_argument("--keep-caches", action="store_true", help="keep the prepared data sets")
    args = parser.parse_args(argv)
    return args


def prepare(corpus: Path, cache: Path, num_proc: int) -> dict:
    from gpthf.measure.data_scale import folder_bytes, run_measured

    shutil.rmtree(cache, ignore_errors=True)
    run = run_measured(
        [
            sys.executable,
            "-m",
            "gpthf.data.prepare",
            "data=local",
            f"data.path={corpus}",
            f"cache_dir={cache}",
            f"data.num_proc={num_proc}",
        ],
        cwd=REPO,
    )
    if run.returncode != 0:
        raise RuntimeError(f"preparation failed: {run.stderr.strip().splitlines()[-1:]}")
    (folder,) = [p for p in cache.iterdir() if (p / "stats.json").is_file()]
    stats = json.loads((folder / "stats.json").read_text())
    tokens = sum(s["tokens"] for s in stats["splits"].values())
    return {
        "wall_s": run.wall_s,
        "peak_rss_mb": run.peak_rss_bytes / 1e6,
        "tokens": tokens,
        "disk_bytes": folder_bytes(folder),
    }


def first_steps(corpus: Path, cache: Path, runs: Path, steps: int) -> dict:
    from gpthf.measure.data_scale import run_measured

    shutil.rmtree(runs, ignore_errors=True)

    def stepped() -> bool:
        return any(p.stat().st_size > 0 for p in runs.glob("*/*/metrics.jsonl"))

    run = run_measured(
        [
            sys.executable, "pretrain.py", "data=local", f"data.path={corpus}", f"cache_dir={cache}",
            f"output_dir={runs}", "name=bench", "budget=30m", f"train.max_tokens={steps * TRAIN_STEP_TOKENS}",
            "train.log_every_steps=1", "train.eval_rows=32",
        ],
        watch={"first_step": stepped},
        cwd=REPO,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"training failed: {run.stderr.strip().splitlines()[-1:]}")
    return {
        "peak_rss_mb": run.peak_rss_bytes / 1e6,
        "first_step_s": run.marks.get("first_step"),
        "wall_s": run.wall_s,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["sizes"]
    sizes = [r["corpus_mb"] for r in rows]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    for n in results["num_proc"]:
        speed.plot(sizes, [r["prepare"][str(n)]["mb_per_s"] for r in rows], "o-", label=f"num_proc={n}")
        memory.plot(
            sizes, [r["prepare"][str(n)]["peak_rss_mb"] for r in rows], "o-", label=f"prepare, num_proc={n}"
        )
    memory.plot(sizes, [r["train"]["peak_rss_mb"] for r in rows], "s--", label="training, first steps")
    speed.axhline(3, color="grey", ls=":", label="target 3 MB/s")
    memory.axhline(1500, color="grey", ls=":", label="target 1.5 GB")
    for ax, label in ((speed, "MB of text per second"), (memory, "peak RSS (MB, process tree)")):
        ax.set_xscale("log")
        ax.set_xlabel("corpus size (MB of text)")
        ax.set_ylabel(label)
        ax.legend()
        ax.set_ylim(bottom=0)
    fig.suptitle("data pipeline at scale")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from gpthf.measure.data_scale import write_synthetic_corpus

    work, out = writable_folder(args.work, "--work").resolve(), writable_folder(args.out)
    rows = []
    for size_mb in args.sizes_mb:
        corpus = work / f"corpus-{size_mb:g}MB"
        corpus_bytes = write_synthetic_corpus(corpus, int(size_mb * 1e6))
        row = {"corpus_mb": corpus_bytes / 1e6, "prepare": {}}
        for n in args.num_proc:
            measured = prepare(corpus, work / f"cache-{size_mb:g}-{n}", n)
            measured["mb_per_s"] = corpus_bytes / 1e6 / measured["wall_s"]
            measured["tokens_per_s"] = measured["tokens"] / measured["wall_s"]
            row["prepare"][str(n)] = measured
            print(
                f"{size_mb:g} MB, num_proc={n}: {measured['mb_per_s']:.2f} MB/s, peak {measured['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
            )
        last = work / f"cache-{size_mb:g}-{args.num_proc[-1]}"
        row["bytes_per_token"] = (
            row["prepare"][str(args.num_proc[-1])]["disk_bytes"]
            / row["prepare"][str(args.num_proc[-1])]["tokens"]
        )
        row["train"] = first_steps(corpus, last, work / f"runs-{size_mb:g}", args.train_steps)
        print(
            f"{size_mb:g} MB: training peak {row['train']['peak_rss_mb']:.0f} MB, first step at {row['train']['first_step_s']:.1f} s",
            file=sys.stderr,
        )
        if not args.keep_caches:
            for n in args.num_proc:
                shutil.rmtree(work / f"cache-{size_mb:g}-{n}", ignore_errors=True)
        rows.append(row)
    results = {"num_proc": args.num_proc, "sizes": rows}
    prep_rss = [r["prepare"][str(n)]["peak_rss_mb"] for r in rows for n in args.num_proc]
    train_rss = [r["train"]["peak_rss_mb"] for r in rows]
    two = str(max(args.num_proc))
    results["summary"] = {
        "prepare_peak_rss_mb_max": max(prep_rss),
        "prepare_rss_growth": max(r["prepare"][two]["peak_rss_mb"] for r in rows)
        / rows[0]["prepare"][two]["peak_rss_mb"]
        - 1,
        f"mb_per_s_num_proc_{two}_min": min(r["prepare"][two]["mb_per_s"] for r in rows),
        "bytes_per_token_max": max(r["bytes_per_token"] for r in rows),
        "train_rss_spread": max(train_rss) / min(train_rss) - 1,
        "first_step_s_max": max(r["train"]["first_step_s"] or float("inf") for r in rows),
    }
    atomic_write(out / "data_bench.json", json.dumps(results, indent=2))
    plot(results, out / "data_bench.png")
    print(json.dumps(results["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
