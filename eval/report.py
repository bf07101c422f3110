"""`python eval/report.py RUN_DIR... [--compare compare.json] [--out DIR]`

One table (markdown, printed) and one PNG comparing runs, typically GPTHF and GPT at equal budget:
validation bits per byte from training, and whatever `eval/perplexity.py`, `eval/downstream.py` and
`eval/compare.py` recorded (their results sit in `<run>/eval/`). A missing figure shows as "-".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def summarize(run_dir: Path, compare: dict | None) -> dict:
    from gpthf.evaluation.results import load_results
    from gpthf.training.metrics import read_metrics

    finals = [r for r in read_metrics(run_dir) if "val_bpb" in r]
    if not finals:
        raise GpthfError(
            f"{run_dir} has no finished training record (metrics.jsonl with val_bpb); give run folders"
        )
    results = load_results(run_dir)
    perplexity = results.get("perplexity-test", {})
    sentiment = results.get("downstream-sentiment", {})
    meta = json.loads((run_dir / "checkpoints" / "final" / "config.json").read_text())
    row = {
        "run": f"{run_dir.parent.name}/{run_dir.name}",
        "model": meta["arch"]["model"],
        "tokens": finals[-1]["tokens"],
        "val_bpb": finals[-1]["val_bpb"],
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
    if meta.get("init_from"):
        row["model"] += " (converted)"
    if compare:
        largest = max(
            (
                r
                for r in compare["decode"]
                if r["model"] == meta["arch"]["model"] and r["strategy"] == "cached"
            ),
            key=lambda r: (r["batch"], r["context"]),
            default=None,
        )
        row["decode_tokens_per_s"] = largest and largest["tokens_per_s"]
        row["state_mib"] = largest and largest["state_bytes"] / 2**20
    return row


def markdown(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [(k, t) for k, t in COLUMNS[3:] if any(r[k] is not None for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], metrics):
        values = [r[key] or 0.0 for r in rows]
        ax.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="report.py", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (outputs/<name>/<timestamp>)")
    parser.add_argument("--compare", type=Path, default=None, help="compare.json of eval/compare.py")
    parser.add_argument("--out", type=Path, default=Path("outputs/report"))
    args = parser.parse_args(argv)
    compare = json.loads(args.compare.read_text()) if args.compare else None
    rows = [summarize(run, compare) for run in args.runs]
    writable_folder(args.out)
    (args.out / "report.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "report.png")
    print(markdown(rows))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
