"""The one pre-norm transformer block both models are built from, and its parts.

A block does not know which attention pattern it runs: the model hands every layer an
`AttentionPattern` (RoPE angles for its positions + an `attend` function), prepared once per forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpthf.config import ArchConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's own kernel: accumulates in fp32 for bf16 input, one call instead of eight (a decode
        # step runs 25 norms over a few rows, where each call's dispatch is most of its cost).
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, 1, T, hd/2) for integer `positions` (B, T)."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions[:, None, :, None].float() * inv_freq  # (B, 1, T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hd/2) of x (..., B, H, T, hd) by the position angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


@dataclass
class AttentionPattern:
    """What one stack of layers needs to attend: RoPE angles at its positions and the attend function."""

    cos: torch.Tensor  # (B, 1, T, hd/2)
    sin: torch.Tensor
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]  # (q, k, v, dropout_p)

    def capturing(self, keys: list, values: list) -> AttentionPattern:
        """The same pattern, also handing each layer's k and v to the lists (layer order): what a
        generation prefill keeps."""

        def attend(q, k, v, dropout_p=0.0):
            keys.append(k)
            values.append(v)
            return self.attend(q, k, v, dropout_p)

        return replace(self, attend=attend)


class SelfAttention(nn.Module):
    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.n_heads = arch.n_heads
        self.head_dim = arch.d_model // arch.n_heads
        self.qkv = nn.Linear(arch.d_model, 3 * arch.d_model, bias=False)
        self.out = nn.Linear(arch.d_model, arch.d_model, bias=False)
        self.dropout = arch.dropout

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q, k, v (B, H, T, hd) with RoPE applied to q and k (rotated together: one pass, not two)."""
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(qkv[:2], cos, sin)
        return q, k, qkv[2]

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, T, hd) head outputs -> (B, T, d_model) through the output projection."""
        batch, _, length, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, x: torch.Tensor, pattern: AttentionPattern) -> torch.Tensor:
        q, k, v = self.project(x, pattern.cos, pattern.sin)
        y = pattern.attend(q, k, v, self.dropout if self.training else 0.0)
        return F.dropout(self.merge(y), p=self.dropout, training=self.training)


class SwiGLU(nn.Module):
    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.gate = nn.Linear(arch.d_model, arch.mlp_hidden, bias=False)
        self.up = nn.Linear(arch.d_model, arch.mlp_hidden, bias=False)
        self.down = nn.Linear(arch.mlp_hidden, arch.d_model, bias=False)
        self.dropout = arch.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.down(F.silu(self.gate(x)) * self.up(x)), p=self.dropout, training=self.training)


class Block(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, arch: ArchConfig, attention_layer: type[SelfAttention] = SelfAttention):
        super().__init__()
        self.attn_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.attn = attention_layer(arch)
        self.mlp_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.mlp = SwiGLU(arch)

    def forward(self, x: torch.Tensor, pattern: AttentionPattern) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), pattern)
        return x + self.mlp(self.mlp_norm(x))

    def forward_at(self, x: torch.Tensor, pattern: AttentionPattern, index: torch.Tensor) -> torch.Tensor:
        """The block's output (N, d) at positions `index` (N,) of the flattened (B*T) x only, for
        inference: every position is projected and attended over (the pattern sees all k/v), but the
        output projection and the MLP, two thirds of the block's weights, run only where the output
        is wanted (a generation prefill keeps the last encoder layer at sentence ends only)."""
        q, k, v = self.attn.project(self.attn_norm(x), pattern.cos, pattern.sin)
        y = pattern.attend(q, k, v, 0.0).transpose(1, 2).reshape(-1, x.shape[-1])  # (B*T, d)
        x = x.reshape(-1, x.shape[-1])[index] + self.attn.out(y[index])
        return x + self.mlp(self.mlp_norm(x))
