"""`python eval/report.py RUN_DIR... [--compare compare.json] [--lm-eval RESULTS.json...] [--out DIR]`

One table (markdown, printed) and one PNG comparing runs, typically GPTHF and GPT at equal budget:
validation bits per byte from training, and whatever `eval/perplexity.py`, `eval/downstream.py` and
`eval/compare.py` recorded (their results sit in `<run>/eval/`), and lm-evaluation-harness results
(`python -m gpthf lm-eval` writes them to `<run>/eval/lm-eval/`; `--lm-eval` adds results files kept
elsewhere, matched to runs by their `ckpt` model_arg). A missing figure shows as "-".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import ArgumentParser, run_cli, writable_folder
from gpthf.errors import GpthfError

COLUMNS = [
    ("run", "run"),
    ("model", "model"),
    ("tokens", "tokens trained"),
    ("val_bpb", "val bits/byte"),
    ("test_bpb", "test bits/byte"),
    ("first_token_loss", "1st-token loss"),
    ("later_token_loss", "later-token loss"),
    ("sentiment_accuracy", "sentiment acc."),
    ("cloze_accuracy", "cloze acc."),
    ("closed_share", "sentences closed"),
    ("distinct_2", "distinct-2"),
    ("decode_tokens_per_s", "decode tok/s"),
    ("state_mib", "state MiB"),
]


LM_EVAL_METRICS = (
    "acc",
    "acc_norm",
    "acc_mutual_info",
    "perplexity",
)  # of each lm-eval task, where it reports them


def lm_eval_metrics(results_file: Path) -> dict[str, float]:
    """`{"<task> <metric>": value}` of one lm-eval results JSON (filter `none`, no stderr)."""
    metrics = {}
    for task, values in json.loads(results_file.read_text()).get("results", {}).items():
        for key, value in values.items():
            name, _, filtered = key.partition(",")
            if name in LM_EVAL_METRICS and filtered == "none" and isinstance(value, (int, float)):
                metrics[f"{task} {name}"] = float(value)
    return metrics


def lm_eval_run(results_file: Path) -> Path | None:
    """The run folder an lm-eval results file scored, from its `ckpt` model_arg."""
    from gpthf.evaluation.results import run_dir_of
    from gpthf.training.checkpoint import resolve_checkpoint

    args = json.loads(results_file.read_text()).get("config", {}).get("model_args") or {}
    if isinstance(args, str):
        args = dict(a.split("=", 1) for a in args.split(",") if "=" in a)
    try:
        return run_dir_of(resolve_checkpoint(args["ckpt"])).resolve()
    except Exception:  # not one of ours, or moved since
        return None


def summarize(run_dir: Path, compare: dict | None) -> dict:
    from gpthf.evaluation.results import load_results
    from gpthf.training.checkpoint import FINAL, read_meta
    from gpthf.training.metrics import final_record, read_metrics

    final = final_record(read_metrics(run_dir))
    if final is None:
        raise GpthfError(
            f"{run_dir} has no finished training record (metrics.jsonl's last validation); give run folders"
        )
    results = load_results(run_dir)
    perplexity = results.get("perplexity-test", {})
    sentiment = results.get("downstream-sentiment", {})
    meta = read_meta(run_dir / "checkpoints" / FINAL)
    row = {
        "run": f"{run_dir.parent.name}/{run_dir.name}",
        "model": meta.arch["model"],
        "tokens": final["tokens"],
        "val_bpb": final["val_bpb"],
        "test_bpb": perplexity.get("bits_per_byte"),
        "first_token_loss": perplexity.get("loss_by_position", {}).get("first_in_sentence"),
        "later_token_loss": perplexity.get("loss_by_position", {}).get("later_in_sentence"),
        "sentiment_accuracy": sentiment.get("accuracy_median"),
        "cloze_accuracy": results.get("downstream-cloze", {}).get("accuracy"),
        "closed_share": perplexity.get("generation", {}).get("closed_share"),
        "distinct_2": perplexity.get("generation", {}).get("distinct_n", {}).get("2"),
        "decode_tokens_per_s": None,
        "state_mib": None,
    }
    for results_file in sorted((run_dir / "eval" / "lm-eval").rglob("results_*.json"), key=lambda p: p.name):
        row.update(lm_eval_metrics(results_file))  # results_<timestamp>.json: a later run of a task wins
    if meta.init_from:
        row["model"] += " (converted)"
    if compare:
        largest = max(
            (r for r in compare["decode"] if r["model"] == meta.arch["model"] and r["strategy"] == "cached"),
            key=lambda r: (r["batch"], r["context"]),
            default=None,
        )
        row["decode_tokens_per_s"] = largest and largest["tokens_per_s"]
        row["state_mib"] = largest and largest["state_bytes"] / 2**20
    return row


def columns_of(rows: list[dict]) -> list[tuple[str, str]]:
    extra = sorted({k for r in rows for k in r if " " in k})  # the lm-eval "<task> <metric>" figures
    return COLUMNS + [(k, k) for k in extra]


def markdown(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    columns = columns_of(rows)
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [(k, t) for k, t in columns_of(rows)[3:] if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], metrics):
        values = [r.get(key) or 0.0 for r in rows]
        ax.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="report.py", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (outputs/<name>/<timestamp>)")
    parser.add_argument("--compare", type=Path, default=None, help="compare.json of eval/compare.py")
    parser.add_argument(
        "--lm-eval", nargs="+", type=Path, default=[], help="lm-eval results_*.json kept elsewhere"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/report"))
    args = parser.parse_args(argv)
    compare = json.loads(args.compare.read_text()) if args.compare else None
    rows = [summarize(run, compare) for run in args.runs]
    for results_file in args.lm_eval:
        if not results_file.is_file():
            raise GpthfError(f"--lm-eval {results_file} does not exist; give lm-eval's results_*.json files")
        scored = lm_eval_run(results_file)
        matched = [row for run, row in zip(args.runs, rows) if run.resolve() == scored]
        if not matched:
            raise GpthfError(
                f"--lm-eval {results_file} scored {scored or 'a model that is not a gpthf run'}, none of the runs given"
            )
        matched[0].update(lm_eval_metrics(results_file))
    writable_folder(args.out)
    atomic_write(args.out / "report.json", json.dumps(rows, indent=2))
    plot(rows, args.out / "report.png")
    print(markdown(rows))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
