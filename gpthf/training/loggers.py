"""Where a run's records go: `metrics.jsonl` always, TensorBoard and Weights & Biases when chosen.

The `logger` hydra group (`logger=[jsonl,tensorboard,wandb]`, cramming_cfg/logger/) puts a section
into `cfg.logger` for each tracker chosen. Every backend takes the same `metrics.jsonl` records, in
order, and a tracker renames their fields as nanoGPT, litgpt and torchtitan name them (`train/loss`,
`val/bpb`). Only rank 0 opens them. A tracker's package is imported when it is chosen, never before.

A resumed run continues each tracker where its checkpoint stands, without a step twice or out of order:
records past the checkpoint (logged before a kill) are dropped from `metrics.jsonl` and written again;
TensorBoard purges them from its view (`purge_step`, read by TensorBoard's own reader); W&B, which
cannot take a step back, continues the same run (its id is kept in the run folder) and skips the steps
the killed session may already have sent it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import secrets
import time
from pathlib import Path

from omegaconf import OmegaConf

from gpthf.atomic import atomic_write
from gpthf.errors import ConfigError
from gpthf.training.metrics import MetricsLog
from gpthf.training.run_dir import TENSORBOARD_DIR, WANDB_ID_FILE

log = logging.getLogger(__name__)

TRACK_EXTRA = 'pip install ".[track]"'
# A `metrics.jsonl` field and its tracker name. A training record gives the first group, a validation
# record (periodic or final, which also repeats the step's lr) the second only: no tag twice a step.
TRAIN_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "mfu": "train/mfu",
    "memory_mb": "train/memory_mb",
    "tokens": "train/tokens",
    "elapsed_s": "time/elapsed_s",
    "train_elapsed_s": "time/train_elapsed_s",
}
VAL_TAGS = {"val_loss": "val/loss", "val_bpb": "val/bpb"}
WANDB_MODES = ("online", "offline", "disabled")
_EVENT_TIME = re.compile(r"tfevents\.(\d+)\.")


def tracker_values(record: dict) -> dict[str, float]:
    """A record's fields under their tracker names (None-valued fields left out)."""
    tags = VAL_TAGS if "val_loss" in record else TRAIN_TAGS
    return {tag: float(record[key]) for key, tag in tags.items() if record.get(key) is not None}


def _require(module: str, backend: str):
    """The backend's package, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"logger={backend} needs the {backend} package: {TRACK_EXTRA}") from None


def check_loggers(logger_cfg) -> None:
    """The chosen trackers can be opened: checked before anything slow, without importing them."""
    for backend, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if logger_cfg.get(backend) is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"logger={backend} needs the {backend} package: {TRACK_EXTRA}")
    wandb_cfg = logger_cfg.get("wandb")
    if wandb_cfg is not None and wandb_cfg.mode is not None and wandb_cfg.mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={wandb_cfg.mode!r}: use {', '.join(WANDB_MODES)} or null")


def flat_hparams(cfg) -> dict[str, bool | int | float | str]:
    """The resolved config as `group.key: value` scalars (TensorBoard's hparams take no None, lists or
    nesting)."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{name}.")
            else:
                flat[name] = value if isinstance(value, bool | int | float | str) else str(value)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


class TensorBoardLogger:
    """Scalars in `<run>/tensorboard/`, the config as hparams (and as YAML text) on a new run."""

    def __init__(self, cfg, run_dir: Path, resume_step: int | None):
        tensorboard = _require("torch.utils.tensorboard", "tensorboard")
        folder = Path(run_dir) / TENSORBOARD_DIR
        earlier = _after_newest_event_file(folder)
        # TensorBoard's reader drops the events at or past purge_step that earlier files hold: those
        # past the checkpoint when resuming, all of them when a run starts again from scratch (a
        # sweep's job killed before its first checkpoint).
        purge_step = resume_step + 1 if resume_step is not None else (0 if earlier else None)
        self.writer = tensorboard.SummaryWriter(str(folder), purge_step=purge_step, flush_secs=30)
        if resume_step is None:
            from torch.utils.tensorboard.summary import hparams

            metrics = {tag: None for tag in ("train/loss", "val/loss", "val/bpb")}
            for event in hparams(flat_hparams(cfg), metrics):
                self.writer.file_writer.add_summary(event)
            self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "```")

    def write(self, record: dict) -> None:
        for tag, value in tracker_values(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])

    def flush(self) -> None:
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def _after_newest_event_file(folder: Path) -> bool:
    """Whether `folder` holds event files already; if so, wait until the clock's second is past the
    newest one's: TensorBoard reads a folder's files in name order, which starts with the second a
    file was opened, and this session's file (holding the purge) must come after the earlier ones."""
    seconds = [
        int(m.group(1)) for p in folder.glob("events.out.tfevents.*") if (m := _EVENT_TIME.search(p.name))
    ]
    if seconds:
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))
    return bool(seconds)


class WandbLogger:
    """One W&B run per training run, its local files in `<run>/wandb/`; the config as its config."""

    def __init__(self, cfg, run_dir: Path, resume_step: int | None, logged_through: int | None):
        wandb = _require("wandb", "wandb")
        settings = cfg.logger.wandb
        id_file = Path(run_dir) / WANDB_ID_FILE
        continuing = resume_step is not None and id_file.is_file()
        if continuing:
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(6)  # W&B ids: letters and digits, unique in the project
            atomic_write(id_file, run_id + "\n")
        try:
            self.run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                mode=settings.mode,
                dir=str(run_dir),
                id=run_id,
                resume="allow",
                name=f"{cfg.name}/{Path(run_dir).name}",
                config=OmegaConf.to_container(cfg, resolve=True),
                settings=wandb.Settings(console="off"),  # stdout carries the run's result line, untouched
            )
        except wandb.errors.Error as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"logger=wandb could not start a run ({first}); run `wandb login`, or set "
                f"logger.wandb.mode=offline (WANDB_MODE=offline) to log without an account"
            ) from None
        # Steps an earlier session may have sent (metrics.jsonl held them), or the server holds.
        skip = logged_through if continuing and logged_through is not None else -1
        self.skip_through = max(skip, self.run.step - 1)

    def write(self, record: dict) -> None:
        if record["step"] <= self.skip_through:
            return
        values = tracker_values(record)
        if values:
            self.run.log(values, step=record["step"])

    def flush(self) -> None:
        """W&B's own process writes and sends as the records come."""

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Loggers:
    """Every backend of a run, fed the same records in the same order: `metrics.jsonl` first, the
    record a resume trusts."""

    def __init__(self, backends: list):
        self.backends = backends

    def write(self, record: dict) -> None:
        for backend in self.backends:
            backend.write(record)

    def flush(self) -> None:
        """After a checkpoint: what was logged up to it is on disk, so a kill loses nothing before it."""
        for backend in self.backends:
            backend.flush()

    def close(self, failed: bool = False) -> None:
        for backend in self.backends:
            backend.close(failed)


def open_loggers(cfg, run_dir: Path, resume_step: int | None = None) -> Loggers:
    """Rank 0's loggers for the run in `run_dir`; `resume_step`: the checkpoint's step when resuming."""
    jsonl = MetricsLog(run_dir, resume_step=resume_step)
    backends: list = [jsonl]
    if cfg.logger.get("tensorboard") is not None:
        backends.append(TensorBoardLogger(cfg, run_dir, resume_step))
    if cfg.logger.get("wandb") is not None:
        backends.append(WandbLogger(cfg, run_dir, resume_step, jsonl.logged_through))
    return Loggers(backends)
