"""Prepared data sets: corpus → sentences → BPE → packed rows, cached on disk under a config hash.

The cache folder is named by a hash of the resolved data config, the source's fingerprint and
`PIPELINE_VERSION`, so the same config reuses it and any change rebuilds it. A build writes into a
private `.partial-*` folder and renames it into place when complete: a killed build leaves nothing that
is later mistaken for a finished data set, and its leftovers are removed by the next build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from gpthf.data.packing import document_units, pack_rows
from gpthf.data.sources import Document, get_source, load_documents
from gpthf.data.special_tokens import PAD_ID, SPECIAL_TOKENS
from gpthf.data.splitter import build_splitter
from gpthf.data.tokenizer import encode_sentences, load_tokenizer, save_tokenizer, train_tokenizer
from gpthf.errors import DataError

PIPELINE_VERSION = 2  # bump whenever preparation changes its output for the same config
SPLITS = ("train", "validation", "test")
STATS_FILE = "stats.json"
BYTE_ALPHABET = 256


@dataclass(frozen=True)
class PreparedData:
    path: Path  # the cache folder: tokenizer.json, stats.json, one Arrow data set per split

    @property
    def stats(self) -> dict:
        return json.loads((self.path / STATS_FILE).read_text())

    def tokenizer(self):
        return load_tokenizer(self.path)

    def split(self, name: str):
        """The packed rows of one split as a `datasets.Dataset` with numpy-friendly int32 columns."""
        import datasets

        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        if self.stats["splits"][name]["rows"] == 0:  # Arrow cannot read back a saved table of no rows
            seq_len = self.stats["data_config"]["seq_len"]
            return datasets.Dataset.from_dict({c: [] for c in ROW_COLUMNS}, features=row_features(seq_len))
        return datasets.load_from_disk(str(self.path / name))


ROW_COLUMNS = ("input_ids", "sentence_ids")


def row_features(seq_len: int):
    """The Arrow schema of a packed split: fixed-length int32 rows."""
    import datasets

    column = datasets.Sequence(datasets.Value("int32"), length=seq_len)
    return datasets.Features(dict.fromkeys(ROW_COLUMNS, column))


def split_arrays(split) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, sentence_ids) of a packed split as (rows, seq_len) int64 arrays, straight from Arrow."""

    def column(name: str) -> np.ndarray:
        chunked = split.data.column(name)
        if len(chunked) == 0:
            return np.zeros((0, 0), dtype=np.int64)
        fixed = chunked.combine_chunks()
        return fixed.flatten().to_numpy().astype(np.int64).reshape(len(fixed), fixed.type.list_size)

    return column("input_ids"), column("sentence_ids")


def validate_data_config(data_cfg: Any) -> None:
    if data_cfg.vocab_size < BYTE_ALPHABET + len(SPECIAL_TOKENS):
        raise DataError(
            f"data.vocab_size={data_cfg.vocab_size} is below the byte alphabet + specials ({BYTE_ALPHABET + len(SPECIAL_TOKENS)})"
        )
    if not 2 <= data_cfg.max_sentence_len <= data_cfg.seq_len:
        raise DataError(
            f"data.max_sentence_len={data_cfg.max_sentence_len} must be in [2, data.seq_len={data_cfg.seq_len}]"
        )
    fractions = (data_cfg.validation_fraction, data_cfg.test_fraction)
    if min(fractions) < 0 or sum(fractions) >= 1:
        raise DataError(f"data.validation_fraction + data.test_fraction must be in [0, 1), got {fractions}")


