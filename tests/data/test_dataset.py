import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpthf.config import load_config
from gpthf.data import dataset as dataset_module
from gpthf.data.dataset import SPLITS, prepare_data
from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID
from gpthf.data.splitter import build_splitter
from gpthf.data.tokenizer import decode_sentence, encode_sentences, load_tokenizer
from gpthf.errors import DataError
from tests.conftest import STORY, TALES, tiny_overrides


def all_rows(split, limit: int | None = None):
    return split.rows(np.arange(len(split) if limit is None else min(limit, len(split))))


def units_of(rows) -> list[list[int]]:
    units = []
    for input_ids, sentence_ids in zip(*rows):
        for sid in np.unique(sentence_ids):
            tokens = input_ids[(sentence_ids == sid) & (input_ids != PAD_ID)]
            if tokens.size:
                units.append(tokens.tolist())
    return units


def test_rows_decode_back_to_the_source_sentences(tmp_path, tales_dir):
    cfg = load_config(tiny_overrides(tmp_path, tales_dir, seq_len=64, max_sentence_len=64))
    prepared = prepare_data(cfg, progress=False)
    tokenizer = prepared.tokenizer()
    splitter = build_splitter()
    decoded = [
        decode_sentence(tokenizer, u)
        for s in SPLITS
        for u in units_of(all_rows(prepared.split(s)))
        if u != [EOD_ID]
    ]
    expected = [sentence for tale in TALES for sentence in splitter.split(tale)]
    assert sorted(decoded) == sorted(expected)
    for split in SPLITS:
        input_ids, sentence_ids = all_rows(prepared.split(split))
        assert input_ids.shape == sentence_ids.shape == (len(prepared.split(split)), cfg.data.seq_len)


def test_tokenizer_round_trip_on_unicode_and_specials(tales_cfg):
    tokenizer = prepare_data(tales_cfg, progress=False).tokenizer()
    sentence = "Crème brûlée costs 5€ — naïve “quotes”, 日本語 and emoji 🙂."
    (ids,) = encode_sentences(tokenizer, [sentence])
    assert min(ids) >= 4, "ordinary text never yields special ids"
    assert decode_sentence(tokenizer, ids + [EOS_ID]) == sentence
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "<eos>", "<eod>", "<unk>")] == [0, 1, 2, 3]


def test_cache_is_reused_for_the_same_config(tales_cfg, monkeypatch):
    first = prepare_data(tales_cfg, progress=False)
    monkeypatch.setattr(
        dataset_module, "build_dataset", lambda *a, **k: pytest.fail("rebuilt a cached data set")
    )
    assert prepare_data(tales_cfg, progress=False).path == first.path


@pytest.mark.slow  # CI time: run with `pytest -m slow`
def test_cache_is_rebuilt_when_config_or_corpus_changes(tmp_path, tales_dir, tales_cfg):
    first = prepare_data(tales_cfg, progress=False).path
    other_cfg = load_config(tiny_overrides(tmp_path / "cache", tales_dir, seq_len=48))
    assert prepare_data(other_cfg, progress=False).path != first
    (tales_dir / "tale0.txt").write_text(TALES[0] + " A new sentence ends the tale.")
    assert prepare_data(tales_cfg, progress=False).path != first


