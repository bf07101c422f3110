"""Lazy readers of local corpus files: one record at a time, whatever the size of the file.

A malformed record (a line that is not JSON, a missing or non-string text field, bytes that do not
decode) is skipped and counted in `SkippedRecords` rather than stopping a build of hours at its 10
millionth line; the build warns once at the end, and refuses only when nothing usable is left. A file
that cannot be read or decoded at all, or stops decoding part way (corrupt or truncated compression, a
damaged parquet page, a zero-byte archive, plain text under a compressed name), is handled the same
way by one guard, `file_documents`, whatever its format: the documents read before the damage are
kept, the file is counted once as unreadable, and the build goes on with the next file.

A `.txt` file is one document; a file larger than `TXT_BLOCK_BYTES` is read as several documents, cut
at paragraph breaks, so a single 40 GB text file streams in bounded memory (each block closes with <eod>).
"""

from __future__ import annotations

import errno
import json
import lzma
import os
import stat
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpthf.data.compressed import COMPRESSIONS, open_decompressed
from gpthf.errors import DataError

TXT_BLOCK_BYTES = 8 << 20  # a .txt file is cut into documents of about this size at paragraph breaks
PARQUET_BATCH_ROWS = 1024

# Why a record was skipped, and what the user can do about it (printed in the warning and in errors).
SKIP_HINTS = {
    "not JSON": "fix or drop those lines",
    "no text field": "set data.text_field to the field that holds the text",
    "text not a string": "the text field must hold a string",
    "empty text": "",
    "undecodable": "convert it, e.g. `iconv -f latin1 -t utf-8`, or set data.encoding to its real encoding",
    "binary": "give text files",
    "unreadable": "check the file; replace it if it is damaged (what was read before the damage is kept)",
    "not a regular file": "point the name at a real file, or remove it",
}


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable name, used for the deterministic train/validation/test split
    text: str
    sentences: tuple[str, ...] | None = None  # already split (a piece of a tiny corpus); else None


@dataclass
class SkippedRecords:
    """Counts of skipped records by reason, with where each reason was first seen."""

    counts: Counter = field(default_factory=Counter)
    first_seen: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, where: str, count: int = 1) -> None:
        self.counts[reason] += count
        self.first_seen.setdefault(reason, where)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def describe(self, include_empty: bool = False) -> str:
        """One line: '3 not JSON (first at a.jsonl:7; fix or drop those lines), ...'."""
        parts = []
        for reason, count in sorted(self.counts.items()):
            if reason == "empty text" and not include_empty:
                continue
            hint = SKIP_HINTS.get(reason, "")
            parts.append(
                f"{count:,} {reason} (first at {self.first_seen[reason]}{'; ' + hint if hint else ''})"
            )
        return ", ".join(parts)

    @property
    def malformed(self) -> int:
        return sum(n for reason, n in self.counts.items() if reason != "empty text")


def local_files(path: str | None) -> tuple[Path, list[Path]]:
    """(root, the corpus files under it in a stable order): every path whose name is a corpus file's,
    even one that is not a regular file (a dangling symlink, a FIFO, a folder), which `file_documents`
    counts rather than opens; `regular_file` tells them apart."""
    if not path:
        raise DataError(f"data.source=local needs data.path=FILE_OR_DIR ({'/'.join(LOCAL_SUFFIXES)})")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(
            f"data.path {root} does not exist; use data=default (the embedded King James Bible) "
            f"or data=local data.path=FILE_OR_DIR ({'/'.join(LOCAL_SUFFIXES)})"
        )
    files = [root] if not root.is_dir() else sorted(root.rglob("*"))
    files = [p for p in files if p.name.endswith(LOCAL_SUFFIXES)]
    if not files:
        raise DataError(f"no {'/'.join(LOCAL_SUFFIXES)} files under {root}")
    return root, files


def _not_regular(path: Path) -> str | None:
    """Why `path` is not a regular file that can be read without blocking, or None when it is one.
    Only stats it (following symlinks): a FIFO is never opened, as opening it would wait for a writer."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:  # a dangling symlink, a symlink loop, no permission to look
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        return "a dangling symlink" if path.is_symlink() else _first_line(err)
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    return next((kind for is_kind, kind in kinds.items() if is_kind(mode)), "a device")


def regular_file(path: Path) -> bool:
    return _not_regular(path) is None


def file_name(root: Path, path: Path) -> str:
    """A file's name relative to data.path, so document ids (and so the split) do not depend on
    where the corpus folder lives."""
    return path.name if root == path else path.relative_to(root).as_posix()


def record_document(record: Any, text_field: str, where: str, skipped: SkippedRecords) -> Document | None:
    """One JSON line's or hub row's document, or None (counted) when it holds no usable text."""
    if not isinstance(record, dict) or text_field not in record:
        skipped.skip("no text field", where)
        return None
    text = text_record(record[text_field], where, skipped)
    return None if text is None else Document(where, text)


def text_record(value: Any, where: str, skipped: SkippedRecords) -> str | None:
    """The text of one record's field, or None (counted) when it is not usable text."""
    if not isinstance(value, str):
        skipped.skip("text not a string", where)
        return None
    if not value.isascii():
        try:
            value.encode("utf-8")  # a lone surrogate (`"\\ud800"` in JSON) is text no file can hold
        except UnicodeEncodeError as err:
            skipped.skip("undecodable", f"{where} (lone surrogate {value[err.start]!a})")
            return None
    if not value.strip():
        skipped.skip("empty text", where)
        return None
    return value


