import random

import numpy as np
import pytest

from gpthf.data.packing import document_units, pack_units, padded_rows, sentence_units
from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS


def pack_rows(units, seq_len):
    """Rows as the loader reads them: stored unpadded, padded and given sentence ids on reading."""
    flat, lengths = pack_units(units, seq_len)
    ends = np.cumsum(lengths)
    input_ids, sentence_ids = padded_rows(flat, ends - lengths, ends, seq_len)
    return list(zip(input_ids.tolist(), sentence_ids.tolist()))


def random_documents(rng: random.Random, n_docs: int, max_sentence_tokens: int) -> list[list[list[int]]]:
    first = len(SPECIAL_TOKENS)
    return [
        [
            [rng.randrange(first, 100) for _ in range(rng.randint(1, max_sentence_tokens))]
            for _ in range(rng.randint(1, 6))
        ]
        for _ in range(n_docs)
    ]


def test_long_sentence_is_cut_into_eos_closed_chunks():
    units = sentence_units(list(range(10, 30)), max_sentence_len=8)
    assert [len(u) for u in units] == [8, 8, 7]
    assert all(u[-1] == EOS_ID for u in units)
    assert [t for u in units for t in u[:-1]] == list(range(10, 30))


@pytest.mark.parametrize("seed", range(5))
def test_packing_invariants(seed):
    rng = random.Random(seed)
    seq_len, max_sentence_len = 24, 10
    docs = random_documents(rng, 12, 25)
    units = [u for doc in docs for u in document_units(doc, max_sentence_len)]
    rows = list(pack_rows(units, seq_len))
    for input_ids, sentence_ids in rows:
        assert len(input_ids) == len(sentence_ids) == seq_len
        assert sentence_ids[0] == 0
        assert all(b - a in (0, 1) for a, b in zip(sentence_ids, sentence_ids[1:])), (
            "sentence ids are monotone steps"
        )
        real = [i for i, t in enumerate(input_ids) if t != PAD_ID]
        assert real == list(range(len(real))), "padding only at the end"
        for sid in set(sentence_ids[: len(real)]):
            tokens = [t for t, s in zip(input_ids, sentence_ids) if s == sid]
            assert tokens[-1] in (EOS_ID, EOD_ID), "every sentence ends with <eos> (or is the <eod> unit)"
            assert len(tokens) <= max_sentence_len
    # Unpacking the rows gives back exactly the units, in order: nothing lost, nothing split.
    unpacked = []
    for input_ids, sentence_ids in rows:
        for sid in sorted(set(sentence_ids)):
            tokens = [t for t, s in zip(input_ids, sentence_ids) if s == sid and t != PAD_ID]
            if tokens:
                unpacked.append(tokens)
    assert unpacked == units


def test_every_document_ends_with_eod_after_its_last_eos():
    units = document_units([[10, 11], [12]], max_sentence_len=8)
    assert units == [[10, 11, EOS_ID], [12, EOS_ID], [EOD_ID]]


def test_a_unit_longer_than_a_row_is_refused():
    with pytest.raises(ValueError):
        pack_units([[5] * 9], seq_len=8)


def test_sentence_ids_are_recovered_from_the_closing_tokens():
    units = [[10, 11, EOS_ID], [12, EOS_ID], [EOD_ID], [13, 14, 15, EOS_ID]]
    rows = pack_rows(units, seq_len=8)
    assert rows == [
        ([10, 11, EOS_ID, 12, EOS_ID, EOD_ID, PAD_ID, PAD_ID], [0, 0, 0, 1, 1, 2, 3, 3]),
        ([13, 14, 15, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID], [0, 0, 0, 0, 1, 1, 1, 1]),
    ]
    flat, lengths = pack_units(units, seq_len=8)
    assert flat.dtype == np.uint16 and lengths.tolist() == [6, 4], "rows are stored without their padding"
