"""Compressed corpus files read as streams of their decompressed bytes, a bounded step at a time,
with damage raised where it is met: a truncated file (EOFError), bytes after a stream that start no
other stream, a zero-byte archive. Python's own readers end quietly at some of these, which would let
a damaged file pass for a shorter corpus; `gpthf.data.readers` counts a file that raises as unreadable.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpthf.errors import DataError

# Compressed bytes fed to a decoder at a time: what one zstd step may decode is bounded by this times
# zstd's ratio (about 10x on text); the bz2 and xz readers bound each step by the reader's buffer.
COMPRESSED_READ_BYTES = 1 << 14


class _ZstdStream(io.RawIOBase):
    """The decompressed bytes of a .zst file (one or more frames), decoded a chunk at a time.

    zstandard's own `stream_reader` ends quietly when the file stops inside a frame, so a truncated
    file would pass for a shorter corpus; this one raises EOFError there, as gzip, bz2 and lzma do."""

    def __init__(self, path: Path):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path} is zstd-compressed: pip install zstandard") from None
        self._decompressor = zstandard.ZstdDecompressor()
        self._damage_error = zstandard.ZstdError
        self._file = path.open("rb")
        self._frame = None  # the decompressobj of the frame being read (one per frame)
        self._out, self._taken = b"", 0  # decoded bytes not yet handed out start at _out[_taken]
        self._damage = None  # an error met after bytes of the same chunk decoded: raised once they are out

    def readable(self) -> bool:
        return True

    def _decode(self, compressed: bytes) -> bytes:
        """The bytes `compressed` decodes to. Damage part way (garbage after a frame) keeps what was
        decoded before it, as gzip does: the error is raised by the next read, once that is handed out."""
        decoded = []
        try:
            while compressed:
                if self._frame is None or self._frame.eof:
                    self._frame = self._decompressor.decompressobj()
                decoded.append(self._frame.decompress(compressed))
                compressed = self._frame.unused_data if self._frame.eof else b""
        except self._damage_error as err:
            if not decoded:
                raise
            self._damage = err
        return b"".join(decoded)

    def readinto(self, buffer) -> int:
        while self._taken == len(self._out):
            if self._damage is not None:
                raise self._damage
            compressed = self._file.read(COMPRESSED_READ_BYTES)
            if not compressed:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("the zstd stream ends inside a frame (the file is truncated)")
                return 0
            self._out, self._taken = self._decode(compressed), 0
        size = min(len(buffer), len(self._out) - self._taken)
        buffer[:size] = self._out[self._taken : self._taken + size]
        self._taken += size
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


class _StdlibStreams(io.RawIOBase):
    """The decompressed bytes of a .bz2 or .xz file (one or more streams), a bounded step at a time.

    `bz2.open` and `lzma.open` end quietly at bytes after a stream that do not start another one, so
    a file damaged there would pass for a shorter corpus; this reader raises the decoder's error
    there (as gzip and zstd do), and EOFError when the file stops inside a stream."""

    def __init__(self, path: Path, new_decompressor: Callable[[], Any]):
        self._file = path.open("rb")
        self._new = new_decompressor
        self._stream = new_decompressor()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._stream.eof:  # the next stream starts in what this one left, or in the file
                rest = self._stream.unused_data or self._file.read(COMPRESSED_READ_BYTES)
                if not rest:
                    return 0
                self._stream = self._new()
                decoded = self._stream.decompress(rest, len(buffer))  # raises on bytes that are no stream
            elif self._stream.needs_input:
                compressed = self._file.read(COMPRESSED_READ_BYTES)
                if not compressed:
                    raise EOFError("the compressed stream ends before its end marker (the file is truncated)")
                decoded = self._stream.decompress(compressed, len(buffer))
            else:
                decoded = self._stream.decompress(b"", len(buffer))
            if decoded:
                buffer[: len(decoded)] = decoded
                return len(decoded)

    def close(self) -> None:
        self._file.close()
        super().close()


# How each compression a .jsonl file may carry is opened: a binary stream of its decompressed bytes.
COMPRESSIONS: dict[str, Callable[[Path], io.BufferedIOBase]] = {
    ".gz": lambda path: gzip.open(path, "rb"),
    ".bz2": lambda path: io.BufferedReader(_StdlibStreams(path, bz2.BZ2Decompressor), buffer_size=1 << 16),
    ".xz": lambda path: io.BufferedReader(_StdlibStreams(path, lzma.LZMADecompressor), buffer_size=1 << 16),
    ".zst": lambda path: io.BufferedReader(_ZstdStream(path), buffer_size=1 << 16),
}


def open_decompressed(path: Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed when its name ends in a suffix of COMPRESSIONS. A zero-byte
    compressed file holds not even an empty stream: it is refused as truncated, whatever the format
    (gzip and zstd would otherwise read it as empty, bz2 and xz already refuse it)."""
    for suffix, open_stream in COMPRESSIONS.items():
        if path.name.endswith(suffix):
            if path.stat().st_size == 0:
                raise EOFError(f"a zero-byte {suffix} file holds no compressed data")
            return open_stream(path)
    return path.open("rb")
