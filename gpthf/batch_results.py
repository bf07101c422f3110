"""A batch job's results written as they finish, so a crash or Ctrl-C loses only the rows in flight.

Continuous batching finishes prompts out of order; `InputOrder` hands each result on as soon as every
earlier prompt's has gone, so output is in input order and streams. `BatchResults` appends them, one
JSON line each, flushed, to `PATH.partial`, whose first line names what produced them (checkpoint,
format, sampling settings). When every prompt is written, the results alone go to PATH (a temporary
file renamed into place) and the partial file is removed: PATH only ever exists complete.

Where the results may go (a symlink's target, a device, pipe or open file written straight as a
stream; a --batch-file the job would replace refused) is decided by `gpthf.batch_output`.

An interrupted job leaves its partial file; `resume=True` continues it: the results already written
are a prefix of the prompts, checked line by line against the prompts (same index, same text) and
the header against this run's settings, and only the rest is generated. A complete output is taken
as done only if `check_complete` finds one result per prompt, in order (it keeps no header, so
settings cannot be compared). A torn last line, as a kill
in mid-write leaves, is cut off. An exclusive lock on the partial file keeps a second process off the
same output (on systems with `fcntl`).

Cost: O(1) memory per written result; the waiting room holds the results that finished while an
earlier prompt still ran (at most what the slots finish during one row's generation). Resuming reads
the partial file once, a line at a time; completing copies it once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from gpthf.atomic import atomic_write, writing
from gpthf.batch_output import BatchResultsError, is_stream, job_output, partial_path

try:
    import fcntl
except ImportError:  # Windows: no lock; two processes on one output are the user's to avoid
    fcntl = None

HEADER_KEY = "gpthf_batch_job"  # the partial file's first line: {"gpthf_batch_job": {settings}}
# Settings a header records only since a later version: a job an older version started, whose header
# lacks them, is resumed without comparing them (any other difference is refused).
RECORDED_LATER = frozenset({"weights"})
class InputOrder:
    """Results arriving in any order, handed on in index order from `start`."""

    def __init__(self, start: int = 0):
        self.next = start
        self.waiting: dict[int, Any] = {}

    def add(self, index: int, item: Any) -> Iterator[tuple[int, Any]]:
        """Take result `index`; yield every result now due, in order."""
        self.waiting[index] = item
        while self.next in self.waiting:
            yield self.next, self.waiting.pop(self.next)
            self.next += 1


class BatchResults:
    """Writes result records for `prompts` to `path` through its partial file (see the module doc).
    `done` prompts (a prefix) are already written when resuming; `write` takes the rest in order."""

    def __init__(self, path: Path, prompts: list[str], settings: dict, resume: bool):
        self.path = job_output(path, resume)
        self.stream = is_stream(self.path)
        self.partial = None if self.stream else partial_path(self.path)
        self._lines = self.path if self.stream else self.partial  # where each result goes at once
        self.prompts = prompts
        try:  # "a+": opening never truncates, so a live job's file survives until the lock is tried;
            # a stream is appended to, so a shell's `>> log.txt` behind /dev/stdout keeps its lines
            self._file: TextIO = open(self._lines, "a" if self.stream else "a+", encoding="utf-8")
        except OSError as err:
            raise BatchResultsError(
                f"cannot write {self._lines} ({err.strerror}); give a writable --output"
            ) from None
        if self.stream:  # nothing to lock, check or continue: a stream is only written
            self.done = self.written = 0
            return
        try:
            self._lock()
            self.done = self._continue(settings, resume)  # results there before this run
            self.written = self.done
        except BaseException:
            with contextlib.suppress(OSError):  # a header a full disk refused is still buffered
                self._file.close()
            raise

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchResultsError(
                f"another process is writing {self.partial}; wait for it to finish or give another --output"
            ) from None

    def _continue(self, settings: dict, resume: bool) -> int:
        """Results already in the partial file (0 for a new job), after checking they belong to this one."""
        self._file.seek(0)
        header = self._file.readline()
        if not header.endswith("\n"):  # new, or killed while writing its header
            return self._start_over(settings)
        good_end, done, number = self._file.tell(), 0, 1
        while line := self._file.readline():  # readline, not iteration: iteration disables tell()
            number += 1
            record = _parse(line)
            if record is None and not self._file.readline():  # the last line, torn by a kill
                break
            if not resume:
                raise BatchResultsError(
                    f"{self.partial} holds results of an unfinished run; add --resume to continue it, "
                    "or delete it to start over"
                )
            if done == 0:
                self._check_header(header, settings)
            if record is None or record.get("index") != done:
                raise BatchResultsError(
                    f"line {number} of {self.partial} is not result {done} of a batch job; delete the file to start over"
                )
            if done >= len(self.prompts):
                raise BatchResultsError(
                    f"{self.partial} holds more results than the {len(self.prompts)} prompts given; "
                    "give the same --batch-file, another --output, or delete it to start over"
                )
            if record.get("prompt") != self.prompts[done]:
                raise BatchResultsError(
                    f"{self.partial} was written for other prompts (line {number}: prompt {done} differs "
                    "from the --batch-file's); give the same file, another --output, or delete it to start over"
                )
            done += 1
            good_end = self._file.tell()
        if done == 0:
            return self._start_over(settings)
        self._file.truncate(good_end)
        return done

    def _check_header(self, header: str, settings: dict) -> None:
        then = (_parse(header) or {}).get(HEADER_KEY)
        if not isinstance(then, dict):
            raise BatchResultsError(
                f"{self.partial} is not a gpthf batch job's file; delete it or give another --output"
            )
        keys = (settings.keys() | then.keys()) - (RECORDED_LATER - then.keys())
        changed = sorted(key for key in keys if settings.get(key) != then.get(key))
        if changed:
            detail = ", ".join(f"{key} {then.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
            raise BatchResultsError(
                f"{self.partial} was generated with other settings ({detail}); rerun with those, "
                "or delete it to start over"
            )

    def _start_over(self, settings: dict) -> int:
        """A new partial file: the header alone. A disk too full for it leaves no partial file."""
        try:
            with writing(self.partial, kept="no results were written"):
                self._file.truncate(0)
                self._file.write(json.dumps({HEADER_KEY: settings}) + "\n")
                self._file.flush()
        except BaseException:
            with contextlib.suppress(OSError):  # the refused header is still buffered
                self._file.close()
            self.partial.unlink(missing_ok=True)  # it held no results: a new or a header-only file
            raise
        return 0

    def write(self, index: int, prompt: str, completion: str, tokens: list[int], reason: str) -> None:
        """Append result `index`, the next one due (`InputOrder` sees to the order)."""
        if index != self.written:
            raise ValueError(f"result {index} written where {self.written} is due")
        record = {"index": index, "prompt": prompt, "completion": completion}
        record.update(new_tokens=len(tokens), finish_reason=reason)
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()  # a killed process keeps every line written before it
        except OSError as err:  # a full disk: what is written stays, --resume continues once there is room
            raise BatchResultsError(f"cannot write {self._lines} ({err.strerror})") from None
        self.written += 1

    def finish(self) -> None:
        """Every prompt written: the results alone become `path`, the partial file goes."""
        if self.written != len(self.prompts):
            raise BatchResultsError(
                f"{self.written} of {len(self.prompts)} results written; nothing to finish yet"
            )
        if self.stream:
            try:
                self._file.close()  # the last buffered bytes: a full /dev/full says so here
            except OSError as err:
                raise BatchResultsError(f"cannot write --output {self.path} ({err.strerror})") from None
            return

        def copy_results(final: Path) -> None:
            self._file.seek(0)
            self._file.readline()  # the header stays behind
            with open(final, "w", encoding="utf-8") as out:
                for line in self._file:
                    out.write(line)

        # A failure is a WriteFailed saying the results stay in the partial file; a caller that
        # says how to go on retells it with `keeping(self.kept())`.
        atomic_write(self.path, copy_results, kept=f"the results stay in {self.partial}")
        self.partial.unlink(missing_ok=True)
        self.close()

    def kept(self) -> str:
        """What an unfinished job leaves behind, and how to go on from there."""
        done = f"{self.written:,} of {len(self.prompts):,} results"
        if self.stream:
            return f"{done} went to {self.path}, a stream that cannot be resumed; run the job again"
        return f"{done} kept in {self.partial}; the same command with --resume continues from there"

    def close(self) -> None:
        """Release the file (and its lock); results written stay, a file holding none goes."""
        if self.written == 0 and not self.stream:
            self.partial.unlink(missing_ok=True)
        try:
            self._file.close()
        except OSError:  # the line a full disk refused is still buffered; its torn start is cut on --resume
            pass


def check_complete(path: Path, prompts: list[str]) -> None:
    """Refuse to take `path`, a complete output (no partial file beside it), as the results of
    `prompts` unless it holds one result per prompt, in order, each naming its prompt: it may be
    another batch file's. Read a line at a time, up to the first difference."""
    problem, count = None, 0
    try:
        with open(path, encoding="utf-8") as lines:
            for count, line in enumerate(lines, start=1):
                record = _parse(line)
                if record is None or record.get("index") != count - 1:
                    problem = f"line {count} is not result {count - 1} of a batch job"
                elif count > len(prompts):
                    problem = f"it holds more results than the {len(prompts):,} prompts given"
                elif record.get("prompt") != prompts[count - 1]:
                    problem = f"line {count}: prompt {count - 1} differs from the --batch-file's"
                if problem:
                    break
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not UTF-8 text"
        raise BatchResultsError(f"cannot read --output {path} ({reason}); give another --output") from None
    if problem is None and count < len(prompts):
        problem = f"it holds {count:,} results for {len(prompts):,} prompts"
    if problem:
        raise BatchResultsError(
            f"--output {path} holds the results of other prompts ({problem}); give another --output, "
            "or drop --resume to replace it with this job's results"
        )


def _parse(line: str) -> dict | None:
    if not line.endswith("\n"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
