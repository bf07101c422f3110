"""Attention of one new token per row over its cached keys: the decode step's attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

UPCAST_WINDOW = 512  # on CPU, bf16/fp16 decode attention over at most this many keys runs in fp32


def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """One query per row over a cached window. torch's CPU attention kernel is 1.9-2.6x slower in
    bf16 than casting the window to fp32 and attending there, for windows up to UPCAST_WINDOW keys
    (measured here, batch 8, 12 heads: 16 keys 197 -> 104 us, 80 keys 522 -> 197 us, 512 keys
    3.5 -> 1.5 ms); past that the cast costs more than it saves. GPTHF's windows (the sentence in
    progress, the finished sentences) stay that small, the GPT's grow with the context. The result
    is the fp32 attention's, rounded once to the model's format."""
    if q.device.type == "cpu" and torch.compiler.is_compiling():
        return _fused_decode_attention(q, keys, values, visible)
    if (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and keys.shape[2] <= UPCAST_WINDOW
    ):
        out = F.scaled_dot_product_attention(q.float(), keys.float(), values.float(), attn_mask=visible)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)


def _fused_decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """The same attention written as products and sums, for a step compiled on CPU: inductor fuses
    each into one pass over the cache that reads bf16 keys as they are and accumulates in fp32,
    where the attention kernel needs the cast copies first (measured here, batch 8, 12 heads, bf16:
    67 keys 238 -> 116 us, 153 keys 412 -> 195 us; fp32 67 keys 197 -> 81 us). Eager, the
    (B, H, W, hd) products would be materialised: there the kernel is faster."""
    scores = (q.float() * keys.float()).sum(-1) * q.shape[-1] ** -0.5  # (B, H, W)
    weights = scores.masked_fill(~visible[:, :, 0, :], float("-inf")).softmax(-1)
    return (weights[..., None] * values.float()).sum(-2, keepdim=True).to(q.dtype)  # (B, H, 1, hd)
