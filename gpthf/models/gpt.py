"""The equal-size GPT: the same blocks as GPTHF, all causal over the whole row."""

from __future__ import annotations

import torch
import torch.nn as nn

from gpthf.attention.sentences import SentenceBounds
from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.base import LanguageModel
from gpthf.models.flops import attention_flops, block_projection_flops, head_flops
from gpthf.models.layers import AttentionPattern, Block, SelfAttention, rope_angles
from gpthf.models.spec import ModelSpec


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


def gpt_token_flops(arch: ArchConfig, vocab_size: int, n_keys: float) -> float:
    """One token's forward through the GPT, attending `n_keys` keys in every layer."""
    return arch.n_layers * (block_projection_flops(arch) + attention_flops(arch, n_keys)) + head_flops(
        arch, vocab_size
    )


def gpt_decode_flops(
    arch: ArchConfig, vocab_size: int, context_tokens: int, tokens_per_sentence: float
) -> float:
    """Every earlier token of the context is a key, and the new token itself."""
    return gpt_token_flops(arch, vocab_size, context_tokens + 1)


def gpt_forward_flops(arch: ArchConfig, vocab_size: int, seq_len: int, tokens_per_sentence: float) -> float:
    """A token of a packed row attends, on average, half the row."""
    return gpt_token_flops(arch, vocab_size, (seq_len + 1) / 2)


SPEC = ModelSpec(
    kind="gpt",
    rank=1,
    model=GPT,
    fields=("n_layers",),
    strategy="gpthf.generation.strategies:GPTCachedStrategy",
    forward_flops=gpt_forward_flops,
    decode_flops=gpt_decode_flops,
    color="C1",
    marker="s",
)
