"""Running a check as stages: each one a process with its own timeout and log, under one deadline.

A stage that fails, hangs or cannot start is recorded as such and the next one runs, so one broken
path costs its own result and never the rest of the report. Nothing here imports torch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    timeout_s: float
    # Figures read once the process has ended (also a failed one): from its log text and its folder.
    read: Callable[[str, Path], dict] = lambda log, folder: {}
    env: Mapping[str, str] = field(default_factory=dict)


def last_lines(text: str, count: int = 5) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-count:]


def run_stage(stage: Stage, folder: Path, cwd: Path, env: Mapping[str, str], timeout_s: float) -> dict:
    """Run one stage; its result records how it ended, how long it took and what `read` found."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    started = time.monotonic()
    try:
        command = stage.command(folder)
    except NotRun as why:
        return {"status": why.status, "reason": str(why), "seconds": 0.0}
    log_path = folder / "log.txt"
    with log_path.open("w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        # A session of its own, so a timeout kills the whole tree (compile workers, torchrun ranks).
        process = subprocess.Popen(
            command, cwd=cwd, env={**env, **stage.env}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout_s)
            status = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
            status = "timed out"
    text = log_path.read_text(errors="replace").split("\n", 1)[1]  # what the process wrote
    result = {
        "status": status,
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "timeout_s": round(timeout_s, 1),
        "log": str(log_path.relative_to(cwd) if log_path.is_relative_to(cwd) else log_path),
    }
    try:
        result.update(stage.read(text, folder))
    except Exception as err:  # a figure that cannot be read is a result too, not the end of the check
        result["read_error"] = f"{type(err).__name__}: {err}"
    if status != "passed":
        result["last_lines"] = last_lines(text)
    return result


def run_stages(
    stages: list[Stage], work: Path, cwd: Path, env: Mapping[str, str], deadline_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, dict]:  # fmt: skip
    """Each stage in turn, in `work/<name>/`, with its timeout cut to what is left of `deadline_s`."""
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
            results[stage.name] = run_stage(stage, work / stage.name, cwd, env, min(stage.timeout_s, left))
        result = results[stage.name]
        print(f"{result['status']} ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return results
