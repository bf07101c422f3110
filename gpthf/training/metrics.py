"""What a run reports: `metrics.jsonl` (one JSON object per line), a progress bar, a loss curve PNG,
and the machine figures in its records (model FLOPs utilisation, memory).

Model FLOPs utilisation (MFU, PaLM's definition, as nanoGPT and torchtitan report it): the model's
analytical training FLOPs per token (`gpthf.measure.flops`) times tokens per second, over the
devices' peak: `impl.peak_flops`, or a large matmul in the training's number format timed once per
process (on a GPU its tensor-core rate; on a CPU its threads' rate, a fraction of a second).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gpthf.atomic import append_whole, atomic_write
from gpthf.measure.flops import training_flops_per_token
from gpthf.measure.timing import peak_device_mb, peak_rss_mb, square_matmul_flop_s

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
# Fields measuring the machine (wall-clock time, memory): the only ones that differ between two runs
# of one seed and config.
WALL_CLOCK_FIELDS = ("elapsed_s", "train_elapsed_s", "tokens_per_s", "mfu", "memory_mb", "eval_s")
# The square matmul timed for the peak: large enough for a GPU's tensor cores, short on a CPU.
PEAK_MATMUL_SIDE = {"cpu": 1024, "cuda": 8192}


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
        self.logged_through: int | None = None  # the last step a resumed run's killed session logged
        if resume_step is not None and self.path.exists():
            # Records past the checkpoint belong to work that is about to be redone.
            records = _parse_lines(self.path.read_text())
            self.logged_through = max((r["step"] for r in records), default=None)
            kept = [r for r in records if r["step"] <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        append_whole(self.path, json.dumps(record) + "\n")

    def flush(self) -> None:
        """Every line is on disk once written."""

    def close(self, failed: bool = False) -> None:
        """Nothing held open."""


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


def final_record(records: list[dict]) -> dict | None:
    """The record a finished run writes last (the full validation, with `ranks_agree`): not a
    validation made while training, which carries `val_bpb` too but not the run's end."""
    return next((r for r in reversed(records) if "ranks_agree" in r), None)


@functools.cache
def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square matmul on `device` in `dtype`, the fastest of a few: the peak MFU divides by."""
    side = PEAK_MATMUL_SIDE.get(device.type, PEAK_MATMUL_SIDE["cpu"])
    return square_matmul_flop_s(side, dtype, repeats=3, device=device)


class Utilization:
    """MFU and memory for a run's records (rank 0's device; MFU over all ranks' tokens and devices)."""

    def __init__(self, cfg, stats: dict, device: torch.device, dtype: torch.dtype | None, world_size: int):
        train = stats["splits"]["train"]
        self.flops_per_token = training_flops_per_token(
            cfg.arch,
            stats["vocab_size"],
            cfg.data.seq_len,
            max(train.get("tokens_per_sentence_mean", 1.0), 1.0),
        )
        peak = cfg.impl.peak_flops or matmul_peak_flops(device, dtype or torch.float32)
        self.peak_flops = peak * world_size
        self.device = device

    def mfu(self, tokens_per_s: float) -> float:
        return tokens_per_s * self.flops_per_token / self.peak_flops

    def memory_mb(self) -> float:
        """Peak MiB of tensors on a CUDA device, else the process's peak resident set."""
        on_device = peak_device_mb(self.device)
        return on_device if on_device is not None else peak_rss_mb()


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
    if val:  # every validation while training, then the final one
        ax.plot(*zip(*val), color="C3", marker="o", label="validation loss", zorder=3)
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
