"""Packing sentences into fixed-length training rows.

A row is `seq_len` tokens with a parallel `sentence_ids` (the index of each token's sentence, from 0
in every row). Every sentence ends with <eos>; a sentence longer than `max_sentence_len` tokens
(counting its <eos>) is cut into chunks, each closed by <eos>. A document ends with <eod>, which forms
a one-token unit of its own. A unit never straddles two rows: when the next one does not fit, the row
is closed with <pad>, and the padding gets the next sentence id so `sentence_ids` stays monotone.
On disk only the tokens are kept: rows are stored unpadded and `sentence_ids` is recomputed from the
<eos>/<eod> tokens when rows are read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID, SENTENCE_CLOSERS


def sentence_units(sentence_tokens: Sequence[int], max_sentence_len: int) -> list[list[int]]:
    """One sentence's tokens as <eos>-closed chunks of at most `max_sentence_len` tokens each."""
    body = max_sentence_len - 1
    return [list(sentence_tokens[i : i + body]) + [EOS_ID] for i in range(0, len(sentence_tokens), body)]


def document_units(encoded_sentences: Iterable[Sequence[int]], max_sentence_len: int) -> list[list[int]]:
    units = [unit for tokens in encoded_sentences for unit in sentence_units(tokens, max_sentence_len)]
    return units + [[EOD_ID]]


def pack_units(
    units: Sequence[Sequence[int]], seq_len: int, dtype=np.uint16
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy packing: (all tokens of `units` in order, flat; the length of each row).

    Rows are stored without their padding: a row is the next `length` tokens of the flat array, padded
    to `seq_len` when read (`padded_rows`), so padding costs no disk."""
    lengths: list[int] = []
    row = 0
    for unit in units:
        if len(unit) > seq_len:
            raise ValueError(f"a unit of {len(unit)} tokens cannot fit a row of {seq_len}")
        if row + len(unit) > seq_len:
            lengths.append(row)
            row = 0
        row += len(unit)
    if row:
        lengths.append(row)
    tokens = np.fromiter((t for unit in units for t in unit), dtype=dtype, count=sum(lengths))
    return tokens, np.asarray(lengths, dtype=np.int64)


def sentence_ids_of(input_ids: np.ndarray) -> np.ndarray:
    """The sentence index of every token of (rows, seq_len) packed rows, recovered from <eos>/<eod>:
    the number of sentence closers before it in its row (padding gets the next index)."""
    closers = np.isin(input_ids, SENTENCE_CLOSERS)
    return np.cumsum(closers, axis=-1, dtype=np.int64) - closers


def padded_rows(
    flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, sentence_ids), both (rows, seq_len) int64, for rows `flat[starts[i]:ends[i]]`."""
    input_ids = np.full((len(starts), seq_len), PAD_ID, dtype=np.int64)
    for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        input_ids[i, : end - start] = flat[start:end]
    return input_ids, sentence_ids_of(input_ids)
