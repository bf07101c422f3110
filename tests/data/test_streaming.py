"""The streaming pipeline at scale, in miniature: every property that lets a 40 GB corpus be prepared
and read in bounded memory, checked on corpora of a few kilobytes with the size constants shrunk."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from gpthf.config import load_config
from gpthf.data import build as build_module
from gpthf.data import readers as readers_module
from gpthf.data import splits as splits_module
from gpthf.data.dataset import SPLITS, prepare_data
from gpthf.data.permutation import Permutation
from gpthf.data.special_tokens import EOD_ID, EOS_ID
from gpthf.data.splitter import build_splitter
from gpthf.data.tokenizer import decode_sentence
from gpthf.errors import DataError
from gpthf.training.batches import RowOrder
from tests.conftest import tiny_overrides
from tests.data.test_dataset import all_rows, tree_bytes, units_of

WORDS = "the fox ran into a wood where hounds and bees keep honey in summer by river".split()


def sentences_of_record(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(
        " ".join(rng.choice(WORDS, rng.integers(3, 9))).capitalize() + "." for _ in range(rng.integers(1, 5))
    )


def write_records(path: Path, n: int) -> list[dict]:
    records = [{"text": f"Record {i}. " + sentences_of_record(i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def build(tmp_path: Path, corpus: Path, name: str = "cache", **data):
    return prepare_data(load_config(tiny_overrides(tmp_path / name, corpus, **data)), progress=False)


def shard_bytes(prepared) -> dict[str, bytes]:
    return {
        k: v for k, v in tree_bytes(prepared.path).items() if k.startswith("shards/") or k == "tokenizer.json"
    }


def test_output_is_byte_identical_for_any_number_of_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "CHUNK_BYTES", 600)  # several chunks, so two workers share them
    monkeypatch.setattr(build_module, "SHARD_CHUNKS", 2)
    corpus = tmp_path / "c.jsonl"
    write_records(corpus, 150)
    one = build(tmp_path, corpus, "one", num_proc=1)
    two = build(tmp_path, corpus, "two", num_proc=2)
    assert len(one.stats["shards"]) >= 3
    assert tree_bytes(one.path) == tree_bytes(two.path)
    assert one.path.name == two.path.name, "num_proc only changes speed: same cache key"


@pytest.mark.slow  # CI time: run with `pytest -m slow`
def test_every_file_format_streams_the_same_corpus(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    records = write_records(tmp_path / "plain.jsonl", 40)
    text = (tmp_path / "plain.jsonl").read_bytes()
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "c.jsonl.gz").write_bytes(gzip.compress(text))
    (tmp_path / "zst").mkdir()
    (tmp_path / "zst" / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    (tmp_path / "pq").mkdir()
    pq.write_table(
        pa.table({"text": [r["text"] for r in records]}), tmp_path / "pq" / "c.parquet", row_group_size=7
    )
    everything_train = {"validation_fraction": 0, "test_fraction": 0}
    reference = shard_bytes(build(tmp_path, tmp_path / "plain.jsonl", "plain", **everything_train))
    for name in ("gz", "zst", "pq"):
        prepared = build(tmp_path, tmp_path / name, name, **everything_train)
        assert prepared.stats["splits"]["train"]["documents"] == 40
        assert shard_bytes(prepared) == reference, name


def test_max_bytes_takes_whole_documents_from_the_start(tmp_path):
    corpus = tmp_path / "c.jsonl"
    records = write_records(corpus, 40)
    limit = sum(len(r["text"]) for r in records[:10])
    prepared = build(tmp_path, corpus, max_bytes=limit)
    assert sum(prepared.stats["splits"][s]["documents"] for s in SPLITS) == 10


def test_the_tokenizer_is_trained_on_a_bounded_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "CHUNK_BYTES", 1)
    seen = []
    real_train = build_module.train_tokenizer
    monkeypatch.setattr(build_module, "train_tokenizer", lambda s, v: seen.extend(s) or real_train(s, v))
    corpus = tmp_path / "c.jsonl"
    records = write_records(corpus, 60)
    prepared = build(tmp_path, corpus, tokenizer_sample_mb=500 / 1e6, num_proc=1)
    assert 0 < len(seen) < prepared.stats["splits"]["train"]["sentences"] / 4
    assert sum(len(s) for s in seen) < 500 + max(len(r["text"]) for r in records) * 2


def test_hub_path_streams_through_datasets_offline(tmp_path, monkeypatch):
    """`data=hub` with the hub stood in by a local JSON file loaded the way the hub is: streaming."""
    import datasets

    from gpthf.data import sources as sources_module

    corpus = tmp_path / "c.jsonl"
    write_records(corpus, 30)
    real_load = datasets.load_dataset
    calls = []

    def local_hub(name, split, streaming):
        calls.append((name, split, streaming))
        return real_load("json", data_files=str(corpus), split=split, streaming=streaming)

    monkeypatch.setattr(sources_module, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", local_hub)
    cfg = load_config(
        [f"cache_dir={tmp_path / 'hub'}", "data=hub", "data.path=someone/corpus"]
        + tiny_overrides(tmp_path, corpus)[3:]
    )
    prepared = prepare_data(cfg, progress=False)
    assert calls and all(streaming for _, _, streaming in calls)
    assert isinstance(
        real_load("json", data_files=str(corpus), split="train", streaming=True), datasets.IterableDataset
    )
    assert sum(prepared.stats["splits"][s]["documents"] for s in SPLITS) == 30


@pytest.mark.parametrize("damage", ["truncate tokens", "truncate offsets", "delete"])
def test_a_damaged_shard_is_one_error_naming_it_and_the_fix(tmp_path, tales_dir, damage):
    prepared = build(tmp_path, tales_dir)
    target = prepared.path / "shards" / "00000" / ("train.idx" if "offsets" in damage else "train.bin")
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:-2])
    with pytest.raises(DataError, match=rf"{target.name} is corrupt or truncated .*delete the cache folder"):
        prepared.split("train")


def test_a_shard_with_impossible_tokens_is_refused_when_read(tmp_path, tales_dir):
    prepared = build(tmp_path, tales_dir)
    target = prepared.path / "shards" / "00000" / "train.bin"
    tokens = np.fromfile(target, dtype=np.uint16)
    tokens[0] = 65535
    tokens.tofile(target)
    with pytest.raises(DataError, match="token id 65535"):
        all_rows(prepared.split("train"))


def test_large_corpora_split_by_hash_threshold_and_never_move_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(splits_module, "EXACT_SPLIT_MAX_DOCS", 20)
    corpus = tmp_path / "c.jsonl"
    write_records(corpus, 400)
    cfg = load_config(tiny_overrides(tmp_path, corpus, validation_fraction=0.1, test_fraction=0.1))
    plan = splits_module.plan_splits(cfg.data)
    assert plan.regime == "hashed"
    assigned = {doc.doc_id: split for split, doc in plan.stream()}
    counts = {s: list(assigned.values()).count(s) for s in SPLITS}
    assert 20 <= counts["validation"] <= 60 and 20 <= counts["test"] <= 60
    write_records(corpus, 800)  # twice the corpus: the first 400 documents keep their splits
    bigger = {doc.doc_id: split for split, doc in splits_module.plan_splits(cfg.data).stream()}
    assert all(bigger[d] == s for d, s in assigned.items())


def test_a_huge_text_file_streams_as_paragraph_aligned_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_module, "TXT_BLOCK_BYTES", 300)
    paragraphs = [sentences_of_record(i) for i in range(40)]
    corpus = tmp_path / "book.txt"
    corpus.write_text("\n\n".join(paragraphs))
    prepared = build(tmp_path, corpus, seq_len=64, max_sentence_len=64)
    assert prepared.stats["split_regime"] == "ranked", "the blocks are documents of their own"
    tokenizer = prepared.tokenizer()
    decoded = [
        decode_sentence(tokenizer, u)
        for s in SPLITS
        for u in units_of(all_rows(prepared.split(s)))
        if u != [EOD_ID]
    ]
    splitter = build_splitter()
    assert sorted(decoded) == sorted(s for p in paragraphs for s in splitter.split(p)), (
        "no sentence cut or lost"
    )


def test_literal_special_token_strings_are_ordinary_text(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("He wrote <eos> and <eod> and <pad> on the wall. " * 6 + "Then he left.")
    prepared = build(
        tmp_path, corpus, seq_len=64, max_sentence_len=64, validation_fraction=0, test_fraction=0
    )
    units = units_of(all_rows(prepared.split("train")))
    assert all(t not in (EOS_ID, EOD_ID) for u in units for t in u[:-1]), "specials only close units"
    assert "<eos> and <eod> and <pad>" in decode_sentence(prepared.tokenizer(), units[0])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4109])
def test_the_computed_permutation_visits_every_row_once(n):
    for seed, epoch in [(0, 0), (0, 1), (5, 0)]:
        assert sorted(Permutation(n, seed, epoch)(np.arange(n)).tolist()) == list(range(n))
    assert not np.array_equal(
        Permutation(1000, 0, 0)(np.arange(1000)), Permutation(1000, 0, 1)(np.arange(1000))
    )


def test_row_order_resumes_exactly_across_epochs():
    straight = RowOrder(10, seed=3)
    expected = np.concatenate([straight.take(4) for _ in range(7)])
    first = RowOrder(10, seed=3)
    head = np.concatenate([first.take(4) for _ in range(3)])
    resumed = RowOrder(10, seed=3)
    resumed.load_state_dict(first.state_dict())
    tail = np.concatenate([resumed.take(4) for _ in range(4)])
    assert np.array_equal(np.concatenate([head, tail]), expected)
    assert sorted(expected[:10].tolist()) == list(range(10)), "an epoch is a permutation"
