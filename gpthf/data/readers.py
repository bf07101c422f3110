"""Lazy readers of local corpus files: one record at a time, whatever the size of the file.

A malformed record (a line that is not JSON, a missing or non-string text field, bytes that do not
decode) is skipped and counted in `SkippedRecords` rather than stopping a build of hours at its 10
millionth line; the build warns once at the end, and refuses only when nothing usable is left.

A `.txt` file is one document; a file larger than `TXT_BLOCK_BYTES` is read as several documents, cut
at paragraph breaks, so a single 40 GB text file streams in bounded memory (each block closes with <eod>).
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpthf.errors import DataError

LOCAL_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
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
    "unreadable": "check the file",
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
    """(root, the corpus files under it in a stable order)."""
    if not path:
        raise DataError(f"data.source=local needs data.path=FILE_OR_DIR ({'/'.join(LOCAL_SUFFIXES)})")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(
            f"data.path {root} does not exist; use data=default (the embedded King James Bible) "
            f"or data=local data.path=FILE_OR_DIR ({'/'.join(LOCAL_SUFFIXES)})"
        )
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = [p for p in files if p.name.endswith(LOCAL_SUFFIXES)]
    if not files:
        raise DataError(f"no {'/'.join(LOCAL_SUFFIXES)} files under {root}")
    return root, files


def file_name(root: Path, path: Path) -> str:
    """A file's name relative to data.path, so document ids (and so the split) do not depend on
    where the corpus folder lives."""
    return path.name if root == path else path.relative_to(root).as_posix()


def text_record(value: Any, where: str, skipped: SkippedRecords) -> str | None:
    """The text of one record's field, or None (counted) when it is not usable text."""
    if not isinstance(value, str):
        skipped.skip("text not a string", where)
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
    try:
        one_block = path.stat().st_size <= TXT_BLOCK_BYTES
        handle = path.open("rb")
    except OSError as err:
        skipped.skip("unreadable", f"{name} ({err.strerror})")
        return
    with handle:
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


def _open_lines(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path} is zstd-compressed: pip install zstandard") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb")))
    return path.open("rb")


def jsonl_documents(
    path: Path, name: str, text_field: str, encoding: str, skipped: SkippedRecords
) -> Iterator[Document]:
    """One document per JSON line (plain, .gz or .zst), read line by line."""
    try:
        with _open_lines(path) as lines:
            for lineno, raw in enumerate(lines, start=1):
                where = f"{name}:{lineno}"
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode(encoding))
                except UnicodeDecodeError:
                    skipped.skip("undecodable", where)
                    continue
                except json.JSONDecodeError:
                    skipped.skip("not JSON", where)
                    continue
                if not isinstance(record, dict) or text_field not in record:
                    skipped.skip("no text field", where)
                    continue
                text = text_record(record[text_field], where, skipped)
                if text is not None:
                    yield Document(where, text)
    except (OSError, EOFError) as err:  # unreadable, or a truncated/corrupt .gz/.zst stream
        skipped.skip("unreadable", f"{name} ({getattr(err, 'strerror', None) or err})")


def parquet_documents(path: Path, name: str, text_field: str, skipped: SkippedRecords) -> Iterator[Document]:
    """One document per row, read in batches of rows of the text column only."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for files that are not parquet
        skipped.skip("unreadable", f"{name} ({str(err).splitlines()[0]})")
        return
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
