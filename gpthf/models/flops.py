"""The FLOPs conventions every kind's formulas share (each kind's own formulas live beside its model,
named by its spec; gpthf.measure.flops is where callers ask for them).

2 FLOPs per multiply-add, matrix products only, as `FlopCounterMode` counts them. Per token and
block the projections cost 2·(4d² + 3·d·h) (q, k, v, out; SwiGLU gate, up, down), attention over n
keys 4·d·n (scores and weighted values, all heads), and the head 2·d·V.
"""

from __future__ import annotations

from gpthf.config import ArchConfig


def block_projection_flops(arch: ArchConfig) -> int:
    return 2 * (4 * arch.d_model**2 + 3 * arch.d_model * arch.mlp_hidden)


def attention_flops(arch: ArchConfig, n_keys: float) -> float:
    return 4 * arch.d_model * n_keys


def head_flops(arch: ArchConfig, vocab_size: int) -> int:
    return 2 * arch.d_model * vocab_size
