"""Building a prepared data set in bounded memory: stream, sample the tokenizer, encode in workers.

1. The split plan reads the head of the stream (`gpthf.data.splits`).
2. The tokenizer is trained on the first `data.tokenizer_sample_mb` of the train split's sentences.
3. The whole stream is cut into chunks of ~`CHUNK_BYTES` of text; `data.num_proc` worker processes split
   each chunk into sentences, encode and pack it; the main process writes the results in chunk order
   into shards of `SHARD_CHUNKS` chunks. Chunks are cut from the data, not from the number of workers,
   so the output is byte-identical for any `num_proc`. A row never spans two chunks (one partly
   filled row per chunk and split: ~0.03 % padding).
Memory: the tokenizer sample while it is trained, plus a few chunks in flight — flat in corpus size.
Finished shards of a killed build are kept and reused by the next build of the same config.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gpthf.data.packing import document_units, pack_units
from gpthf.data.shards import SHARD_META, SHARDS_DIR, ShardWriter, token_dtype
from gpthf.data.sources import Document, SkippedRecords, corpus_size_hint, iter_documents, no_usable_text
from gpthf.data.special_tokens import SENTENCE_CLOSERS
from gpthf.data.splits import SPLITS, SplitPlan
from gpthf.data.splitter import SentenceSplitter, build_splitter
from gpthf.data.tokenizer import SentenceEncoder, train_tokenizer

CHUNK_BYTES = 1 << 20  # text per worker task; part of the output format (rows never span chunks)
SHARD_CHUNKS = 256  # chunks per shard (~256 MB of text): the unit of files on disk and of reuse
Chunk = list[tuple[str, Document]]


def default_num_proc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def chunks_of(stream: Iterable[tuple[str, Document]]) -> Iterator[tuple[Chunk, int]]:
    """(chunk, its UTF-8 text bytes), cutting after the document that reaches CHUNK_BYTES."""
    chunk: Chunk = []
    size = 0
    for split, doc in stream:
        chunk.append((split, doc))
        size += len(doc.text.encode("utf-8")) + sum(len(s.encode("utf-8")) + 1 for s in doc.sentences or ())
        if size >= CHUNK_BYTES:
            yield chunk, size
            chunk, size = [], 0
    if chunk:
        yield chunk, size


# ---- the worker side: state set once per process by `_init_worker` -------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(splitter: SentenceSplitter, tokenizer_json: str | None, data_cfg: dict) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    _WORKER.clear()
    _WORKER.update(splitter=splitter, data=data_cfg, encode=None)
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tokenizer_json)
        tokenizer.encode_special_tokens = True  # as gpthf.data.tokenizer does: literal "<eos>" is text
        _WORKER["encode"] = SentenceEncoder(tokenizer)  # its word cache lives as long as the worker


def _sentences(doc: Document) -> list[str]:
    return list(doc.sentences) if doc.sentences is not None else _WORKER["splitter"].split(doc.text)


def split_chunk(chunk: Chunk) -> list[str]:
    """All sentences of a chunk's documents (the tokenizer sample)."""
    return [s for _, doc in chunk for s in _sentences(doc)]


@dataclass
class SplitPart:
    """One split's share of a chunk: its packed rows and what the statistics need."""

    tokens: np.ndarray
    row_lengths: np.ndarray
    documents: int = 0
    sentences: int = 0
    units: int = 0
    bytes: int = 0
    max_sentences: int = 0  # most sentence ids in one row (the padding has one of its own)
    sentence_lengths: Counter = field(default_factory=Counter)  # tokens (+ <eos>) → sentences


def encode_chunk(chunk: Chunk) -> dict[str, SplitPart]:
    """Split into sentences, encode and pack a chunk, per split."""
    data, encode = _WORKER["data"], _WORKER["encode"]
    dtype = token_dtype(data["vocab_size"])
    parts = {}
    for split in SPLITS:
        docs = [_sentences(doc) for s, doc in chunk if s == split]
        if not docs:
            continue
        encoded = encode([s for sentences in docs for s in sentences])
        units, i = [], 0
        for sentences in docs:
            units.extend(document_units(encoded[i : i + len(sentences)], data["max_sentence_len"]))
            i += len(sentences)
        tokens, row_lengths = pack_units(units, data["seq_len"], dtype)
        closers = np.isin(tokens, SENTENCE_CLOSERS)
        per_row = np.add.reduceat(closers, np.cumsum(row_lengths) - row_lengths)
        parts[split] = SplitPart(
            tokens,
            row_lengths,
            documents=len(docs),
            sentences=len(encoded),
            units=len(units),
            bytes=sum(len(s.encode("utf-8")) + 1 for sentences in docs for s in sentences),
            max_sentences=int(np.max(per_row + (row_lengths < data["seq_len"]))),  # + the padding's id
            sentence_lengths=Counter(len(t) + 1 for t in encoded),
        )
    return parts


# ---- the main process ---------------------------------------------------------------------------
def ordered_map(fn: Callable, items: Iterable, num_proc: int, initargs: tuple) -> Iterator:
    """`map(fn, items)` over `num_proc` worker processes, in order, with a few items in flight at most
    (a plain `Pool.imap` would read the whole corpus ahead into its task queue)."""
    if num_proc <= 1:
        _init_worker(*initargs)
        yield from map(fn, items)
        return
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(num_proc, _init_worker, initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) > 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _sample_chunks(plan: SplitPlan, limit_bytes: float) -> Iterator[Chunk]:
    """Train-split chunks from the start of the stream until `limit_bytes` of text."""
    taken = 0
    for chunk, size in chunks_of((s, d) for s, d in plan.stream() if s == "train"):
        yield chunk
        taken += size
        if taken >= limit_bytes:
            return


