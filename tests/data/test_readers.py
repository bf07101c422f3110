"""Damaged corpus files: every format and compression goes through the one guard of
`file_documents`, so a file that cannot be decoded is counted as unreadable, never a traceback, and
what was read before the damage is kept."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gpthf.data.readers import LOCAL_SUFFIXES, SkippedRecords, file_documents, file_name, local_files
from gpthf.data.sources import _local_fingerprint

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
    **{
        f"{c} with garbage after a stream": (
            f"c.jsonl{c}",
            lambda c=c: COMPRESS[c](JSONL[:GOOD_BYTES]) + GARBAGE,
        )
        for c in COMPRESS
    },
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


@pytest.mark.parametrize("compression", COMPRESS)
def test_a_file_of_several_streams_reads_every_stream(compression, tmp_path):
    path = tmp_path / f"c.jsonl{compression}"
    half = len(JSONL) // 2
    cut = JSONL.index(b"\n", half) + 1
    path.write_bytes(COMPRESS[compression](JSONL[:cut]) + COMPRESS[compression](JSONL[cut:]))  # `cat a b`
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


@pytest.mark.parametrize("compression", COMPRESS)
def test_garbage_after_a_valid_frame_keeps_every_record_of_the_frame(compression, tmp_path):
    """The whole frame decodes in the same 16 KB chunk as the garbage after it: its records are kept."""
    path = tmp_path / f"c.jsonl{compression}"
    path.write_bytes(COMPRESS[compression](JSONL[:GOOD_BYTES]) + GARBAGE)
    texts, skipped = read(path)
    assert texts == [r["text"] for r in RECORDS[:200]]
    assert skipped.counts == {"unreadable": 1}


# (a line of a .jsonl file, the reason it is counted under): each would otherwise stop the build.
BAD_LINES = {
    "nested 200,000 deep": (b"[" * 200_000, "not JSON"),
    "a 5000-digit integer": (b'{"text": "x", "n": 1' + b"0" * 5000 + b"}", "not JSON"),
    "a lone surrogate": (b'{"text": "bad \\ud800 text. It goes on."}', "undecodable"),
}


@pytest.mark.parametrize("case", BAD_LINES, ids=str)
def test_a_bad_line_is_counted_and_the_file_goes_on(case, tmp_path):
    line, reason = BAD_LINES[case]
    path = tmp_path / "c.jsonl"
    path.write_bytes(JSONL[:GOOD_BYTES] + line + b"\n" + JSONL[GOOD_BYTES:])
    texts, skipped = read(path)
    assert texts == [r["text"] for r in RECORDS] and skipped.counts == {reason: 1}
    assert skipped.first_seen[reason].startswith("c.jsonl:201")


# Names of corpus files that are not regular files: each is counted, none opened (a FIFO would block).
NOT_REGULAR: dict[str, Callable[[Path], None]] = {
    "dangling symlink": lambda path: path.symlink_to(path.parent / "nowhere"),
    "symlink loop": lambda path: path.symlink_to(path),
    "FIFO": os.mkfifo,
    "folder": lambda path: path.mkdir(),
}


@pytest.mark.parametrize("kind", NOT_REGULAR, ids=str)
def test_a_corpus_name_that_is_not_a_regular_file_is_counted(kind, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_bytes(JSONL)
    cfg = OmegaConf.create({"path": str(corpus), **DATA_CFG})
    fingerprint = _local_fingerprint(cfg)
    NOT_REGULAR[kind](corpus / "b.jsonl.gz")
    root, files = local_files(str(corpus))
    skipped = SkippedRecords()
    texts = [d.text for p in files for d in file_documents(p, file_name(root, p), DATA_CFG, skipped)]
    assert texts == [r["text"] for r in RECORDS] and skipped.counts == {"not a regular file": 1}
    assert skipped.first_seen["not a regular file"].startswith("b.jsonl.gz (")
    assert _local_fingerprint(cfg) == fingerprint, "the cache key of the readable files is unchanged"
