"""Sentence structure from `sentence_ids`, with tensor ops only (no `.tolist()`, no per-row loops).

`sentence_ids` (B, T) is non-decreasing in every row and restarts at 0 per row (see
`gpthf.data.packing`). Everything the masks and the body need is derived here, once per forward.
"""

from __future__ import annotations

import torch


def sentence_starts(sentence_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True where a token opens a sentence (the first token of a row always does)."""
    starts = torch.ones_like(sentence_ids, dtype=torch.bool)
    starts[:, 1:] = sentence_ids[:, 1:] != sentence_ids[:, :-1]
    return starts


def positions_in_sentence(sentence_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) long: 0 at each sentence's first token, counting up inside it (the encoder's RoPE positions)."""
    index = torch.arange(sentence_ids.shape[1], device=sentence_ids.device).expand_as(sentence_ids)
    start_index = (
        torch.where(sentence_starts(sentence_ids), index, torch.zeros_like(index)).cummax(dim=1).values
    )
    return index - start_index


def sentence_end_positions(sentence_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) long: index of the last token of sentence j in each row, S = the batch's most sentences.

    Slots past a row's last sentence point at index 0; they are never attended, because a token of
    sentence k only looks at ends j < k.
    """
    batch, length = sentence_ids.shape
    n_slots = int(sentence_ids.max()) + 1 if sentence_ids.numel() else 1
    index = torch.arange(length, device=sentence_ids.device).expand(batch, length)
    ends = torch.zeros(batch, n_slots, dtype=torch.long, device=sentence_ids.device)
    return ends.scatter_reduce(1, sentence_ids.long(), index, reduce="amax", include_self=True)


def longest_sentence(sentence_ids: torch.Tensor) -> int:
    """Tokens in the longest sentence of the batch (one host sync): how far back a token's own
    sentence, the only keys the encoder lets it see, can start."""
    return int(positions_in_sentence(sentence_ids).max()) + 1 if sentence_ids.numel() else 1


def window_mask(sentence_ids: torch.Tensor, start: int, end: int, first_key: int) -> torch.Tensor:
    """(B, 1, end - start, end - first_key) bool, True = may attend: queries start..end-1 against
    keys first_key..end-1, causal inside a sentence, blind across sentences."""
    queries, keys = sentence_ids[:, start:end], sentence_ids[:, first_key:end]
    same = queries[:, :, None] == keys[:, None, :]  # (B, Tq, Tk)
    key_index = torch.arange(first_key, end, device=sentence_ids.device)
    query_index = torch.arange(start, end, device=sentence_ids.device)
    causal = key_index[None, :] <= query_index[:, None]  # (Tq, Tk)
    return (same & causal).unsqueeze(1)


def block_causal_mask(sentence_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool, True = may attend: causal inside a sentence, blind across sentences."""
    length = sentence_ids.shape[1]
    return window_mask(sentence_ids, 0, length, 0)
