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

from gpthf.atomic import atomic_write
from gpthf.data.dataset import data_cache_key, data_identity, with_defaults
from gpthf.errors import ConfigError
from gpthf.training.checkpoint import FINAL, latest_checkpoint, read_meta, recover_interrupted_writes
from gpthf.training.metrics import LOSS_PLOT, METRICS_FILE

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
OUTCOME_FILE = "outcome.json"  # in every sweep job's folder: how the job ended
# Keys of `train` that shape the optimisation: a resumed run must keep them (others, like
# log_every_steps or checkpoint_every_minutes, may change between sessions).
RESUME_FIXED_TRAIN_KEYS = (
    "batch_size", "lr", "weight_decay", "beta1", "beta2", "grad_clip", "schedule", "warmup_fraction",
    "cooldown_fraction", "max_tokens", "seed",
)  # fmt: skip


class RunInUse(ConfigError):
    """The run folder's lock is held by a live process (`holder` says which)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


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
        try:  # never through a symlink: the lock file is the run's own, and its text is rewritten
            handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
        except OSError as err:
            raise ConfigError(
                f"cannot lock run folder {self.path.parent} ({err.strerror}): a run needs a folder it can "
                f"write; free space, make it writable or set output_dir / hydra.run.dir elsewhere"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunInUse(
                f"run {self.path.parent} is in use by {holder}; wait for it to finish or stop it, "
                f"then resume=true (or drop resume=true to start a new run)",
                holder,
            ) from None
        with contextlib.suppress(OSError):  # who holds it, for the refusal above; a full disk skips it
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"process {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else 'this host'}"
            )
            handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(OSError):
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


def find_run_to_resume(cfg) -> tuple[Path, Path, RunLock]:
    """(run folder, checkpoint, its held lock) of the newest run of `cfg.name` with a complete
    checkpoint. Each run is locked before it is looked into: recovering a killed write removes
    staging folders, which in a live run are the checkpoint it is writing."""
    runs = sorted((Path(cfg.output_dir) / cfg.name).glob("*/"))
    for run_dir in reversed(runs):
        if not (run_dir / CONFIG_FILE).is_file():
            continue  # a run that never got past its start, or one starting right now
        lock = RunLock(run_dir)
        try:
            lock.acquire()  # a live run: refused here, before anything in it is touched
        except RunInUse:
            if latest_checkpoint(run_dir) is None:
                continue  # a live run with nothing to resume yet: an older run may be the one meant
            raise
        try:
            checkpoint = resumable_checkpoint(cfg, run_dir)
        except BaseException:
            lock.release()
            raise
        if checkpoint is not None:
            return run_dir, checkpoint, lock
        lock.release()
    raise ConfigError(
        f"resume=true but no run of {cfg.name} under {cfg.output_dir} has a complete checkpoint"
    )


def resumable_checkpoint(cfg, run_dir: Path) -> Path | None:
    """The checkpoint `cfg` may resume in `run_dir` (None: it has none); refuses a finished run or
    one whose model, data or optimisation differ. Call it only with the run's lock held."""
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


# What hydra or a sweep puts into a run folder besides the run itself (`.hydra/`, the job's log, the
# job's outcome) and the lock: a given folder holding only these is free for a run.
HYDRA_OWN_FILES = (".hydra", LOCK_FILE, OUTCOME_FILE)
# What a run writes into its folder: an attempt killed before its first checkpoint leaves only
# these, and a continued sweep starts that job again from scratch.
TENSORBOARD_DIR = "tensorboard"  # logger=tensorboard's event files
WANDB_DIR = "wandb"  # logger=wandb's run files (offline runs too)
WANDB_ID_FILE = "wandb_run_id"  # the W&B run a resume continues
# What a run writes into its folder: what a restart from scratch of that folder clears.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, LOSS_PLOT, "checkpoints", TENSORBOARD_DIR, WANDB_DIR, WANDB_ID_FILE)


def _foreign_files(folder: Path) -> list[str]:
    """Names in `folder` that hydra did not put there: in a folder holding no run, the user's own."""
    return sorted(p.name for p in folder.iterdir() if p.name not in HYDRA_OWN_FILES and p.suffix != ".log")