def data_cache_key(data_cfg: Any) -> str:
    resolved = (
        OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    )
    payload = {
        "config": resolved,
        "source": get_source(data_cfg.source).fingerprint(data_cfg),
        "version": PIPELINE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _doc_rank(doc_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()


def split_documents(
    docs: Sequence[Document], sentences: Sequence[list[str]], data_cfg: Any
) -> dict[str, list[list[str]]]:
    """Sentences of each document, grouped by split.

    Whole documents go to one split, chosen by a seeded hash of their id (stable when documents are
    added). With fewer than three documents, the sentence stream is cut into contiguous pieces instead,
    each held-out piece at least one sentence long when the stream has enough sentences to spare them.
    """
    fractions = {"validation": data_cfg.validation_fraction, "test": data_cfg.test_fraction}
    if len(docs) >= 3:
        order = sorted(range(len(docs)), key=lambda i: _doc_rank(docs[i].doc_id, data_cfg.split_seed))
        counts = {s: max(1, round(len(docs) * f)) if f > 0 else 0 for s, f in fractions.items()}
        n_val, n_test = counts["validation"], counts["test"]
        chosen = {
            "validation": order[:n_val],
            "test": order[n_val : n_val + n_test],
            "train": order[n_val + n_test :],
        }
        return {s: [sentences[i] for i in sorted(chosen[s])] for s in SPLITS}
    stream = [s for doc in sentences for s in doc]
    enough = len(stream) >= 3
    n_val, n_test = (
        max(int(enough and fractions[s] > 0), int(len(stream) * fractions[s])) for s in ("validation", "test")
    )
    n_train = len(stream) - n_val - n_test
    pieces = {
        "train": stream[:n_train],
        "validation": stream[n_train : n_train + n_val],
        "test": stream[n_train + n_val :],
    }
    return {s: [pieces[s]] if pieces[s] else [] for s in SPLITS}


def pack_split(tokenizer, documents: list[list[str]], data_cfg: Any, progress: bool, split: str):
    """Encode and pack one split's documents; returns the Arrow table and the split's statistics."""
    import datasets

    input_ids, sentence_ids, sentence_lengths, n_bytes = [], [], [], 0
    units = []
    for sentences in tqdm(documents, desc=f"encode {split}", disable=not progress, unit="doc"):
        encoded = encode_sentences(tokenizer, sentences)
        sentence_lengths.extend(len(t) + 1 for t in encoded)  # + <eos>
        n_bytes += sum(len(s.encode("utf-8")) + 1 for s in sentences)  # + one separator per sentence
        units.extend(document_units(encoded, data_cfg.max_sentence_len))
    for ids, sids in pack_rows(units, data_cfg.seq_len):
        input_ids.append(ids)
        sentence_ids.append(sids)
    table = datasets.Dataset.from_dict(
        {"input_ids": input_ids, "sentence_ids": sentence_ids}, features=row_features(data_cfg.seq_len)
    )
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    lengths = np.asarray(sentence_lengths or [0])
    stats = {
        "documents": len(documents),
        "sentences": len(sentence_lengths),
        "units": len(units),
        "rows": len(input_ids),
        "tokens": int((ids != PAD_ID).sum()),
        "padding_fraction": float((ids == PAD_ID).mean()) if ids.size else 0.0,
        "tokens_per_sentence_mean": float(lengths.mean()),
        "tokens_per_sentence_p95": float(np.percentile(lengths, 95)),
        "bytes": n_bytes,
    }
    return table, stats


def sentences_by_split(data_cfg: Any, progress: bool = True) -> dict[str, list[list[str]]]:
    """The corpus of `data_cfg` as sentences per document, per split (the tokenizer-free half of a build)."""
    docs = load_documents(data_cfg)
    splitter = build_splitter(data_cfg.language, training_text="\n\n".join(d.text for d in docs))
    sentences = [
        splitter.split(d.text) for d in tqdm(docs, desc="split sentences", disable=not progress, unit="doc")
    ]
    return split_documents(docs, sentences, data_cfg)


def build_dataset(data_cfg: Any, out_dir: Path, progress: bool = True) -> dict:
    """Build the whole prepared data set into the empty folder `out_dir`; returns the stats."""
    import datasets

    validate_data_config(data_cfg)
    by_split = sentences_by_split(data_cfg, progress)
    train_sentences = [s for doc in by_split["train"] for s in doc]
    if not train_sentences:
        raise DataError(f"the training split of data.source={data_cfg.source} has no sentences")
    tokenizer = train_tokenizer(train_sentences, data_cfg.vocab_size)
    save_tokenizer(tokenizer, out_dir)
    stats: dict = {"vocab_size": tokenizer.get_vocab_size(), "splits": {}}
    datasets.disable_progress_bars()  # our own bars already show the build; theirs would repeat per split
    for split in SPLITS:
        table, stats["splits"][split] = pack_split(tokenizer, by_split[split], data_cfg, progress, split)
        table.save_to_disk(str(out_dir / split))
    resolved = (
        OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    )
    stats["data_config"] = resolved
    for split in SPLITS[1:]:
        if stats["splits"][split]["rows"] == 0 and data_cfg[f"{split}_fraction"] > 0:
            logging.getLogger(__name__).warning(
                "the %s split is empty: %d sentence(s) in the corpus are too few to hold any out",
                split,
                sum(s["sentences"] for s in stats["splits"].values()),
            )
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return stats


def _remove_abandoned_builds(parent: Path) -> None:
    """Delete `.partial-PID-*` folders whose building process is gone (a killed build)."""
    for partial in parent.glob("*.partial-*"):
        try:
            pid = int(partial.name.rsplit(".partial-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def prepare_data(cfg: Any, progress: bool = True) -> PreparedData:
    """The prepared data set for `cfg.data`: reused from `cfg.cache_dir` when built before, else built."""
    validate_data_config(cfg.data)
    parent = Path(cfg.cache_dir).expanduser()
    final = parent / f"{cfg.data.name}-{data_cache_key(cfg.data)}"
    if (final / STATS_FILE).is_file():
        return PreparedData(final)
    partial = parent / f"{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)  # first, so an unwritable cache fails before minutes of work
        _remove_abandoned_builds(parent)
        build_dataset(cfg.data, partial, progress=progress)
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        if not isinstance(err, OSError) or err.errno is None:
            raise
        hint = (
            "set cache_dir=A_WRITABLE_FOLDER"
            if isinstance(err, PermissionError)
            else "free space or set cache_dir"
        )
        raise DataError(f"cannot write the data cache under {parent} ({err.strerror}); {hint}") from None
    try:
        os.rename(partial, final)
    except OSError:  # another process finished the same build first: theirs is complete, keep it
        shutil.rmtree(partial, ignore_errors=True)
        if not (final / STATS_FILE).is_file():
            raise
    logging.getLogger(__name__).info("prepared data in %s", final)
    return PreparedData(final)
