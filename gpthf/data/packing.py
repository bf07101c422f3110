"""Packing sentences into fixed-length training rows.

A row is `seq_len` tokens with a parallel `sentence_ids` (the index of each token's sentence, from 0
in every row). Every sentence ends with <eos>; a sentence longer than `max_sentence_len` tokens
(counting its <eos>) is cut into chunks, each closed by <eos>. A document ends with <eod>, which forms
a one-token unit of its own. A unit never straddles two rows: when the next one does not fit, the row
is closed with <pad>, and the padding gets the next sentence id so `sentence_ids` stays monotone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID


def sentence_units(sentence_tokens: Sequence[int], max_sentence_len: int) -> list[list[int]]:
    """One sentence's tokens as <eos>-closed chunks of at most `max_sentence_len` tokens each."""
    body = max_sentence_len - 1
    return [list(sentence_tokens[i : i + body]) + [EOS_ID] for i in range(0, len(sentence_tokens), body)]


def document_units(encoded_sentences: Iterable[Sequence[int]], max_sentence_len: int) -> list[list[int]]:
    units = [unit for tokens in encoded_sentences for unit in sentence_units(tokens, max_sentence_len)]
    return units + [[EOD_ID]]


def pack_rows(units: Iterable[Sequence[int]], seq_len: int) -> Iterator[tuple[list[int], list[int]]]:
    """Yield `(input_ids, sentence_ids)` rows of exactly `seq_len` tokens."""
    input_ids: list[int] = []
    sentence_ids: list[int] = []
    n_sentences = 0

    def close_row() -> tuple[list[int], list[int]]:
        padding = seq_len - len(input_ids)
        return input_ids + [PAD_ID] * padding, sentence_ids + [n_sentences] * padding

    for unit in units:
        if len(unit) > seq_len:
            raise ValueError(f"a unit of {len(unit)} tokens cannot fit a row of {seq_len}")
        if len(input_ids) + len(unit) > seq_len:
            yield close_row()
            input_ids, sentence_ids, n_sentences = [], [], 0
        input_ids.extend(unit)
        sentence_ids.extend([n_sentences] * len(unit))
        n_sentences += 1
    if input_ids:
        yield close_row()
