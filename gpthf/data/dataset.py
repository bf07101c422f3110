"""Prepared data sets: corpus → sentences → BPE → packed token shards, cached on disk under a config hash.

The cache folder is named by a hash of the resolved data config (less the keys that only change speed),
the source's fingerprint and `PIPELINE_VERSION`, so the same config reuses it and any change rebuilds
it. A build writes into a private `.partial-PID-*` folder and renames it into place when complete: a
killed build leaves nothing that is later mistaken for a finished data set. The next build of the same
config adopts a dead build's folder and keeps its tokenizer and finished shards (`gpthf.data.build`);
a build the disk has no room for keeps them too, and its error line says where.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from gpthf.atomic import WriteFailed, atomic_write, move_into_place
from gpthf.config import DataConfig, validate_data
from gpthf.data.build import (
    counted_stream,
    default_num_proc,
    encode_stream,
    make_splitter,
    shard_name,
    train_sample_tokenizer,
    write_shards,
)
from gpthf.data.packing import padded_rows
from gpthf.data.readers import Document, SkippedRecords
from gpthf.data.shards import SHARD_META, SHARDS_DIR, PackedSplit, token_dtype
from gpthf.data.sources import get_source, no_usable_text
from gpthf.data.splits import SPLITS, plan_splits
from gpthf.data.tokenizer import TOKENIZER_FILE, load_tokenizer, save_tokenizer
from gpthf.errors import DataError

PIPELINE_VERSION = 3  # bump whenever preparation changes its output for the same config
STATS_FILE = "stats.json"
SPEED_ONLY_KEYS = ("num_proc",)  # data keys that never change the prepared data (not in the cache key)
log = logging.getLogger(__name__)

__all__ = [
    "SPLITS",
    "STATS_FILE",
    "PreparedData",
    "prepare_data",
    "data_identity",
    "pack_split_in_memory",
    "split_documents",
]


@dataclass(frozen=True)
class PreparedData:
    path: Path  # the cache folder: tokenizer.json, stats.json, shards/NNNNN/{split}.bin|.idx

    @property
    def stats(self) -> dict:
        return json.loads((self.path / STATS_FILE).read_text())

    def tokenizer(self):
        return load_tokenizer(self.path)

    def split(self, name: str) -> PackedSplit:
        """One split's packed rows, memory-mapped (nothing is read until rows are asked for)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        stats = self.stats
        return PackedSplit(
            self.path, name, stats["shards"], stats["data_config"]["seq_len"], stats["vocab_size"]
        )


def data_identity(data_cfg: Any) -> dict:
    """The data config as it determines the prepared data: resolved, without the speed-only keys."""
    resolved = (
        OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    )
    return {k: v for k, v in resolved.items() if k not in SPEED_ONLY_KEYS}


