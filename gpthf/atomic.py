"""Writing files whole or not at all, and a failed write (a full disk) as one error naming what was kept.

A file a reader trusts (a tokenizer, a result, a plot, a rewritten metrics log) is written to a
temporary file in its own folder, flushed to disk and renamed over its name: a reader sees the old
file or the new one, never a torn one, and a failed write leaves the old one and no temporary file.
A log that grows (metrics.jsonl) gets each record appended whole or not at all.

A full disk, a quota or a file-size limit must not end a run with a library's traceback: every
writer turns its `OSError` into `WriteFailed`, which names the file, says to free space and says
what the user still has (`kept`); a caller that knows more (the trainer knows the last checkpoint)
retells it with `keeping`. Writers whose library reports a failed write as another exception type
(torch's RuntimeError, safetensors' SafetensorError) translate it to `OSError` where they call it.
Nothing here imports torch, so every layer of gpthf can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gpthf.errors import GpthfError

# Errors that mean "the disk (or the user's share of it) is full": what to do is to free space.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class WriteFailed(GpthfError):
    """A file could not be written; nothing half-written is left where a reader would trust it."""

    def __init__(self, what: str, reason: str, todo: str, kept: str):
        self.what, self.reason, self.todo, self.kept = what, reason, todo, kept
        super().__init__(f"could not write {what} ({reason}; {todo}); {kept}")

    def keeping(self, kept: str) -> WriteFailed:
        """The same failure, told with what a caller that knows more has kept."""
        return type(self)(self.what, self.reason, self.todo, kept)


def write_failure(err: OSError, what: str | Path, kept: str) -> WriteFailed:
    """`err`, raised while writing `what`, as a `WriteFailed` saying what to do about it."""
    if err.errno in _NOT_WRITABLE:
        todo = "make the folder writable or write elsewhere"
    elif err.errno is None or err.errno in _NO_SPACE:  # numpy's short writes carry no errno
        todo = "free space there or write elsewhere"
    else:
        todo = "check the disk"
    reason = err.strerror or str(err) or type(err).__name__
    return WriteFailed(str(what), " ".join(reason.split()), todo, kept)


@contextlib.contextmanager
def writing(what: str | Path, kept: str = "nothing else was changed") -> Iterator[None]:
    """Inside it, an `OSError` becomes `WriteFailed` naming `what` and `kept` (one already raised by
    an inner writer goes through as it is)."""
    try:
        yield
    except OSError as err:
        raise write_failure(err, what, kept) from None


def _fsync(path: Path) -> None:
    """`path`'s content on disk: a file's, or every file's under a folder."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        with file.open("rb") as f:
            os.fsync(f.fileno())


def set_aside_path(target: Path) -> Path:
    """Where `move_into_place` keeps an older folder at `target` while its replacement is renamed in."""
    return target.parent / f".{target.name}.old-{os.getpid()}"


def move_into_place(staged: Path, target: Path, replace: bool = True) -> Path:
    """The one way a file or folder a reader trusts appears: `staged`, written whole beside `target`
    (on its file system), is flushed to disk and renamed to `target`. A file replaces an older one in
    one rename. A folder cannot: an older one is renamed aside (`set_aside_path`) and removed after,
    and a process killed between the two renames leaves it for `restore_set_aside` to put back.
    `replace=False`: an existing `target` wins (`FileExistsError`; `staged` is left to the caller)."""
    staged, target = Path(staged), Path(target)
    _fsync(staged)
    if not replace and target.exists():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    if staged.is_dir() and target.exists():
        old = set_aside_path(target)
        target.rename(old)
        staged.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)
    return target


def restore_set_aside(folder: Path) -> None:
    """Undo what a process killed inside `move_into_place` left in `folder`: a folder set aside is put
    back when its replacement never arrived, and removed when it did."""
    for old in Path(folder).glob(".*.old-*"):
        target = old.parent / old.name[1:].rsplit(".old-", 1)[0]
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(target)


def temporary_path(path: str | Path) -> Path:
    """Where `atomic_write` writes `path`'s new content before renaming it into place (beside it, so
    the rename stays on one file system; hidden, and not ending in its suffix)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(
    path: str | Path, content: str | bytes | Callable[[Path], object], kept: str | None = None
) -> Path:
    """Write `content` (text as UTF-8, bytes, or a function writing the file at the path it is given)
    to `path` whole or not at all. The temporary name does not end in `path`'s suffix, so no reader
    globbing for `*.json` takes it for a result (a writer that picks a format by suffix, such as
    matplotlib's `savefig`, must be given the format). `kept`: what the user still has if it fails;
    by default the previous file, or nothing."""
    path = Path(path)
    tmp = temporary_path(path)
    if kept is None:
        kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
    try:
        with writing(path, kept):
            if isinstance(content, str):
                tmp.write_text(content, encoding="utf-8")
            elif isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                content(tmp)
            move_into_place(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def save_figure(fig: Any, path: str | Path, kept: str | None = None, dpi: int = 120) -> Path:
    """A matplotlib figure saved as `path` (PNG) through `atomic_write`; by default a plot written
    beside its results says that the results (`path` with `.json`) are written."""
    path = Path(path)
    kept = kept if kept is not None else f"{path.with_suffix('.json')} is written"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), kept)


def append_whole(path: str | Path, text: str, kept: str | None = None) -> None:
    """Append `text` (a record, ending with its newline) to `path`; a write that fails is cut back
    off, so the file never ends in a torn record."""
    path = Path(path)
    data = text.encode("utf-8")
    with writing(path, kept or f"{path.name} holds every record before this one"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