def test_killed_build_leaves_no_cache_and_is_cleaned_up(tales_cfg, monkeypatch):
    def dying_write(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill in the middle of writing the shards

    real_write = dataset_module.write_shards
    monkeypatch.setattr(dataset_module, "write_shards", dying_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(tales_cfg, progress=False)
    cache = Path(tales_cfg.cache_dir)
    assert not [p for p in cache.iterdir() if ".partial-" not in p.name], (
        "no complete-looking cache after a crash"
    )
    # A partial folder from a dead process (pid 2**22 + 1 is beyond any live pid here) is adopted next
    # time: its tokenizer is kept, and nothing else is left behind.
    for partial in cache.iterdir():
        partial.rename(cache / f"{partial.name.split('.partial-')[0]}.partial-{2**22 + 1}-dead")
    monkeypatch.setattr(dataset_module, "write_shards", real_write)
    monkeypatch.setattr(
        dataset_module,
        "train_sample_tokenizer",
        lambda *a: pytest.fail("retrained the dead build's tokenizer"),
    )
    prepared = prepare_data(tales_cfg, progress=False)
    assert [p.name for p in cache.iterdir()] == [prepared.path.name]
    assert len(prepared.split("train")) > 0


def test_a_killed_build_keeps_its_finished_shards_and_ends_identical(tmp_path, tales_dir, monkeypatch):
    """One document per chunk and one chunk per shard: a build killed after two shards is continued by the next
    run, which encodes only the rest, and the result is byte-identical to an uninterrupted build."""
    from gpthf.data import build as build_module
    from gpthf.data.shards import ShardWriter

    monkeypatch.setattr(build_module, "CHUNK_BYTES", 1)  # one document per chunk
    monkeypatch.setattr(build_module, "SHARD_CHUNKS", 1)
    clean = prepare_data(
        load_config(tiny_overrides(tmp_path / "clean", tales_dir, num_proc=1)), progress=False
    )
    n_shards = len(clean.stats["shards"])
    assert n_shards >= 3

    cfg = load_config(tiny_overrides(tmp_path / "cache", tales_dir, num_proc=1))
    real_finish, finished = ShardWriter.finish, []

    def finish_then_die(self, stats):
        real_finish(self, stats)
        finished.append(self.final.name)
        if len(finished) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "finish", finish_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, progress=False)
    (partial,) = Path(cfg.cache_dir).iterdir()
    partial.rename(partial.with_name(f"{partial.name.split('.partial-')[0]}.partial-{2**22 + 1}-dead"))
    monkeypatch.setattr(ShardWriter, "finish", real_finish)
    encoded = []
    real_encode = build_module.encode_chunk
    monkeypatch.setattr(build_module, "encode_chunk", lambda chunk: encoded.append(1) or real_encode(chunk))
    resumed = prepare_data(cfg, progress=False)
    assert len(encoded) == n_shards - 2, "the two finished shards were reused, not encoded again"
    assert tree_bytes(resumed.path) == tree_bytes(clean.path)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_split_is_by_document_and_deterministic(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "\n".join(f'{{"text": "Document {i} starts. It has words {i}. It ends here."}}' for i in range(40))
    )
    overrides = tiny_overrides(tmp_path / "cache", corpus, validation_fraction=0.1, test_fraction=0.1)
    stats = prepare_data(load_config(overrides), progress=False).stats["splits"]
    assert [stats[s]["documents"] for s in SPLITS] == [32, 4, 4]
    again = prepare_data(load_config(overrides + [f"cache_dir={tmp_path / 'other'}"]), progress=False)
    assert again.stats["splits"] == stats


def test_single_document_is_split_by_sentences(tmp_path):
    corpus = tmp_path / "story.txt"
    corpus.write_text(STORY * 5)
    stats = prepare_data(
        load_config(tiny_overrides(tmp_path / "cache", corpus, validation_fraction=0.2, test_fraction=0.2)),
        progress=False,
    ).stats
    assert all(stats["splits"][s]["sentences"] > 0 for s in SPLITS)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "has no text"),
        (b"   \n\n  ", "has no text"),
        (b"\x7fELF\x02\x01\x00\x00binary", "binary .*NUL bytes"),
        ("caf\xe9 au lait. Tr\xe8s bon.".encode("latin-1"), "undecodable .*byte 0xe9.*data.encoding"),
    ],
)
def test_bad_corpus_files_give_clear_errors(tmp_path, content, message):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare_data(load_config(tiny_overrides(tmp_path / "cache", corpus)), progress=False)


def test_latin1_corpus_works_when_declared(tmp_path):
    corpus = tmp_path / "latin.txt"
    corpus.write_bytes(("Caf\xe9 au lait. Tr\xe8s bon. " * 20).encode("latin-1"))
    prepared = prepare_data(
        load_config(tiny_overrides(tmp_path / "cache", corpus, encoding="latin-1")), progress=False
    )
    assert "Café" in decode_sentence(prepared.tokenizer(), units_of(all_rows(prepared.split("train"), 1))[0])


def test_a_100k_character_sentence_is_chunked(tmp_path):
    corpus = tmp_path / "long.txt"
    corpus.write_text("word " * 20_000 + "end. Short one. Another one.")
    cfg = load_config(tiny_overrides(tmp_path / "cache", corpus, validation_fraction=0, test_fraction=0))
    prepared = prepare_data(cfg, progress=False)
    units = units_of(all_rows(prepared.split("train")))
    assert len(units) > 1000 and all(len(u) <= cfg.data.max_sentence_len for u in units)
    assert all(u[-1] in (EOS_ID, EOD_ID) for u in units)