def data_cache_key(data_cfg: Any) -> str:
    payload = {
        "config": data_identity(data_cfg),
        "source": get_source(data_cfg.source).fingerprint(data_cfg),
        "version": PIPELINE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _percentile(lengths: Counter, q: float) -> float:
    """np.percentile (linear) of the values a histogram describes, without expanding it."""
    values = np.array(sorted(lengths), dtype=np.float64)
    cumulative = np.cumsum([lengths[v] for v in sorted(lengths)])
    position = (cumulative[-1] - 1) * q / 100
    lo, hi = (
        values[np.searchsorted(cumulative, k, side="right")] for k in (int(position), int(np.ceil(position)))
    )
    return float(lo + (hi - lo) * (position - int(position)))


def split_stats(shard_metas: list[dict], split: str, seq_len: int) -> dict:
    """One split's statistics, summed over its shards."""
    total = Counter()
    lengths = Counter()
    max_sentences = 0
    for meta in shard_metas:
        part = meta[split]
        total.update(
            {k: part.get(k, 0) for k in ("documents", "sentences", "units", "rows", "tokens", "bytes")}
        )
        lengths.update({int(k): v for k, v in part.get("sentence_lengths", {}).items()})
        max_sentences = max(max_sentences, part.get("max_sentences", 0))
    n = sum(lengths.values())
    return {
        **{k: int(total[k]) for k in ("documents", "sentences", "units", "rows", "tokens")},
        "padding_fraction": 1 - total["tokens"] / (total["rows"] * seq_len) if total["rows"] else 0.0,
        "tokens_per_sentence_mean": sum(k * v for k, v in lengths.items()) / n if n else 0.0,
        "tokens_per_sentence_p95": _percentile(lengths, 95) if n else 0.0,
        "bytes": int(total["bytes"]),
        "max_sentences": max_sentences,
    }


def build_dataset(data_cfg: Any, out_dir: Path, progress: bool = True) -> dict:
    """Build the prepared data set into `out_dir` (empty, or a dead build's folder whose tokenizer and
    finished shards are kept); returns the stats, written last."""
    validate_data(data_cfg, DataError)  # a config built elsewhere than load_config, too
    num_proc = data_cfg.get("num_proc") or default_num_proc()
    started = time.perf_counter()
    plan = plan_splits(data_cfg)
    splitter = make_splitter(plan, data_cfg)
    if (out_dir / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer(out_dir)
    else:
        tokenizer = train_sample_tokenizer(plan, data_cfg, splitter, num_proc)
        save_tokenizer(tokenizer, out_dir)
    log.info("split plan (%s) and tokenizer ready in %.1f s", plan.regime, time.perf_counter() - started)
    started = time.perf_counter()
    skipped = write_shards(plan, data_cfg, splitter, tokenizer, out_dir, num_proc, progress)
    log.info("corpus encoded by %d worker(s) in %.1f s", num_proc, time.perf_counter() - started)
    names = sorted(p.name for p in (out_dir / SHARDS_DIR).iterdir() if (p / SHARD_META).is_file())
    if names != [shard_name(i) for i in range(len(names))]:
        raise DataError(
            f"the shards under {out_dir / SHARDS_DIR} are not contiguous: {names}; delete the folder"
        )
    metas = [json.loads((out_dir / SHARDS_DIR / n / SHARD_META).read_text()) for n in names]
    stats: dict = {
        "vocab_size": tokenizer.get_vocab_size(),
        "token_dtype": token_dtype(tokenizer.get_vocab_size()).name,
        "split_regime": plan.regime,
        "splits": {s: split_stats(metas, s, data_cfg.seq_len) for s in SPLITS},
        "shards": [
            {"name": n, "splits": {s: {k: m[s][k] for k in ("rows", "tokens")} for s in SPLITS}}
            for n, m in zip(names, metas)
        ],
        "skipped_records": skipped.as_dict(),
        "data_config": data_identity(data_cfg),
    }
    if stats["splits"]["train"]["tokens"] == 0:
        raise no_usable_text(data_cfg, skipped)
    if skipped.malformed:
        log.warning("skipped %d malformed record(s): %s", skipped.malformed, skipped.describe())
    for split in SPLITS[1:]:
        if stats["splits"][split]["rows"] == 0 and data_cfg[f"{split}_fraction"] > 0:
            log.warning(
                "the %s split is empty: %d sentence(s) in the corpus are too few to hold any out",
                split,
                sum(s["sentences"] for s in stats["splits"].values()),
            )
    atomic_write(out_dir / STATS_FILE, json.dumps(stats, indent=2))
    return stats


def with_defaults(data_cfg: Any) -> DictConfig:
    """A data config saved by an older version, completed with today's defaults for keys it lacks."""
    return OmegaConf.merge(OmegaConf.structured(DataConfig), data_cfg)


def split_documents(data_cfg: Any, split: str) -> Iterator[list[str]]:
    """The sentences of each document of one split, streamed (for evaluations that need text)."""
    data_cfg = with_defaults(data_cfg)
    plan = plan_splits(data_cfg)
    splitter = make_splitter(plan, data_cfg)
    for s, doc in plan.stream():
        if s == split:
            yield list(doc.sentences) if doc.sentences is not None else splitter.split(doc.text)


def pack_split_in_memory(
    data_cfg: Any, tokenizer, split: str, max_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(input_ids, sentence_ids, stats) of one split packed exactly as a build packs it, in this
    process, stopping once `max_rows` rows are packed (for scoring a checkpoint on its own tokenizer);
    stats["skipped_records"] counts the malformed records and damaged files passed over, as a build's do."""
    data_cfg = with_defaults(data_cfg)
    plan = plan_splits(data_cfg)
    skipped = SkippedRecords()
    docs = ((s, d) for s, d in counted_stream(plan, skipped) if s == split)
    input_ids, sentence_ids, stats = pack_documents(
        docs, data_cfg, make_splitter(plan, data_cfg), tokenizer, split, max_rows
    )
    stats["skipped_records"] = skipped.as_dict()  # of the files read (all of them, unless max_rows)
    if skipped.malformed:
        log.warning("skipped %d malformed record(s): %s", skipped.malformed, skipped.describe())
    return input_ids, sentence_ids, stats


def pack_text(data_cfg: Any, tokenizer, text: str, splitter) -> tuple[np.ndarray, np.ndarray, dict]:
    """One document's text packed as a build packs a document (sentences, <eos>, <eod>, rows)."""
    data_cfg = with_defaults(data_cfg)
    return pack_documents([("test", Document("text", text))], data_cfg, splitter, tokenizer, "test")


def pack_documents(
    docs, data_cfg: Any, splitter, tokenizer, split: str, max_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    tokens, lengths, n_bytes = [], [], 0
    for parts in encode_stream(docs, data_cfg, splitter, tokenizer, num_proc=1):
        if split not in parts:
            continue
        part = parts[split]
        tokens.append(part.tokens)
        lengths.append(part.row_lengths)
        n_bytes += part.bytes
        if max_rows is not None and sum(map(len, lengths)) >= max_rows:
            break
    if not tokens:
        return (
            np.zeros((0, data_cfg.seq_len), np.int64),
            np.zeros((0, data_cfg.seq_len), np.int64),
            {"bytes": 0},
        )
    flat, row_lengths = np.concatenate(tokens), np.concatenate(lengths)
    ends = np.cumsum(row_lengths)
    input_ids, sentence_ids = padded_rows(flat, ends - row_lengths, ends, data_cfg.seq_len)
    return (
        input_ids,
        sentence_ids,
        {"bytes": n_bytes, "rows": len(row_lengths), "tokens": int(row_lengths.sum())},
    )


def _pid_of(partial: Path) -> int | None:
    try:
        return int(partial.name.rsplit(".partial-", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _adopt_or_remove_abandoned(parent: Path, final: Path, mine: Path) -> bool:
    """Take over a dead build of the same data set (its tokenizer and finished shards are reused) by
    renaming it to `mine`; remove dead builds of other data sets. Whether one was adopted."""
    adopted = False
    for partial in sorted(parent.glob("*.partial-*")):
        pid = _pid_of(partial)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        if not adopted and partial.name.startswith(f"{final.name}.partial-"):
            try:
                shutil.rmtree(mine)
                partial.rename(mine)  # atomic: of two new builds racing for it, one wins
                adopted = True
                continue
            except OSError:
                mine.mkdir(exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    return adopted


def _what_a_failed_build_keeps(partial: Path, parent: Path) -> str:
    """After a write the disk had no room for: a build with a tokenizer keeps it and its finished
    shards in `partial` (dead, it is adopted and continued by the next build of the same config, as
    after a kill); one with nothing finished is removed. Says which."""
    if not (partial / TOKENIZER_FILE).is_file():
        shutil.rmtree(partial, ignore_errors=True)
        return f"nothing of this build was kept; the data sets already in {parent} are intact"
    shards = sorted(p.name for p in (partial / SHARDS_DIR).glob("*") if (p / SHARD_META).is_file())
    return (
        f"its tokenizer and {len(shards)} finished shard(s) are kept in {partial}, and the next build of "
        f"this config continues from them"
    )


def prepare_data(cfg: Any, progress: bool = True) -> PreparedData:
    """The prepared data set for `cfg.data`: reused from `cfg.cache_dir` when built before, else built."""
    validate_data(cfg.data, DataError)
    parent = Path(cfg.cache_dir).expanduser()
    final = parent / f"{cfg.data.name}-{data_cache_key(cfg.data)}"
    if (final / STATS_FILE).is_file():
        return PreparedData(final)
    partial = parent / f"{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)  # first, so an unwritable cache fails before minutes of work
        if _adopt_or_remove_abandoned(parent, final, partial):
            log.info("continuing an interrupted build of %s", final.name)
        build_dataset(cfg.data, partial, progress=progress)
    except WriteFailed as err:
        raise err.keeping(_what_a_failed_build_keeps(partial, parent)) from None
    except BaseException as err:
        # A failed write or folder (ENOSPC, EACCES...), not a worker process that died under the pool
        # (BrokenPipe/ConnectionReset): that is no fault of the cache and keeps its traceback.
        disk_error = (
            isinstance(err, OSError) and err.errno is not None and not isinstance(err, ConnectionError)
        )
        if not disk_error and isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise  # keep the finished shards: the next build continues from them
        shutil.rmtree(partial, ignore_errors=True)
        if not disk_error:
            raise
        hint = (
            "set cache_dir=A_WRITABLE_FOLDER"
            if isinstance(err, PermissionError)
            else "free space or set cache_dir"
        )
        raise DataError(f"cannot write the data cache under {parent} ({err.strerror}); {hint}") from None
    try:
        move_into_place(partial, final, replace=False)
    except OSError:  # another process finished the same build first: theirs is complete, keep it
        shutil.rmtree(partial, ignore_errors=True)
        if not (final / STATS_FILE).is_file():
            raise
    log.info("prepared data in %s", final)
    return PreparedData(final)
