"""What a run reports: `metrics.jsonl` (one JSON object per line), a progress bar, a loss curve PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from gpthf.atomic import append_whole, atomic_write

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
# Fields measuring wall-clock time: the only ones that differ between two runs of one seed and config.
WALL_CLOCK_FIELDS = ("elapsed_s", "tokens_per_s")


def _parse_lines(text: str) -> list[dict]:
    """Records of a metrics file; a last line torn by a kill mid-write is dropped."""
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records


class MetricsLog:
    """Appends records to `<run>/metrics.jsonl`, written line by line so a crash loses nothing logged;
    a line the disk has no room for is not left torn (`append_whole`)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            # Records past the checkpoint belong to work that is about to be redone.
            kept = [r for r in _parse_lines(self.path.read_text()) if r["step"] <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        append_whole(self.path, json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    return _parse_lines(path.read_text()) if path.exists() else []


class BudgetBar:
    """A progress bar over the budget (0-100 %), with ETA, loss, learning rate and tokens/s."""

    def __init__(self, enabled: bool, start_progress: float = 0.0):
        self.bar = tqdm(
            total=100.0,
            initial=round(100 * start_progress, 2),
            disable=not enabled,
            bar_format="{desc} {percentage:3.0f}% of budget |{bar}| [{elapsed}<{remaining}] {postfix}",
            desc="train",
            dynamic_ncols=True,
        )
        self._last_refresh = 0.0

    def update(self, progress: float, **postfix: float | int) -> None:
        self.bar.n = round(min(100.0, 100 * progress), 2)
        if time.monotonic() - self._last_refresh > 0.5:
            self.bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()}, refresh=False
            )
            self.bar.refresh()
            self._last_refresh = time.monotonic()

    def close(self) -> None:
        self.bar.close()


def plot_losses(run_dir: Path) -> Path | None:
    """Training loss (and validation loss where recorded) against tokens seen, as `<run>/loss.png`."""
    records = read_metrics(run_dir)
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.scatter(*zip(*val), color="C3", label="validation loss", zorder=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(Path(run_dir).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        return atomic_write(Path(run_dir) / LOSS_PLOT, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