def _safe_cut(buffer: bytes) -> int:
    """Where to cut a text buffer into documents: the last paragraph break, else the last line break,
    else the end (moved back off a UTF-8 continuation byte)."""
    for separator in (b"\n\n", b"\n"):
        cut = buffer.rfind(separator)
        if cut > 0:
            return cut + len(separator)
    cut = len(buffer)
    while cut > 0 and buffer[cut - 1] & 0xC0 == 0x80:
        cut -= 1
    return cut or len(buffer)


def txt_documents(path: Path, name: str, encoding: str, skipped: SkippedRecords) -> Iterator[Document]:
    """One document per file; larger files as `name#k` blocks of about TXT_BLOCK_BYTES."""
    one_block = path.stat().st_size <= TXT_BLOCK_BYTES
    with path.open("rb") as handle:
        pending, block = b"", 0
        while True:
            data = handle.read(TXT_BLOCK_BYTES)
            buffer = pending + data
            if not buffer:
                return
            cut = len(buffer) if not data else _safe_cut(buffer)
            raw, pending = buffer[:cut], buffer[cut:]
            where = name if one_block else f"{name}#{block}"
            if b"\x00" in raw:
                skipped.skip("binary", f"{where} (NUL bytes)")
                return
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as err:
                skipped.skip(
                    "undecodable", f"{where} byte {raw[err.start]:#04x} at {err.start} as {encoding}"
                )
                return
            if text.strip():
                yield Document(where, text)
            block += 1


def jsonl_documents(
    path: Path, name: str, text_field: str, encoding: str, skipped: SkippedRecords
) -> Iterator[Document]:
    """One document per JSON line (plain or compressed), read line by line."""
    with open_decompressed(path) as lines:
        for lineno, raw in enumerate(lines, start=1):
            where = f"{name}:{lineno}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode(encoding))
            except UnicodeDecodeError:
                skipped.skip("undecodable", where)
                continue
            except (ValueError, RecursionError):  # bad syntax, an integer over 4300 digits, deep nesting
                skipped.skip("not JSON", where)
                continue
            document = record_document(record, text_field, where, skipped)
            if document is not None:
                yield document


def parquet_documents(path: Path, name: str, text_field: str, skipped: SkippedRecords) -> Iterator[Document]:
    """One document per row, read in batches of rows of the text column only."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
        skipped.skip("no text field", f"{name}:0", count=table.metadata.num_rows)
        return
    row = 0
    for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            text = text_record(value, f"{name}:{row}", skipped)
            if text is not None:
                yield Document(f"{name}:{row}", text)
            row += 1


Reader = Callable[[Path, str, Any, SkippedRecords], Iterator[Document]]

# The reader of each local file kind, by how the file's name ends (first match wins).
READERS: dict[tuple[str, ...], Reader] = {
    (".txt",): lambda path, name, cfg, skipped: txt_documents(path, name, cfg.encoding, skipped),
    (".parquet",): lambda path, name, cfg, skipped: parquet_documents(path, name, cfg.text_field, skipped),
    (".jsonl", *(f".jsonl{c}" for c in COMPRESSIONS)): lambda path, name, cfg, skipped: jsonl_documents(
        path, name, cfg.text_field, cfg.encoding, skipped
    ),
}
LOCAL_SUFFIXES: tuple[str, ...] = tuple(suffix for suffixes in READERS for suffix in suffixes)

# Errors that mean "this file cannot be read or decoded (any more)": the OS's, the stdlib decoders'
# (gzip's BadGzipFile is an OSError, a truncated stream an EOFError), and, matched by class name so
# that neither optional library is imported just to catch its errors, zstandard's and pyarrow's.
_FILE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
_FILE_ERROR_NAMES = {"ZstdError", "ArrowException"}


def is_damaged_file_error(err: BaseException) -> bool:
    """Whether `err` says a file is unreadable, corrupt or truncated (rather than a bug or a user's
    setting, which must still stop the run)."""
    return isinstance(err, _FILE_ERRORS) or any(
        cls.__name__ in _FILE_ERROR_NAMES for cls in type(err).__mro__
    )


def file_documents(path: Path, name: str, data_cfg: Any, skipped: SkippedRecords) -> Iterator[Document]:
    """The documents of one local file, read by its kind's reader under one guard: a file that
    cannot be opened or stops decoding part way is counted once as unreadable (documents read
    before the damage are kept) and the stream goes on with the next file."""
    reader = next(read for suffixes, read in READERS.items() if path.name.endswith(suffixes))
    why = _not_regular(path)
    if why is not None:
        skipped.skip("not a regular file", f"{name} ({why})")
        return
    try:
        yield from reader(path, name, data_cfg, skipped)
    except Exception as err:
        if not is_damaged_file_error(err):
            raise
        skipped.skip("unreadable", f"{name} ({_first_line(err)})")


def _first_line(err: BaseException) -> str:
    """A short reason for a file error: the OS's wording, else the first line of the message."""
    text = getattr(err, "strerror", None) or str(err).strip() or type(err).__name__
    return text.splitlines()[0]
