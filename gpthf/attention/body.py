"""The sentence-level body's attention: a token of sentence k sees the ends of sentences 0..k-1 and itself.

Its keys are only the S sentence-end states plus the query's own key, so instead of a T×T mask we
gather the ends, score every query against them (T×S), score the self term on the diagonal (T×1),
and normalise both together. Cost O(T·S). Every backend uses this same function: it is a few
matmuls that no fused kernel would do better at S ≪ T. Cached generation needs none of this: its
cache holds the ends with the token's own key after them, so one masked attention call does it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attend_ends_and_self(
    q: torch.Tensor,  # (B, H, T, hd)
    k_self: torch.Tensor,  # (B, H, T, hd): each query's own key ...
    v_self: torch.Tensor,  # ... and value
    k_ends: torch.Tensor,  # (B, H, S, hd): keys of sentence ends
    v_ends: torch.Tensor,  # (B, H, S, hd)
    visible: torch.Tensor,  # (B, T, S) bool: which ends each query may see
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention over [the visible ends, the query itself]; (B, H, T, hd)."""
    n_slots = k_ends.shape[2]
    scale = q.shape[-1] ** -0.5
    scores_ends = (q @ k_ends.transpose(-1, -2)) * scale  # (B, H, T, S)
    scores_ends = scores_ends.masked_fill(~visible[:, None], float("-inf"))
    score_self = (q * k_self).sum(-1, keepdim=True) * scale  # (B, H, T, 1)
    probs = torch.cat([scores_ends, score_self], dim=-1).float().softmax(dim=-1).to(q.dtype)  # (B, H, T, S+1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return probs[..., :n_slots] @ v_ends + probs[..., n_slots:] * v_self  # (B, H, T, hd)


def attend_to_sentence_ends(
    q: torch.Tensor,  # (B, H, T, hd), RoPE at the token's sentence index
    k: torch.Tensor,  # (B, H, T, hd)
    v: torch.Tensor,  # (B, H, T, hd)
    sentence_ids: torch.Tensor,  # (B, T)
    end_positions: torch.Tensor,  # (B, S) from `sentence_end_positions`
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Training form: gather the ends of a packed row, then attend."""
    batch, heads, _, head_dim = q.shape
    n_slots = end_positions.shape[1]
    gather_index = end_positions[:, None, :, None].expand(batch, heads, n_slots, head_dim)
    k_ends, v_ends = k.gather(2, gather_index), v.gather(2, gather_index)  # (B, H, S, hd)
    slots = torch.arange(n_slots, device=q.device)
    finished = slots[None, None, :] < sentence_ids[:, :, None]  # (B, T, S): only sentences before mine
    return attend_ends_and_self(q, k, v, k_ends, v_ends, finished, dropout_p)
