"""What every generation strategy reads its context with: prompts as padded rows, their sentence
structure, each row's last real position, and the causal forward with its keys and values kept.

Below both gpthf.generation.strategies and gpthf.generation.recurrent, so neither imports the other.
"""

from __future__ import annotations

import torch

from gpthf.data.special_tokens import PAD_ID, SENTENCE_CLOSERS
from gpthf.models import GPT


def closes_sentence(tokens: torch.Tensor) -> torch.Tensor:
    """Comparisons with the closers' ids, not `isin` against a tensor of them: that tensor would be
    copied to the device at every call, a host sync per step on CUDA."""
    closing = tokens == SENTENCE_CLOSERS[0]
    for closer in SENTENCE_CLOSERS[1:]:
        closing = closing | (tokens == closer)
    return closing


def pad_rows(rows, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one right-padded (B, T) tensor of <pad>, and their lengths (B,)."""
    lengths = torch.tensor([len(r) for r in rows], device=device)
    tokens = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return tokens, lengths


def sentence_ids_for(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """sentence_ids (B, T) of right-padded rows, as packing makes them; padding gets an id of its own."""
    real = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
    closes = (closes_sentence(tokens) & real).long()
    return closes.cumsum(1) - closes + (~real).long()


def last_real(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x[b, lengths[b] - 1] for every row: (B, ...) from (B, T, ...)."""
    return x[torch.arange(x.shape[0], device=x.device), lengths - 1]


def causal_forward_capturing(model: GPT, tokens: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """The training forward of a GPT-shaped model (last block's output), with every layer's k and v."""
    batch, length = tokens.shape
    keys, values = [], []
    positions = torch.arange(length, device=tokens.device).expand(batch, length)
    pattern = model.causal_pattern(positions).capturing(keys, values)
    x = model.embed(tokens)  # (B, T, d)
    for block in model.blocks:
        x = block(x, pattern)
    return x, keys, values
