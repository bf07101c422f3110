import torch

from gpthf.attention.sentences import block_causal_mask, positions_in_sentence, sentence_end_positions
from tests.models.helpers import random_batch


def reference_structure(sentence_ids: torch.Tensor):
    """Plain-Python versions of the tensor-op helpers, to check them against."""
    positions, ends, masks = [], [], []
    for row in sentence_ids.tolist():
        positions.append([sum(1 for s in row[:t] if s == row[t]) for t in range(len(row))])
        ends.append([max(t for t, s in enumerate(row) if s == j) for j in range(max(row) + 1)])
        masks.append([[row[i] == row[j] and j <= i for j in range(len(row))] for i in range(len(row))])
    return positions, ends, masks


def test_structure_helpers_match_a_python_reference():
    _, sentence_ids = random_batch(3, 40, seed=1)
    positions, ends, masks = reference_structure(sentence_ids)
    assert positions_in_sentence(sentence_ids).tolist() == positions
    computed_ends = sentence_end_positions(sentence_ids)
    for row, row_ends in enumerate(ends):
        assert computed_ends[row, : len(row_ends)].tolist() == row_ends
    assert block_causal_mask(sentence_ids)[:, 0].tolist() == masks