@dataclass
class RunClaim:
    """The folder this process trains in, locked, and where it resumes from. Whoever took it holds it
    as a context manager for the run's life (`with claim_run(cfg) as claim: train(cfg, claim=claim)`);
    leaving it unlocks the folder and, for a run that never started (`started` unset: it failed, or
    was never run, before its data, model and saved state were ready), leaves nothing that looks like
    a run."""

    run_dir: Path
    lock: RunLock
    resume_from: Path | None  # None: a new run
    created: bool  # this process made the folder, so a failed start removes it whole
    started: bool = False  # set by the trainer once the run is built: from then on its files stay

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.started and self.resume_from is None:
            if self.created:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            else:  # a folder someone else made (hydra.run.dir, a sweep's job folder): keep their files
                (self.run_dir / CONFIG_FILE).unlink(missing_ok=True)
        self.lock.release()


def claim_run(cfg, folder: Path | None = None, continue_job: bool = False) -> RunClaim:
    """Lock the run folder before anything slow or anything else writes there: a new folder under
    `<output_dir>/<name>/`, the newest run of that name for `resume=true`, or the given `folder`
    (hydra.run.dir, a sweep's job folder). A given folder must be new, empty but for hydra's own
    files, or hold this run when resuming; `continue_job` (a rerun sweep's job): resume the run the
    folder holds where it has a checkpoint, else start it again. Nothing is written or removed
    before the lock is held, and a refusal leaves nothing behind."""
    if folder is None and cfg.resume:
        run_dir, checkpoint, lock = find_run_to_resume(cfg)
        claim = RunClaim(run_dir, lock, checkpoint, created=False)
        try:
            check_same_data(cfg, checkpoint)
        except BaseException:
            lock.release()
            raise
        return claim
    if folder is None:
        run_dir, created = create_run_dir(cfg), True
    else:
        run_dir = Path(folder)
        created = not run_dir.exists()
        if not created:
            _check_folder_is_free(run_dir, resuming=cfg.resume or continue_job)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create the run folder {run_dir} ({err.strerror}); give a writable one"
            ) from None
    made_lock, locked = not (run_dir / LOCK_FILE).exists(), False
    claim = RunClaim(run_dir, RunLock(run_dir), None, created)
    try:
        claim.lock.acquire()  # refused: someone else's lock, which is left alone
        locked = True
        # again: nobody else can start a run here now
        _check_folder_is_free(run_dir, resuming=cfg.resume or continue_job)
        if (run_dir / CONFIG_FILE).is_file():
            claim.resume_from = resumable_checkpoint(cfg, run_dir)
            if claim.resume_from is None and continue_job:  # killed before its first checkpoint
                for name in RUN_FILES:
                    path = run_dir / name
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
        if cfg.resume and not continue_job and claim.resume_from is None:
            raise ConfigError(f"resume=true but {run_dir} holds no complete checkpoint to resume")
        if claim.resume_from is not None:
            check_same_data(cfg, claim.resume_from)
        else:  # whole or not at all: a torn config.yaml would make the folder look like a run
            atomic_write(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    except BaseException:
        claim.lock.release()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        elif made_lock and locked:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
        raise
    return claim


def _check_folder_is_free(run_dir: Path, resuming: bool) -> None:
    """A given run folder that holds another run (unless resuming it) or the user's own files is
    refused before anything is written into it."""
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} is a file; give a folder")
    if (run_dir / CONFIG_FILE).is_file():
        if resuming:
            return
        raise ConfigError(
            f"{run_dir} already holds a run; choose another hydra.run.dir, or add resume=true to continue it"
        )
    foreign = _foreign_files(run_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(
            f"{run_dir} is not empty and holds no run ({shown}); a run would write over files there: "
            f"give a new or empty folder as hydra.run.dir"
        )


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
    saved = read_meta(checkpoint).data_cache
    current = f"{cfg.data.name}-{data_cache_key(cfg.data)}"
    if saved is not None and saved != current:
        raise ConfigError(
            f"resume=true: the data set changed since this run started (data cache {saved}, now {current}: "
            f"the corpus files or the gpthf data pipeline differ); restore the corpus or start a new run"
        )
