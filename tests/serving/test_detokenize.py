"""Streamed text: pieces of whole characters that join to exactly what generate.py prints, and stop
strings cut where OpenAI cuts them, even when they arrive split across pieces."""

from __future__ import annotations

import random

import pytest

from gpthf.data.special_tokens import EOD_ID, EOS_ID, SPECIAL_TOKENS
from gpthf.data.tokenizer import train_tokenizer
from gpthf.generation.prompts import decode_continuation
from gpthf.serving.detokenize import REPLACEMENT, IncrementalText, StopText

TEXT = [
    "Café crème costs 3 € in Zürich.",
    "Ωμέγα and 東京 are far apart.",
    "Emoji 🐝 keep bees busy, naïve or not.",
    "The plain sentence has only ASCII.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT * 4, vocab_size=300)  # small: multi-byte characters span tokens


def streamed(tokenizer, ids: list[int]) -> list[str]:
    text = IncrementalText(tokenizer)
    return [text.push(i) for i in ids] + [text.flush()]


def test_pieces_join_to_generate_py_text_for_any_tokens(tokenizer):
    """Random ids (special tokens, lone bytes of multi-byte characters, anything) stream to the text
    generate.py prints for them: decode_continuation of the whole continuation."""
    rng = random.Random(0)
    vocab = tokenizer.get_vocab_size()
    for _ in range(300):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        assert "".join(streamed(tokenizer, ids)) == decode_continuation(tokenizer, ids)


def test_pieces_hold_whole_characters_only(tokenizer):
    """Valid text split into tokens mid-character: no piece shows a half character (U+FFFD)."""
    ids = []
    for sentence in TEXT:
        ids += tokenizer.encode(sentence).ids + [EOS_ID]
    assert any(
        len(tokenizer.decode([i])) and REPLACEMENT in tokenizer.decode([i]) for i in ids
    )  # bytes split
    pieces = streamed(tokenizer, ids + [EOD_ID])
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "".join(pieces) == "".join(" " + s for s in TEXT)  # each sentence after one space, no <eos>
    assert not any(token in "".join(pieces) for token in SPECIAL_TOKENS)


def test_unfinished_bytes_come_out_at_the_end(tokenizer):
    euro = tokenizer.encode("€").ids
    lead = [i for i in euro if REPLACEMENT in tokenizer.decode([i])][:1]
    assert lead, "the tokenizer should split € into byte tokens"
    text = IncrementalText(tokenizer)
    assert text.push(lead[0]) == ""
    assert text.flush() == decode_continuation(tokenizer, lead)


@pytest.mark.parametrize(
    ("pieces", "stops", "sent", "stopped"),
    [
        (["Hello wor", "ld. User", ": hi"], ["User:"], "Hello world. ", True),
        (["ab", "c", "d"], ["cd", "bc"], "a", True),  # the earliest stop string wins
        (["Us", "e", "ful"], ["User:"], "Useful", False),  # a held prefix that never completes comes out
        (["STOP now"], ["STOP"], "", True),
        (["x", "y"], [], "xy", False),
    ],
)
def test_stop_strings_cut_the_text_even_split_across_pieces(pieces, stops, sent, stopped):
    stop = StopText(stops)
    out = [stop.feed(piece) for piece in pieces]
    out.append(stop.flush())
    assert "".join(out) == sent and stop.stopped == stopped


def test_text_that_may_begin_a_stop_string_is_held_back():
    stop = StopText(["</answer>"])
    assert stop.feed("42 </ans") == "42 "  # a client must never see a stop string's start that completes
    assert stop.feed("wer> more") == "" and stop.stopped
    assert stop.flush() == "" and stop.feed("late") == ""
