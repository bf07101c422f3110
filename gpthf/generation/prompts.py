"""Text in and out of generation, tokenized exactly as the training data was.

A prompt is split into sentences with the same splitter, each sentence encoded on its own and closed
with <eos> (chunked at `max_sentence_len` like packing does). A prompt that does not end with
sentence punctuation leaves its last sentence open, so the model continues that sentence.
"""

from __future__ import annotations

import re

from gpthf.data.packing import sentence_units
from gpthf.data.special_tokens import PAD_ID, SENTENCE_CLOSERS, SPECIAL_TOKENS
from gpthf.data.splitter import SentenceSplitter
from gpthf.data.tokenizer import encode_sentences
from gpthf.errors import GpthfError

_FINISHED = re.compile(r"""[.!?]["'”’)\]]*\s*$""")


def encode_prompt(text: str, tokenizer, splitter: SentenceSplitter, max_sentence_len: int) -> list[int]:
    if not text.strip():
        raise GpthfError("the prompt is empty; give some text to continue")
    sentences = splitter.split(text)
    ids: list[int] = []
    for tokens in encode_sentences(tokenizer, sentences):
        ids.extend(token for unit in sentence_units(tokens, max_sentence_len) for token in unit)
    if not _FINISHED.search(text):
        ids.pop()  # the last sentence is still open: drop its <eos>
    return ids


def check_token_prompt(ids: list[int], vocab_size: int, max_sentence_len: int) -> None:
    """A prompt given as token ids must be one `encode_prompt` could have made: ids of the
    vocabulary, no <pad> (never an input), and no sentence longer than training's `max_sentence_len`
    (<eos> included), so a model never sees a sentence longer than any it was trained on."""
    for i, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise GpthfError(f"token {i} is {token}; ids of this model are 0 to {vocab_size - 1}")
        if token == PAD_ID:
            raise GpthfError(f"token {i} is <pad> (id {PAD_ID}), which is never an input; leave it out")
    open_tokens = 0
    for i, token in enumerate(ids):
        open_tokens = 0 if token in SENTENCE_CLOSERS else open_tokens + 1
        if open_tokens >= max_sentence_len:
            raise GpthfError(
                f"token {i} makes a sentence of more than {max_sentence_len - 1} tokens before its <eos>; "
                f"close sentences with <eos> (id {SENTENCE_CLOSERS[0]}) as training did"
            )


def decode_continuation(tokenizer, ids: list[int]) -> str:
    """Text of generated ids; each sentence starts with a space, so the sentences join naturally."""
    return tokenizer.decode([i for i in ids if i >= len(SPECIAL_TOKENS)], skip_special_tokens=False)
