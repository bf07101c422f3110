"""The equal-size GPT: the same blocks as GPTHF, all causal over the whole row."""

from __future__ import annotations

import torch
import torch.nn as nn

from gpthf.attention.sentences import SentenceBounds
from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.base import LanguageModel
from gpthf.models.layers import AttentionPattern, Block, SelfAttention, rope_angles


class GPT(LanguageModel):
    attention_layer: type[SelfAttention] = SelfAttention  # what each block attends with

    def __init__(self, arch: ArchConfig, vocab_size: int, attention: str = "sdpa"):
        if not arch.n_layers or arch.n_layers < 1:
            raise ConfigError(f"arch.model=gpt needs arch.n_layers >= 1, got {arch.n_layers}")
        self.n_blocks = arch.n_layers
        super().__init__(arch, vocab_size, attention)
        self.blocks = nn.ModuleList(Block(arch, self.attention_layer) for _ in range(arch.n_layers))
        self.init_weights()

    def block_stack(self) -> list[nn.Module]:
        return list(self.blocks)

    def causal_pattern(self, positions: torch.Tensor) -> AttentionPattern:
        cos, sin = rope_angles(positions, self.head_dim, self.arch.rope_base)
        return AttentionPattern(cos, sin, self.attention.causal)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        sentence_ids: torch.Tensor | None = None,
        bounds: SentenceBounds | None = None,
    ) -> torch.Tensor:
        """Last block's output (B, T, d). `sentence_ids` and `bounds` are accepted for a common
        interface and not used."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        pattern = self.causal_pattern(positions)
        x = self.embed(input_ids)  # (B, T, d)
        for block in self.blocks:
            x = block(x, pattern)
        return x
