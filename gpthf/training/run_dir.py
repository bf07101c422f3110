"""Run folders and their locks: which folder a run writes to, and that no other process writes there.

A new run creates its folder `<output_dir>/<name>/<timestamp>[-N]/` with an exclusive `mkdir`, so two
runs started in the same second get two folders. The process then holds an advisory lock on the
folder's `.lock` file for its whole life (`fcntl.flock`: the kernel releases it on any exit, `kill -9`
included, so a dead run never leaves a stale lock). `resume=true` takes the same lock, and refuses a
run that a live process holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from gpthf.data.dataset import data_cache_key, data_identity, with_defaults
from gpthf.errors import ConfigError
from gpthf.training.checkpoint import FINAL, latest_checkpoint, read_meta, recover_interrupted_writes

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
# Keys of `train` that shape the optimisation: a resumed run must keep them (others, like
# log_every_steps or checkpoint_every_minutes, may change between sessions).
RESUME_FIXED_TRAIN_KEYS = (
    "batch_size", "lr", "weight_decay", "beta1", "beta2", "grad_clip", "schedule", "warmup_fraction",
    "cooldown_fraction", "max_tokens", "seed",
)  # fmt: skip


class RunLock:
    """An exclusive, non-blocking lock on a run folder, held until `release` or process exit."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.handle = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; runs are still kept apart by mkdir
            return
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"run {self.path.parent} is in use by {holder}; wait for it to finish or stop it, "
                f"then resume=true (or drop resume=true to start a new run)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"process {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else 'this host'}"
        )
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the flock
            self.handle = None


def create_run_dir(cfg) -> Path:
    """A new, empty run folder, created atomically (never one another process also uses)."""
    parent = Path(cfg.output_dir) / cfg.name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            run_dir = parent / (stamp if n == 0 else f"{stamp}-{n}")
            with contextlib.suppress(FileExistsError):
                run_dir.mkdir()
                return run_dir
    except OSError as err:
        raise ConfigError(
            f"cannot create a run folder under {parent} ({err.strerror}); set output_dir=A_WRITABLE_FOLDER"
        ) from None
    raise ConfigError(f"could not find a free run folder name under {parent}")


def find_run_to_resume(cfg) -> tuple[Path, Path]:
    """(run folder, checkpoint) of the newest run of `cfg.name` with a complete checkpoint."""
    runs = sorted((Path(cfg.output_dir) / cfg.name).glob("*/"))
    for run_dir in reversed(runs):
        if not (run_dir / CONFIG_FILE).is_file():
            continue  # a run that never got past its start, or one starting right now
        checkpoint = resumable_checkpoint(cfg, run_dir)
        if checkpoint is not None:
            return run_dir, checkpoint
    raise ConfigError(
        f"resume=true but no run of {cfg.name} under {cfg.output_dir} has a complete checkpoint"
    )


def resumable_checkpoint(cfg, run_dir: Path) -> Path | None:
    """The checkpoint `cfg` may resume in `run_dir` (None: it has none); refuses a finished run or
    one whose model, data or optimisation differ."""
    recover_interrupted_writes(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return None
    if checkpoint.name == FINAL:
        raise ConfigError(
            f"the newest run of {cfg.name}, {run_dir}, has already finished; drop resume=true to start a new one"
        )
    check_resumable(OmegaConf.load(run_dir / CONFIG_FILE), cfg, run_dir)
    return checkpoint


@dataclass
class RunClaim:
    """The folder this process trains in, locked for the process's life, and where it resumes from."""

    run_dir: Path
    lock: RunLock
    resume_from: Path | None  # None: a new run
    created: bool  # this process made the folder, so a failed start removes it whole

    def abandon(self) -> None:
        """A run that failed to start: a new run leaves nothing that looks like a run; unlock."""
        if self.resume_from is None:
            if self.created:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            else:  # a folder someone else made (hydra.run.dir, a sweep's job folder): keep their files
                (self.run_dir / CONFIG_FILE).unlink(missing_ok=True)
        self.lock.release()


def claim_run(cfg, folder: Path | None = None) -> RunClaim:
    """Lock the run folder before anything slow or anything else writes there: a new folder under
    `<output_dir>/<name>/`, the newest run of that name for `resume=true`, or the given `folder`
    (hydra.run.dir, a sweep's job folder), which must not hold another run unless resuming it."""
    if folder is None:
        run_dir, checkpoint = find_run_to_resume(cfg) if cfg.resume else (create_run_dir(cfg), None)
        created = not cfg.resume
    else:
        run_dir, checkpoint, created = Path(folder), None, not Path(folder).exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create the run folder {run_dir} ({err.strerror}); give a writable one"
            ) from None
    claim = RunClaim(run_dir, RunLock(run_dir), checkpoint, created)
    try:
        claim.lock.acquire()
        if folder is not None:
            if cfg.resume:
                has_config = (run_dir / CONFIG_FILE).is_file()
                claim.resume_from = resumable_checkpoint(cfg, run_dir) if has_config else None
                if claim.resume_from is None:
                    raise ConfigError(f"resume=true but {run_dir} holds no complete checkpoint to resume")
            elif (run_dir / CONFIG_FILE).is_file():
                raise ConfigError(
                    f"{run_dir} already holds a run; choose another hydra.run.dir, or add resume=true to continue it"
                )
        if claim.resume_from is not None:
            check_same_data(cfg, claim.resume_from)
        else:
            OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
    except BaseException:
        claim.lock.release()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return claim


def check_resumable(saved, cfg, run_dir: Path) -> None:
    """Refuse a resume whose model, data or optimisation differ from the run's own config."""
    if OmegaConf.to_container(saved.arch, resolve=True) != OmegaConf.to_container(cfg.arch, resolve=True):
        raise ConfigError(f"resume=true: arch differs from the run being resumed ({run_dir}); use its config")
    if data_identity(with_defaults(saved.data)) != data_identity(with_defaults(cfg.data)):
        raise ConfigError(f"resume=true: data differs from the run being resumed ({run_dir}); use its config")
    changed = [k for k in RESUME_FIXED_TRAIN_KEYS if saved.train.get(k) != cfg.train.get(k)]
    if changed:
        listing = ", ".join(f"train.{k}={saved.train.get(k)} (given {cfg.train.get(k)})" for k in changed)
        raise ConfigError(
            f"resume=true: {listing} differ from the run being resumed ({run_dir}); a resumed run keeps its "
            f"optimisation: drop the override(s) or start a new run"
        )


def check_same_data(cfg, checkpoint: Path) -> None:
    """A resumed run must read the data set it started with: the same cache key (config, corpus files,
    pipeline version). Checked before any data is prepared, so a changed corpus costs no rebuild."""
    saved = read_meta(checkpoint).get("data_cache")
    current = f"{cfg.data.name}-{data_cache_key(cfg.data)}"
    if saved is not None and saved != current:
        raise ConfigError(
            f"resume=true: the data set changed since this run started (data cache {saved}, now {current}: "
            f"the corpus files or the gpthf data pipeline differ); restore the corpus or start a new run"
        )
