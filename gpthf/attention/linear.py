"""Causal linear attention ("Transformers are RNNs", Katharopoulos et al. 2020), both of its forms.

With a positive feature map φ, softmax(q·k) is replaced by φ(q)·φ(k), so the output at position i is

    y_i = φ(q_i)ᵀ S_i / (φ(q_i)ᵀ z_i),    S_i = Σ_{j≤i} φ(k_j) v_jᵀ,    z_i = Σ_{j≤i} φ(k_j).

Training uses the parallel form: the row is cut into chunks; inside a chunk the masked F×F products are
computed directly, across chunks the running sums (S, z) are cumulative sums of per-chunk sums, so the
memory is O(T/C · F · D) instead of the O(T · F · D) of one cumulative sum per position. Generation
uses the recurrent form: a state of one F×D matrix and one F vector per head, whatever the context.
Both are computed in float32 (sums of many positive terms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

DENOMINATOR_EPS = 1e-6
CHUNK = 64


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1: positive, and the map of the original paper."""
    return F.elu(x) + 1


class LearnedFeatureMap(nn.Module):
    """T2R's feature map (Kasai et al. 2021): ReLU(W x + b), one small MLP per head, shared by q and k."""

    def __init__(self, n_heads: int, head_dim: int, feature_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_heads, head_dim, feature_dim))
        self.bias = nn.Parameter(torch.empty(n_heads, 1, feature_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.weight.shape[1] ** -0.5)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, hd) -> (B, H, T, feature_dim)."""
        return F.relu(torch.einsum("bhtd,hdf->bhtf", x, self.weight) + self.bias)


def causal_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, chunk: int = CHUNK
) -> torch.Tensor:
    """Parallel form. q, k: feature-mapped (B, H, T, F); v: (B, H, T, D) -> (B, H, T, D).

    `dropout_p` is accepted for the common attend signature; there are no attention weights to drop.
    """
    batch, heads, length, _ = q.shape
    out_dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    pad = (-length) % chunk
    if pad:  # zero keys and values add nothing to any sum; the padded queries are cut off below
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    n = (length + pad) // chunk
    q, k, v = (t.reshape(batch, heads, n, chunk, t.shape[-1]) for t in (q, k, v))

    inside = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~inside, 0.0)  # (B, H, N, C, C)
    chunk_kv = k.transpose(-1, -2) @ v  # (B, H, N, F, D)
    earlier_kv = chunk_kv.cumsum(2) - chunk_kv  # the state S entering each chunk
    chunk_k = k.sum(3)  # (B, H, N, F)
    earlier_k = chunk_k.cumsum(2) - chunk_k  # the normaliser z entering each chunk

    numerator = scores @ v + q @ earlier_kv
    denominator = scores.sum(-1) + (q * earlier_k.unsqueeze(3)).sum(-1)
    y = numerator / (denominator.unsqueeze(-1) + DENOMINATOR_EPS)
    return y.reshape(batch, heads, n * chunk, -1)[:, :, :length].to(out_dtype)


@dataclass
class LinearAttentionState:
    """The whole memory of one layer: Σ φ(k) vᵀ (B, H, F, D) and Σ φ(k) (B, H, F), in float32."""

    kv: torch.Tensor
    k: torch.Tensor

    @classmethod
    def from_prefix(cls, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> LinearAttentionState:
        """The state after each row's first `lengths[b]` positions of feature-mapped k (B, H, T, F), v."""
        real = (torch.arange(k.shape[2], device=k.device)[None, :] < lengths[:, None])[:, None, :, None]
        k = k.float() * real
        return cls(k.transpose(-1, -2) @ v.float(), k.sum(2))

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Recurrent form for one position: q, k (B, H, 1, F), v (B, H, 1, D) -> (B, H, 1, D).

        Rows where `active` is False keep their state (their output is computed but unused).
        """
        keep = active[:, None, None, None].float()
        k32 = k.float() * keep
        self.kv = self.kv + k32.transpose(-1, -2) @ v.float()
        self.k = self.k + k32[:, :, 0]
        q32 = q.float()
        numerator = q32 @ self.kv
        denominator = (q32[:, :, 0] * self.k).sum(-1)[..., None, None]
        return (numerator / (denominator + DENOMINATOR_EPS)).to(v.dtype)

    def nbytes(self) -> int:
        return self.kv.nbytes + self.k.nbytes
