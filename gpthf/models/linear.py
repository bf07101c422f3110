"""The linear-attention transformer ("Transformers are RNNs") and its T2R variant, as GPTs.

Everything but the attention is the GPT's: the same blocks, projections, RoPE and head, under the same
parameter names, which is what lets T2R (Kasai et al. 2021) convert a trained GPT checkpoint by
loading it and learning only the new feature maps from scratch. RoPE rotates q and k before the
feature map, so positions still reach the attention.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from gpthf.attention.linear import CHUNK, LearnedFeatureMap, causal_linear_attention, elu_feature_map
from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.flops import block_projection_flops, head_flops
from gpthf.models.gpt import GPT
from gpthf.models.layers import AttentionPattern, SelfAttention, rope_angles
from gpthf.models.spec import ModelSpec

FEATURE_MAPS = ("elu", "learned")


class LinearSelfAttention(SelfAttention):
    """The GPT's attention projections with q and k sent through a positive feature map."""

    def __init__(self, arch: ArchConfig):
        super().__init__(arch)
        if arch.feature_map not in FEATURE_MAPS:
            raise ConfigError(
                f"arch.feature_map={arch.feature_map!r}; choose one of: {', '.join(FEATURE_MAPS)}"
            )
        self.feature_map = (
            LearnedFeatureMap(arch.n_heads, self.head_dim, arch.feature_dim)
            if arch.feature_map == "learned"
            else elu_feature_map
        )

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """φ(q), φ(k) (B, H, T, F) and v (B, H, T, hd)."""
        q, k, v = super().project(x, cos, sin)
        return self.feature_map(q), self.feature_map(k), v


class LinearTransformer(GPT):
    attention_layer = LinearSelfAttention

    def init_weights(self) -> None:
        super().init_weights()
        for module in self.modules():  # the feature maps keep their own scale
            if isinstance(module, LearnedFeatureMap):
                module.reset_parameters()

    def causal_pattern(self, positions: torch.Tensor) -> AttentionPattern:
        cos, sin = rope_angles(positions, self.head_dim, self.arch.rope_base)
        return AttentionPattern(cos, sin, causal_linear_attention)


def feature_dim(arch: ArchConfig) -> int:
    """Features per head of linear attention: the head size for elu(x)+1, `feature_dim` when learned."""
    return arch.feature_dim if arch.feature_map == "learned" else arch.d_model // arch.n_heads


def linear_token_flops(arch: ArchConfig, vocab_size: int, chunk_keys: float = 0.0) -> float:
    """One token through linear attention: recurrent state read + update, 4·F·d per layer for F features
    per head (and, in the chunked training form, `chunk_keys` direct keys inside its chunk); T2R adds
    its feature maps on q and k, 4·d·F."""
    features = feature_dim(arch)
    attention = 4 * features * arch.d_model + 4 * features * chunk_keys * arch.n_heads
    maps = 4 * arch.d_model * features if arch.feature_map == "learned" else 0
    return arch.n_layers * (block_projection_flops(arch) + attention + maps) + head_flops(arch, vocab_size)


def linear_decode_flops(
    arch: ArchConfig, vocab_size: int, context_tokens: int, tokens_per_sentence: float
) -> float:
    """No keys at all: the cost of a token does not depend on the context."""
    return linear_token_flops(arch, vocab_size)


def linear_forward_flops(
    arch: ArchConfig, vocab_size: int, seq_len: int, tokens_per_sentence: float
) -> float:
    """Training runs the chunked form: on average half a chunk of direct keys besides the state."""
    return linear_token_flops(arch, vocab_size, chunk_keys=(min(CHUNK, seq_len) + 1) / 2)


SPEC = ModelSpec(
    kind="linear",  # arch.feature_map=elu
    rank=2,
    model=LinearTransformer,
    fields=("n_layers", "feature_map", "feature_dim"),
    strategy="gpthf.generation.recurrent:LinearRecurrentStrategy",
    forward_flops=linear_forward_flops,
    decode_flops=linear_decode_flops,
    color="C3",
    marker="v",
)
# The same model and strategy with learned feature maps; usually converted from a GPT (init_from=CKPT).
T2R_SPEC = replace(SPEC, kind="t2r", rank=3, color="C4", marker="<")  # arch.feature_map=learned
