"""Running a check as stages: each one a process with its own timeout and log, under one deadline.

A stage that fails, hangs or cannot start is recorded as such and the next one runs, so one broken
path costs its own result and never the rest of the report. An interrupt (Ctrl-C, SIGTERM) kills
the running stage's process tree, records that stage as interrupted and ends the run, so the stages
already finished are still reported. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpthf.errors import ConfigError

# A stage with less time than this left before the deadline is skipped rather than started to be killed.
MIN_STAGE_S = 15.0


class NotRun(Exception):
    """Raised by a stage's `command` when the stage cannot run here; `status` says how it is reported
    ("absent": what it checks is not installed; "skipped": what it needs is missing)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Stage:
    name: str
    # Built when the stage starts, so it can use what an earlier stage wrote (a checkpoint);
    # given the stage's own folder, emptied before the stage runs.
    command: Callable[[Path], list[str]]
    timeout_s: float  # the most it may take: a cap for a stage that hangs, not what it is expected to take
    # Figures read once the process has ended (also a failed one): from its log text and its folder.
    read: Callable[[str, Path], dict] = lambda log, folder: {}
    env: Mapping[str, str] = field(default_factory=dict)
    # Its share of the check's deadline as planned (what it should take on the GPU the check is for):
    # the default stages' shares add up to less than the deadline, so a first run fits it.
    planned_s: float = 0.0


INTERRUPTED = "interrupted"  # the status of the stage an interrupt stopped; the run ends there


def last_lines(text: str, count: int = 5) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-count:]


def run_stage(stage: Stage, folder: Path, cwd: Path, env: Mapping[str, str], timeout_s: float) -> dict:
    """Run one stage; its result records how it ended, how long it took and what `read` found.

    Raises `StageInterrupted` (carrying the result) when an interrupt arrives while the stage runs,
    after its process tree is killed: it runs in a session of its own, so the terminal's Ctrl-C
    reaches only this process, and nothing else would stop it."""
    with folder_errors(folder):
        if folder.exists():
            shutil.rmtree(folder)
        temp = folder / "tmp"  # the stage's TMPDIR: nothing it writes lands outside the checkout
        temp.mkdir(parents=True)
    started = time.monotonic()
    try:
        command = stage.command(folder)
    except NotRun as why:
        return {"status": why.status, "reason": str(why), "seconds": 0.0}
    log_path = folder / "log.txt"
    interrupted = None
    with folder_errors(folder), log_path.open("w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        # A session of its own, so a timeout kills the whole tree (compile workers, torchrun ranks).
        process = subprocess.Popen(
            command, cwd=cwd, env={**env, **stage.env, "TMPDIR": str(temp)}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout_s)
            status = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            code = process.wait()
            status = "timed out"
        except BaseException as err:  # an interrupt, or anything else: the stage must not outlive us
            _kill_tree(process)
            if not isinstance(err, KeyboardInterrupt):
                raise
            code, status, interrupted = process.wait(), INTERRUPTED, err
    with folder_errors(folder):
        text = log_path.read_text(errors="replace").split("\n", 1)[1]  # what the process wrote
    result = {
        "status": status,
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "timeout_s": round(timeout_s, 1),
        "log": str(log_path.relative_to(cwd) if log_path.is_relative_to(cwd) else log_path),
    }
    if interrupted is None:
        try:
            result.update(stage.read(text, folder))
        except Exception as err:  # a figure that cannot be read is a result too, not the end of the check
            result["read_error"] = f"{type(err).__name__}: {err}"
    if status != "passed":
        result["last_lines"] = last_lines(text)
    if interrupted is not None:
        raise StageInterrupted(result) from interrupted
    return result


class StageInterrupted(BaseException):
    """An interrupt while a stage ran (its process tree already killed); `result` is its record.
    A BaseException like KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, result: dict):
        super().__init__(INTERRUPTED)
        self.result = result


def _kill_tree(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def folder_errors(folder: Path) -> Iterator[None]:
    """An OSError preparing or reading a stage's folder (read-only, owned by another user, a file in
    its place) is the user's to fix: one error line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise ConfigError(
            f"cannot use the stage folder {folder} ({err.strerror or err}); make it and the folder above "
            "it writable by this user, or delete them"
        ) from None


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside it, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so a terminated check kills its
    running stage and writes what it has instead of dying with the stage left running."""
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stages(
    stages: list[Stage], work: Path, cwd: Path, env: Mapping[str, str], deadline_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, dict]:  # fmt: skip
    """Each stage in turn, in `work/<name>/`, with its timeout cut to what is left of `deadline_s`.
    An interrupt ends the run: the interrupted stage is recorded as such and the rest are not run."""
    started = clock()
    results = {}
    for number, stage in enumerate(stages, start=1):
        left = deadline_s - (clock() - started)
        print(f"[{number}/{len(stages)}] {stage.name} ...", end=" ", file=sys.stderr, flush=True)
        if left < MIN_STAGE_S:
            results[stage.name] = {
                "status": "skipped",
                "reason": f"out of time: the check's {deadline_s:.0f} s were spent",
                "seconds": 0.0,
            }
        else:
            began = time.monotonic()
            try:
                results[stage.name] = run_stage(
                    stage, work / stage.name, cwd, env, min(stage.timeout_s, left)
                )
            except StageInterrupted as stop:
                results[stage.name] = stop.result
            except KeyboardInterrupt:  # before its process started or after it ended
                results[stage.name] = {"status": INTERRUPTED, "seconds": round(time.monotonic() - began, 1)}
        result = results[stage.name]
        print(f"{result['status']} ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)
        if result["status"] == INTERRUPTED:
            break
    return results
