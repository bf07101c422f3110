"""The fast sentence encoder gives exactly the tokenizer's ids."""

import random

import pytest

from gpthf.data.tokenizer import SentenceEncoder, encode_sentences, train_tokenizer

TRICKY = [
    "Hello world.", "It's 2024, isn't it?  Yes!!", "a\tb", "Crème brûlée 5€", "<eos> and <pad>", " leading",
    "  two", "trailing ", "123abc", "'s 've", "x" * 300, "...", "A  B   C", "", " ", "don't'S'LL",
    "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;,./", "日本語 and emoji 🙂.", "line\nbreak", "\x1cgroup\x1fseparators",
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(1)
    words = ["the", "fox", "ran", "it's", "don't", "42", "Hello", "world", "!", "...", "über", "naïve"]
    return train_tokenizer([" ".join(rng.choices(words, k=12)) for _ in range(400)], vocab_size=400)


def test_fast_path_equals_the_tokenizer_on_tricky_and_random_ascii(tokenizer):
    rng = random.Random(0)
    alphabet = "".join(chr(c) for c in range(32, 127))
    texts = TRICKY + ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(3000)]
    encoder = SentenceEncoder(tokenizer)
    assert encoder.fast
    expected = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert encoder(texts) == expected
    assert encoder(texts) == expected, "a warm word cache changes nothing"
    assert encode_sentences(tokenizer, texts[:50]) == expected[:50]


def test_literal_special_strings_in_a_prompt_are_text(tokenizer):
    (ids,) = encode_sentences(tokenizer, ["say <eos> or <eod> or <pad> aloud"])
    assert min(ids) >= 4, "no special id comes from text"