def test_malformed_records_are_skipped_counted_and_warned_once(tmp_path, caplog):
    corpus = tmp_path / "bad.jsonl"
    good = [f'{{"text": "Record {i} is fine. It has two sentences."}}' for i in range(6)]
    bad = ["not json", '{"text": null}', '{"text": 12345}', '{"text": ["a"]}', '{"body": "x."}', "[1, 2]"]
    corpus.write_bytes(("\n".join(good[:3] + bad + good[3:]) + "\n").encode() + b'{"text": "caf\xe9."}\n')
    with caplog.at_level("WARNING"):
        prepared = prepare_data(load_config(tiny_overrides(tmp_path / "cache", corpus)), progress=False)
    assert prepared.stats["skipped_records"] == {
        "no text field": 2,
        "not JSON": 1,
        "text not a string": 3,
        "undecodable": 1,
    }
    assert sum(prepared.stats["splits"][s]["documents"] for s in SPLITS) == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if "malformed" in w]) == 1
    assert "bad.jsonl:4" in warnings[0], "the warning names where each kind of problem was first seen"


def test_a_tiny_corpus_counts_its_skipped_records_too(tmp_path, caplog):
    """Under three documents the split is cut from the head of the stream; the rest is still counted."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "story.txt").write_text(STORY * 5)
    (corpus / "bad.jsonl").write_text("not json\n")
    with caplog.at_level("WARNING"):
        prepared = prepare_data(load_config(tiny_overrides(tmp_path / "cache", corpus)), progress=False)
    assert prepared.stats["skipped_records"] == {"not JSON": 1}
    assert any("bad.jsonl:1" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_a_corpus_of_only_malformed_records_is_one_error(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"body": "x."}\n{"body": "y."}\n')
    with pytest.raises(DataError, match=r"has no text: 2 no text field .*data.text_field"):
        prepare_data(load_config(tiny_overrides(tmp_path / "cache", corpus)), progress=False)


def test_missing_path_and_hub_offline_name_the_alternatives(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(load_config(tiny_overrides(tmp_path / "cache", tmp_path / "nope")), progress=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = load_config([f"cache_dir={tmp_path}", "data=hub", "data.path=some/dataset"])
    with pytest.raises(DataError, match="data=local data.path"):
        prepare_data(cfg, progress=False)


def test_bad_data_config_values_are_refused(tmp_path, tales_dir):
    """At load time from overrides, and by the data layer itself for configs built elsewhere."""
    from omegaconf import OmegaConf

    from gpthf.errors import ConfigError

    with pytest.raises(ConfigError, match="max_sentence_len"):
        load_config(tiny_overrides(tmp_path, tales_dir, max_sentence_len=64))
    with pytest.raises(ConfigError, match="vocab_size"):
        load_config(tiny_overrides(tmp_path, tales_dir, vocab_size=100))
    cfg = OmegaConf.to_container(load_config(tiny_overrides(tmp_path, tales_dir)))
    for bad, message in [
        ({"max_sentence_len": 64}, "max_sentence_len"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"max_bytes": 0}, "max_bytes"),
    ]:
        broken = OmegaConf.create({**cfg, "data": {**cfg["data"], **bad}})
        with pytest.raises(DataError, match=message):
            prepare_data(broken, progress=False)


def test_tokenizer_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="tokenizer file .* is missing"):
        load_tokenizer(tmp_path)


def test_embedded_corpus_builds_with_stats(tmp_path_factory):
    cfg = load_config([f"cache_dir={tmp_path_factory.mktemp('kjv')}"])
    prepared = prepare_data(cfg, progress=False)
    stats = prepared.stats["splits"]
    assert stats["train"]["documents"] + stats["validation"]["documents"] + stats["test"]["documents"] == 66
    assert (
        stats["train"]["tokens"] > 500_000 and stats["validation"]["rows"] > 0 and stats["test"]["rows"] > 0
    )
    first_unit = units_of(all_rows(prepared.split("validation"), 4))[0]
    assert first_unit[-1] == EOS_ID and len(first_unit) <= cfg.data.max_sentence_len


def test_prepare_cli_prints_stats_and_fails_in_one_line(tmp_path, tales_dir):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run(
        [sys.executable, "-m", "gpthf.data.prepare", *tiny_overrides(tmp_path, tales_dir)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert "documents" in ok.stdout and "validation" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "gpthf.data.prepare", "data.seq_lenn=3"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "valid keys of data" in bad.stderr
