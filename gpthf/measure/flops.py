"""Analytical FLOPs (2 per multiply-add, matrix products only, as `FlopCounterMode` counts them).

Per token and block: the projections cost 2·(4d² + 3·d·h) (q, k, v, out; SwiGLU gate, up, down) and
attention over n keys costs 4·d·n (scores and weighted values, all heads). The head costs 2·d·V.
What differs between the models is n:
- GPT: every earlier token of the context (and itself);
- GPTHF encoder: the earlier tokens of the same sentence (and itself);
- GPTHF body: the ends of the earlier sentences (and itself).
Linear attention / T2R and the LSTM attend to no keys: their per-token cost does not depend on the
context (a state update and a read, 4·F·d per layer for F features per head; T2R adds its feature
maps on q and k, 4·d·F).

Each kind's formulas live beside its model and are named by its spec (gpthf.models.spec); this
module asks the spec, so a new kind is counted here without a line of its own.
"""

from __future__ import annotations

from gpthf.config import ArchConfig
from gpthf.models import spec_for


def decode_flops(arch: ArchConfig, vocab_size: int, context_tokens: int, tokens_per_sentence: float) -> float:
    """FLOPs to generate one token after `context_tokens` tokens, with the cache (the new token included)."""
    return spec_for(arch.model).decode_flops(arch, vocab_size, context_tokens, tokens_per_sentence)


def full_recompute_flops(
    arch: ArchConfig, vocab_size: int, context_tokens: int, tokens_per_sentence: float
) -> float:
    """FLOPs of the `full` strategy per generated token: a whole forward over the context."""
    return training_forward_flops(arch, vocab_size, context_tokens + 1, tokens_per_sentence) * (
        context_tokens + 1
    )


def training_forward_flops(
    arch: ArchConfig, vocab_size: int, seq_len: int, tokens_per_sentence: float
) -> float:
    """Forward FLOPs per token of a packed row, counting only the keys a token may attend."""
    return spec_for(arch.model).forward_flops(arch, vocab_size, seq_len, tokens_per_sentence)


def training_flops_per_token(
    arch: ArchConfig, vocab_size: int, seq_len: int, tokens_per_sentence: float
) -> float:
    """Forward + backward (backward ≈ 2× forward)."""
    return 3 * training_forward_flops(arch, vocab_size, seq_len, tokens_per_sentence)