def make_splitter(plan: SplitPlan, data_cfg: Any) -> SentenceSplitter:
    """Pretrained Punkt, or Punkt trained on the tokenizer sample's text where there is none."""
    limit = data_cfg.tokenizer_sample_mb * 1e6

    def sample_text() -> str:
        return "\n\n".join(d.text for chunk in _sample_chunks(plan, limit) for _, d in chunk)

    return build_splitter(data_cfg.language, training_text=sample_text)


def train_sample_tokenizer(plan: SplitPlan, data_cfg: Any, splitter: SentenceSplitter, num_proc: int):
    """BPE trained on the sentences of the first `data.tokenizer_sample_mb` of the train split."""
    chunks = _sample_chunks(plan, data_cfg.tokenizer_sample_mb * 1e6)
    sentences = [s for part in ordered_map(split_chunk, chunks, num_proc, (splitter, None, {})) for s in part]
    if not sentences:
        raise no_usable_text(data_cfg, SkippedRecords())
    return train_tokenizer(sentences, data_cfg.vocab_size)


def _encoder_args(data_cfg: Any, splitter: SentenceSplitter, tokenizer) -> tuple:
    config = {k: data_cfg[k] for k in ("vocab_size", "seq_len", "max_sentence_len")}
    return splitter, tokenizer.to_str(), config


def encode_stream(
    docs: Iterable[tuple[str, Document]], data_cfg: Any, splitter: SentenceSplitter, tokenizer, num_proc: int
) -> Iterator[dict[str, SplitPart]]:
    """Each chunk of `docs` split, encoded and packed, per split, in order."""
    chunks = (chunk for chunk, _ in chunks_of(docs))
    return ordered_map(encode_chunk, chunks, num_proc, _encoder_args(data_cfg, splitter, tokenizer))


def counted_stream(plan: SplitPlan, skipped: SkippedRecords) -> Iterator[tuple[str, Document]]:
    """`plan.stream(skipped)`, with every skipped record counted: a tiny corpus (cut into pieces when
    the split was planned) is not read by its stream, so it is read once more just to count them."""
    if plan.pieces is not None:
        for _ in iter_documents(plan.data_cfg, skipped):
            pass
    yield from plan.stream(skipped)


def shard_name(index: int) -> str:
    return f"{index:05d}"


def _merge(total: dict, part: SplitPart) -> None:
    """Add one chunk's split statistics into a shard's (JSON-ready) totals."""
    for key in ("documents", "sentences", "units", "bytes"):
        total[key] = total.get(key, 0) + getattr(part, key)
    total["max_sentences"] = max(total.get("max_sentences", 0), part.max_sentences)
    lengths = total.setdefault("sentence_lengths", {})
    for length, count in part.sentence_lengths.items():
        lengths[str(length)] = lengths.get(str(length), 0) + count


def write_shards(
    plan: SplitPlan, data_cfg: Any, splitter, tokenizer, out_dir: Path, num_proc: int, progress: bool
) -> SkippedRecords:
    """Encode the whole stream into shards under `out_dir/shards`; complete shards already there (from
    a killed build of the same config and tokenizer) are kept, their chunks only read past."""
    folder = out_dir / SHARDS_DIR
    folder.mkdir(exist_ok=True)
    for leftover in folder.glob("*.tmp"):  # the shard a killed build was writing
        shutil.rmtree(leftover)
    done = {p.name for p in folder.iterdir() if (p / SHARD_META).is_file()}
    skipped = SkippedRecords()
    bar = tqdm(
        desc="prepare",
        total=corpus_size_hint(data_cfg),
        unit="B",
        unit_scale=True,
        disable=not progress,
        smoothing=0.05,
    )
    sizes: dict[int, int] = {}

    def todo() -> Iterator[tuple[int, Chunk]]:
        for index, (chunk, size) in enumerate(chunks_of(counted_stream(plan, skipped))):
            if shard_name(index // SHARD_CHUNKS) in done:
                bar.update(size)
                continue
            sizes[index] = size
            yield index, chunk

    dtype = token_dtype(data_cfg.vocab_size)
    writer: ShardWriter | None = None
    stats: dict[str, dict] = {}
    tokens = 0
    try:
        for index, parts in ordered_map(
            _indexed_encode, todo(), num_proc, _encoder_args(data_cfg, splitter, tokenizer)
        ):
            name = shard_name(index // SHARD_CHUNKS)
            if writer is None or writer.final.name != name:
                if writer is not None:
                    writer.finish(stats)
                writer, stats = ShardWriter(folder, name, SPLITS, dtype), {s: {} for s in SPLITS}
            for split, part in parts.items():
                writer.add(split, part.tokens, part.row_lengths)
                _merge(stats[split], part)
                tokens += len(part.tokens)
            bar.update(sizes.pop(index))
            bar.set_postfix(tokens=f"{tokens:,}", refresh=False)
        if writer is not None:
            writer.finish(stats)
            writer = None
    finally:
        if writer is not None:
            writer.abandon()
        bar.close()
    return skipped


def _indexed_encode(item: tuple[int, Chunk]) -> tuple[int, dict[str, SplitPart]]:
    return item[0], encode_chunk(item[1])
