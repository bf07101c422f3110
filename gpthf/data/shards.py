"""The on-disk format of a prepared data set, and its memory-mapped reader.

Each shard is a folder `shards/NNNNN/` holding, per split, `SPLIT.bin` (the packed rows' tokens, flat,
without padding, as uint16 — uint32 when the vocabulary needs it) and `SPLIT.idx` (int64 offsets: row
i is `bin[idx[i]:idx[i+1]]`). That is ~2 bytes per token on disk. Sentence ids are not stored: they are
recomputed from the <eos>/<eod> tokens when a row is read. A shard is written under `NNNNN.tmp/` and
renamed when complete, so a killed build never leaves a half shard that looks finished; a write the
disk has no room for raises `WriteFailed` naming the file.

The reader memory-maps every file: opening a split costs the same for 4 MB and 40 GB of text, and a
training process only ever pages in the rows it reads.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np

from gpthf.atomic import move_into_place, writing
from gpthf.data.packing import padded_rows
from gpthf.errors import DataError

SHARDS_DIR = "shards"
SHARD_META = "meta.json"  # per split: rows, tokens and the statistics of the shard; written last
OFFSET_DTYPE = np.int64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class ShardWriter:
    """Appends packed rows of each split to one shard's files; `finish` makes the shard visible."""

    def __init__(self, folder: Path, name: str, splits: tuple[str, ...], dtype: np.dtype):
        self.final = folder / name
        self.tmp = folder / f"{name}.tmp"
        self.dtype = dtype
        with writing(self.tmp):
            self.tmp.mkdir(parents=True, exist_ok=False)
            self.tokens = {s: (self.tmp / f"{s}.bin").open("wb") for s in splits}
            self.offsets = {s: (self.tmp / f"{s}.idx").open("wb") for s in splits}
        self.written = dict.fromkeys(splits, 0)
        self.rows = dict.fromkeys(splits, 0)
        for f in self.offsets.values():
            with writing(f.name):
                np.zeros(1, OFFSET_DTYPE).tofile(f)

    def add(self, split: str, tokens: np.ndarray, row_lengths: np.ndarray) -> None:
        with writing(self.tokens[split].name):  # numpy's short write is an OSError without errno
            tokens.astype(self.dtype, copy=False).tofile(self.tokens[split])
        with writing(self.offsets[split].name):
            (self.written[split] + np.cumsum(row_lengths, dtype=OFFSET_DTYPE)).tofile(self.offsets[split])
        self.written[split] += int(row_lengths.sum())
        self.rows[split] += len(row_lengths)

    def finish(self, stats: dict[str, dict]) -> None:
        """Close the files, write the shard's statistics (with its row and token counts), and rename
        the shard into place: only now can it be read or reused."""
        for f in (*self.tokens.values(), *self.offsets.values()):
            with writing(f.name):  # the last buffered bytes are written now
                f.close()
        meta = {s: {"rows": self.rows[s], "tokens": self.written[s], **stats.get(s, {})} for s in self.rows}
        with writing(self.tmp / SHARD_META):
            (self.tmp / SHARD_META).write_text(json.dumps(meta))
            move_into_place(self.tmp, self.final)

    def abandon(self) -> None:
        """Drop the unfinished shard (a full disk gets its space back; a reader never looked at it)."""
        for f in (*self.tokens.values(), *self.offsets.values()):
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _corrupt(path: Path, cache: Path, what: str) -> DataError:
    return DataError(
        f"data shard {path} is corrupt or truncated ({what}); delete the cache folder {cache} and it is rebuilt"
    )


def _map(path: Path, dtype: np.dtype, count: int, cache: Path) -> np.ndarray:
    """A read-only memory map of exactly `count` items, or a one-line error naming the damaged file."""
    try:
        size = path.stat().st_size
    except OSError:
        raise _corrupt(path, cache, "missing") from None
    if size != count * dtype.itemsize:
        raise _corrupt(path, cache, f"{size} bytes, expected {count * dtype.itemsize}")
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class PackedSplit:
    """One split of a prepared data set: `len()` rows, read as padded (input_ids, sentence_ids)."""

    def __init__(self, cache: Path, split: str, shards: list[dict], seq_len: int, vocab_size: int):
        self.cache, self.split, self.seq_len, self.vocab_size = cache, split, seq_len, vocab_size
        dtype = token_dtype(vocab_size)
        self.tokens, self.offsets = [], []
        for shard in shards:
            counts = shard["splits"][split]
            folder = cache / SHARDS_DIR / shard["name"]
            offsets = _map(folder / f"{split}.idx", np.dtype(OFFSET_DTYPE), counts["rows"] + 1, cache)
            if offsets[0] != 0 or offsets[-1] != counts["tokens"]:
                raise _corrupt(folder / f"{split}.idx", cache, "offsets do not match the token count")
            self.offsets.append(offsets)
            self.tokens.append(_map(folder / f"{split}.bin", dtype, counts["tokens"], cache))
        self.first_row = np.cumsum([0] + [len(o) - 1 for o in self.offsets])

    def __len__(self) -> int:
        return int(self.first_row[-1])

    def rows(self, index) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, sentence_ids) of rows `index`, each (len(index), seq_len) int64."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"rows {index.min()}..{index.max()} out of range for {len(self)} rows")
        shard = np.searchsorted(self.first_row, index, side="right") - 1
        flat_parts, starts, ends, base = [], [], [], 0
        for s, i in zip(shard.tolist(), (index - self.first_row[shard]).tolist()):
            start, end = int(self.offsets[s][i]), int(self.offsets[s][i + 1])
            if not 0 < end - start <= self.seq_len:
                raise _corrupt(
                    self.cache / SHARDS_DIR,
                    self.cache,
                    f"row {i} of a {self.split} shard has {end - start} tokens",
                )
            flat_parts.append(self.tokens[s][start:end])
            starts.append(base)
            ends.append(base + end - start)
            base += end - start
        flat = np.concatenate(flat_parts) if flat_parts else np.zeros(0, np.int64)
        if flat.size and int(flat.max()) >= self.vocab_size:
            raise _corrupt(
                self.cache / SHARDS_DIR, self.cache, f"token id {int(flat.max())} ≥ vocab {self.vocab_size}"
            )
        return padded_rows(flat, np.asarray(starts), np.asarray(ends), self.seq_len)
