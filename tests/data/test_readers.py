"""Damaged corpus files: every format and compression goes through the one guard of
`file_documents`, so a file that cannot be decoded is counted as unreadable, never a traceback, and
what was read before the damage is kept."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gpthf.data.readers import LOCAL_SUFFIXES, SkippedRecords, file_documents

DATA_CFG = OmegaConf.create({"encoding": "utf-8", "text_field": "text"})
RECORDS = [{"text": f"Record {i} is here. It ends with a full stop."} for i in range(4000)]
JSONL = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()


def zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def parquet(texts: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buffer, row_group_size=500, compression="snappy")
    return buffer.getvalue()


def damaged_middle(data: bytes) -> bytes:
    """The bytes with a stretch in the middle overwritten (a bad disk sector, a broken download)."""
    middle = len(data) // 2
    return data[:middle] + bytes(range(256)) * 4 + data[middle + 1024 :]


GOOD_BYTES = len("".join(json.dumps(r) + "\n" for r in RECORDS[:200]))  # the first 200 records
GARBAGE = bytes(range(256)) * 4  # neither a zstd frame nor a gzip member


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": zstd,
}

# (file name, its bytes): each is the right name for its format holding something that is not it.
DAMAGED: dict[str, tuple[str, Callable[[], bytes]]] = {
    **{f"{c} truncated": (f"c.jsonl{c}", lambda c=c: COMPRESS[c](JSONL)[:-300]) for c in COMPRESS},
    **{f"{c} of zero bytes": (f"c.jsonl{c}", lambda: b"") for c in COMPRESS},
    **{f"{c} holding plain text": (f"c.jsonl{c}", lambda: JSONL[:2000]) for c in COMPRESS},
    ".zst of random bytes": ("c.jsonl.zst", lambda: bytes(range(256)) * 16),
    ".gz damaged in the middle": ("c.jsonl.gz", lambda: damaged_middle(gzip.compress(JSONL))),
    ".zst damaged in the middle": ("c.jsonl.zst", lambda: damaged_middle(zstd(JSONL))),
    ".zst with garbage after a frame": ("c.jsonl.zst", lambda: zstd(JSONL[:GOOD_BYTES]) + GARBAGE),
    ".gz with garbage after a member": ("c.jsonl.gz", lambda: gzip.compress(JSONL[:GOOD_BYTES]) + GARBAGE),
    ".parquet truncated": ("c.parquet", lambda: parquet([r["text"] for r in RECORDS])[:-100]),
    ".parquet of zero bytes": ("c.parquet", lambda: b""),
    ".parquet holding plain text": ("c.parquet", lambda: JSONL[:2000]),
    ".parquet damaged in the middle": (
        "c.parquet",
        lambda: damaged_middle(parquet([f"{r['text']} {i * 7919 % 10007}" for i, r in enumerate(RECORDS)])),
    ),
}


def read(path: Path) -> tuple[list[str], SkippedRecords]:
    skipped = SkippedRecords()
    return [doc.text for doc in file_documents(path, path.name, DATA_CFG, skipped)], skipped


@pytest.mark.parametrize("case", DAMAGED, ids=str)
def test_a_damaged_file_is_counted_as_unreadable_and_what_came_before_is_kept(case, tmp_path):
    name, content = DAMAGED[case]
    path = tmp_path / name
    path.write_bytes(content())
    texts, skipped = read(path)
    assert skipped.counts["unreadable"] == 1, skipped.counts
    assert skipped.first_seen["unreadable"].startswith(f"{name} (")
    assert len(texts) < len(RECORDS)
    if "middle" not in case:  # a decoder may turn damaged bytes into text before its checksum fails
        assert texts == [r["text"] for r in RECORDS[: len(texts)]], "documents before the damage, intact"


@pytest.mark.parametrize("compression", COMPRESS)
def test_every_compression_reads_the_whole_file(compression, tmp_path):
    path = tmp_path / f"c.jsonl{compression}"
    path.write_bytes(COMPRESS[compression](JSONL))
    assert path.name.endswith(LOCAL_SUFFIXES)
    texts, skipped = read(path)
    assert texts == [r["text"] for r in RECORDS] and not skipped.counts


def test_a_zstd_file_of_several_frames_reads_every_frame(tmp_path):
    path = tmp_path / "c.jsonl.zst"
    half = len(JSONL) // 2
    cut = JSONL.index(b"\n", half) + 1
    path.write_bytes(zstd(JSONL[:cut]) + zstd(JSONL[cut:]))  # as `zstd a b > c` or a streaming writer
    texts, skipped = read(path)
    assert texts == [r["text"] for r in RECORDS] and not skipped.counts


def test_an_error_that_is_not_the_files_still_stops_the_run(tmp_path, monkeypatch):
    """The guard catches what says the file is damaged, not a bug."""
    from gpthf.data import readers

    path = tmp_path / "c.jsonl"
    path.write_bytes(JSONL)

    def broken(*args):
        raise KeyError("a bug")

    monkeypatch.setattr(readers, "text_record", broken)
    with pytest.raises(KeyError):
        read(path)


@pytest.mark.parametrize("compression", [".zst", ".gz"])
def test_garbage_after_a_valid_frame_keeps_every_record_of_the_frame(compression, tmp_path):
    """The whole frame decodes in the same 16 KB chunk as the garbage after it: its records are kept."""
    path = tmp_path / f"c.jsonl{compression}"
    path.write_bytes(COMPRESS[compression](JSONL[:GOOD_BYTES]) + GARBAGE)
    texts, skipped = read(path)
    assert texts == [r["text"] for r in RECORDS[:200]]
    assert skipped.counts == {"unreadable": 1}
