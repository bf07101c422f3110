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


def units_of(rows) -> list[list[int]]:
    units = []
    for input_ids, sentence_ids in zip(rows["input_ids"], rows["sentence_ids"]):
        input_ids, sentence_ids = np.asarray(input_ids), np.asarray(sentence_ids)
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
        decode_sentence(tokenizer, u) for s in SPLITS for u in units_of(prepared.split(s)[:]) if u != [EOD_ID]
    ]
    expected = [sentence for tale in TALES for sentence in splitter.split(tale)]
    assert sorted(decoded) == sorted(expected)
    for split in SPLITS:
        rows = prepared.split(split)
        assert all(len(r) == cfg.data.seq_len for r in rows["input_ids"])


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


def test_cache_is_rebuilt_when_config_or_corpus_changes(tmp_path, tales_dir, tales_cfg):
    first = prepare_data(tales_cfg, progress=False).path
    other_cfg = load_config(tiny_overrides(tmp_path / "cache", tales_dir, seq_len=48))
    assert prepare_data(other_cfg, progress=False).path != first
    (tales_dir / "tale0.txt").write_text(TALES[0] + " A new sentence ends the tale.")
    assert prepare_data(tales_cfg, progress=False).path != first


def test_killed_build_leaves_no_cache_and_is_cleaned_up(tales_cfg, monkeypatch):
    calls = {"n": 0}
    real_pack = dataset_module.pack_split

    def dying_pack(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # stands in for a kill in the middle of writing the splits
        return real_pack(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "pack_split", dying_pack)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(tales_cfg, progress=False)
    cache = Path(tales_cfg.cache_dir)
    assert not [p for p in cache.iterdir() if ".partial-" not in p.name], (
        "no complete-looking cache after a crash"
    )
    # A partial folder from a dead process (pid 2**22 + 1 is beyond any live pid here) is removed next time.
    for partial in cache.iterdir():
        partial.rename(cache / f"{partial.name.split('.partial-')[0]}.partial-{2**22 + 1}-dead")
    monkeypatch.setattr(dataset_module, "pack_split", real_pack)
    prepared = prepare_data(tales_cfg, progress=False)
    assert [p.name for p in cache.iterdir()] == [prepared.path.name]


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
        (b"\x7fELF\x02\x01\x00\x00binary", "looks binary"),
        ("caf\xe9 au lait. Tr\xe8s bon.".encode("latin-1"), "not valid utf-8"),
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
    assert "Café" in decode_sentence(prepared.tokenizer(), units_of(prepared.split("train")[:1])[0])


def test_a_100k_character_sentence_is_chunked(tmp_path):
    corpus = tmp_path / "long.txt"
    corpus.write_text("word " * 20_000 + "end. Short one. Another one.")
    cfg = load_config(tiny_overrides(tmp_path / "cache", corpus, validation_fraction=0, test_fraction=0))
    prepared = prepare_data(cfg, progress=False)
    units = units_of(prepared.split("train")[:])
    assert len(units) > 1000 and all(len(u) <= cfg.data.max_sentence_len for u in units)
    assert all(u[-1] in (EOS_ID, EOD_ID) for u in units)


def test_malformed_jsonl_names_the_line(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "fine."}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        prepare_data(load_config(tiny_overrides(tmp_path / "cache", corpus)), progress=False)


def test_missing_path_and_hub_offline_name_the_alternatives(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(load_config(tiny_overrides(tmp_path / "cache", tmp_path / "nope")), progress=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = load_config([f"cache_dir={tmp_path}", "data=hub", "data.path=some/dataset"])
    with pytest.raises(DataError, match="data=local data.path"):
        prepare_data(cfg, progress=False)


def test_bad_data_config_values_are_refused(tmp_path, tales_dir):
    with pytest.raises(DataError, match="max_sentence_len"):
        prepare_data(load_config(tiny_overrides(tmp_path, tales_dir, max_sentence_len=64)), progress=False)
    with pytest.raises(DataError, match="vocab_size"):
        prepare_data(load_config(tiny_overrides(tmp_path, tales_dir, vocab_size=100)), progress=False)


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
    rows = prepared.split("validation")[:4]
    first_unit = units_of(rows)[0]
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
