"""Sentence structure from `sentence_ids`, with tensor ops only (no `.tolist()`, no per-row loops).

`sentence_ids` (B, T) is non-decreasing in every row and restarts at 0 per row (see
`gpthf.data.packing`). Everything the masks and the body need is derived here, once per forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SentenceBounds:
    """Upper bounds on a batch's sentence structure, known on the host before the batch is.

    With them a forward takes its shapes (body slots, encoder key reach, varlen offsets) from these
    numbers instead of reading maxima back from the device: no host sync, and under `torch.compile`
    no graph break and, as long as the bounds stay the same for the run, no recompile between
    batches. They must hold for every batch they are passed with (the trainer's loader measures each
    batch on the host, `gpthf.training.batches.fitting_bounds`): larger than needed costs compute and
    changes results only by float rounding (the body's softmax runs over more masked slots) and, with
    attention dropout, by which random draws land where (the dropout mask's shape follows the slots);
    smaller is a caller's bug that nothing checks (checking would read back), and gives an index error
    (body slots) or silently wrong attention (the sdpa windows' reach, flash's max_seqlen).
    """

    sentences: int  # most sentences in any row of the batch (upper bound, >= 1)
    sentence_len: int  # most tokens in any sentence of the batch (upper bound, >= 1)

    def __post_init__(self) -> None:
        if self.sentences < 1 or self.sentence_len < 1:
            raise ValueError(
                f"SentenceBounds needs sentences >= 1 and sentence_len >= 1, "
                f"got {self.sentences}, {self.sentence_len}"
            )

    @classmethod
    def of(cls, sentence_ids: torch.Tensor) -> SentenceBounds:
        """The tightest bounds of one batch (two host syncs): for tests and one-off callers."""
        if not sentence_ids.numel():
            return cls(1, 1)
        return cls(int(sentence_ids.max()) + 1, int(positions_in_sentence(sentence_ids).max()) + 1)


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


def sentence_end_positions(sentence_ids: torch.Tensor, bounds: SentenceBounds | None = None) -> torch.Tensor:
    """(B, S) long: index of the last token of sentence j in each row, S = `bounds.sentences`, or
    without bounds the batch's most sentences (one host sync).

    Slots past a row's last sentence point at index 0; they are never attended, because a token of
    sentence k only looks at ends j < k.
    """
    batch, length = sentence_ids.shape
    if bounds is not None:
        n_slots = bounds.sentences
    else:
        n_slots = int(sentence_ids.max()) + 1 if sentence_ids.numel() else 1
    index = torch.arange(length, device=sentence_ids.device).expand(batch, length)
    ends = torch.zeros(batch, n_slots, dtype=torch.long, device=sentence_ids.device)
    return ends.scatter_reduce(1, sentence_ids.long(), index, reduce="amax", include_self=True)


def longest_sentence(sentence_ids: torch.Tensor, bounds: SentenceBounds | None = None) -> int:
    """Tokens in the longest sentence of the batch (`bounds.sentence_len`, or one host sync without
    bounds): how far back a token's own sentence, the only keys the encoder lets it see, can start."""
    if bounds is not None:
        return bounds.sentence_len
    return int(positions_in_sentence(sentence_ids).max()) + 1 if sentence_ids.numel() else 1


def sentence_offsets(
    sentence_ids: torch.Tensor, bounds: SentenceBounds | None = None
) -> tuple[torch.Tensor, int]:
    """Every sentence of the flattened (B*T) batch as its own sequence, as varlen kernels take them:
    (cu_seqlens (N + 1,) int32 of sentence starts then B*T, the longest sentence's length).

    Without bounds N is the batch's sentence count (`.nonzero()` and a max: host syncs). With bounds
    N = B * bounds.sentences, a fixed size: the offsets past the last sentence repeat B*T, so the
    extra sequences are empty, and the length is bounds.sentence_len, so nothing is read back.
    """
    batch, length = sentence_ids.shape
    flat_starts = sentence_starts(sentence_ids).reshape(-1)  # row starts are sentence starts
    total = batch * length
    if bounds is not None:
        starts = torch.nonzero_static(flat_starts, size=batch * bounds.sentences, fill_value=total)
        starts = starts.squeeze(1)
    else:
        starts = flat_starts.nonzero().squeeze(1)
    cu_seqlens = torch.cat([starts, starts.new_full((1,), total)]).to(torch.int32)
    if bounds is not None:
        return cu_seqlens, bounds.sentence_len
    return cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


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
