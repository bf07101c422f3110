"""The linear-attention transformer ("Transformers are RNNs") and its T2R variant, as GPTs.

Everything but the attention is the GPT's: the same blocks, projections, RoPE and head, under the same
parameter names, which is what lets T2R (Kasai et al. 2021) convert a trained GPT checkpoint by
loading it and learning only the new feature maps from scratch. RoPE rotates q and k before the
feature map, so positions still reach the attention.
"""

from __future__ import annotations

import torch

from gpthf.attention.linear import LearnedFeatureMap, causal_linear_attention, elu_feature_map
from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.gpt import GPT
from gpthf.models.layers import AttentionPattern, SelfAttention, rope_angles

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
