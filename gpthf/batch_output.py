"""Where a batch job's results may go, decided before any work: the --output a job writes (a
symlink followed to its target; a character device, FIFO or already-open file such as /dev/stdout
written straight as a stream), what is refused (a folder, a socket, a block device, --resume into a
stream), and a --batch-file the job would replace, remove or append to, by whatever path it is named.
`gpthf.batch_results` writes the results there.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from gpthf.atomic import temporary_path
from gpthf.errors import GpthfError

# A link to a process's open file: what /dev/stdout, /dev/stderr and /dev/fd/N lead to on Linux
# (/dev/fd/N itself on macOS). Opening it reaches whatever the descriptor holds, a plain file too.
_OPEN_FILE_LINK = re.compile(r"/proc/[^/]+/(task/[^/]+/)?fd/[^/]+|/dev/fd/[^/]+")
_MAX_LINKS = 40  # as the kernel's limit on symlinks followed in one path


class BatchResultsError(GpthfError):
    """An output file that this job cannot write or continue."""


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def is_stream(path: Path) -> bool:
    """A character device, a FIFO, or a file reached through an open descriptor (/dev/stdout with
    the shell's stdout a plain file): none can be renamed onto, so results are appended straight
    into it, as with a shell's `>>`."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        return True
    return (mode is None or stat.S_ISREG(mode)) and _through_open_file(path)


def _through_open_file(path: Path) -> bool:
    """Whether resolving `path` one name at a time passes through a link to an open descriptor
    (/proc/PID/fd/N, /dev/fd/N), as /dev/stdout, /proc/self/fd/1 or a symlink to either does."""
    done, todo, links = Path("/"), list((Path.cwd() / path).parts[1:]), 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            done = done.parent
            continue
        here = done / name
        if _OPEN_FILE_LINK.fullmatch(str(here)):
            return True
        try:
            target = Path(os.readlink(here))
        except OSError:  # not a link, or not there: the name stands for itself
            done = here
            continue
        links += 1
        if links > _MAX_LINKS:  # a loop: job_output reports it
            return False
        if target.is_absolute():
            done = Path("/")
        todo[:0] = target.parts[1:] if target.is_absolute() else target.parts
    return False


def job_output(path: Path, resume: bool = False) -> Path:
    """The file a job given --output `path` writes: `path`, or a symlink's target (so the link is
    left pointing at the fresh results, not at stale ones behind a replaced link). Refused before any
    work: what cannot hold results, and --resume into a stream, which keeps no partial file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:  # a new file, or a symlink to one
        mode = None
    except OSError as err:  # a symlink loop, a file used as a folder
        raise BatchResultsError(
            f"cannot use --output {path} ({err.strerror}); give a file name in a writable folder"
        ) from None
    if mode is not None and stat.S_ISDIR(mode):
        raise BatchResultsError(f"--output {path} is a folder; give a file name (results.jsonl)")
    if is_stream(path):
        if mode is None:
            raise BatchResultsError(
                f"--output {path} names a file descriptor that is not open; give a file name"
            )
        if resume:
            raise BatchResultsError(
                f"--output {path} is a device, pipe or open file, written straight with no partial file "
                "to resume from; drop --resume to run the job again"
            )
        return path  # opened by the name given: /dev/stdout is whatever stdout is now
    if mode is not None and not stat.S_ISREG(mode):
        raise BatchResultsError(
            f"--output {path} is neither a file, a character device nor a FIFO (a socket or block "
            "device); give a file name"
        )
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: by device and inode where both exist (hard links, symlinks,
    `..`, case-insensitive names), else by their resolved paths."""
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def check_batch_file(batch_file: Path, output: Path) -> None:
    """Refuse a --batch-file that a job writing `output` (from `job_output`) would replace or remove:
    the output, its partial file or its temporary file, by any path; or a stream that is the batch
    file itself (/proc/self/fd/N of it), which the results would be appended to."""
    if is_stream(output):
        written = {"--output": output} if os.path.isfile(output) else {}
    else:
        written = {
            "--output": output,
            "--output's partial file": partial_path(output),
            "--output's temporary file": temporary_path(output),
        }
    for role, path in written.items():
        if same_file(batch_file, path):
            named = "" if os.path.abspath(batch_file) == os.path.abspath(path) else f" ({batch_file})"
            raise BatchResultsError(
                f"{role} {path} is the --batch-file itself{named}; give another file for the results"
            )
