"""What GPT and GPTHF share: token embedding tied with the head, the final norm, init, the loss."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpthf.attention import get_backend
from gpthf.attention.sentences import SentenceBounds
from gpthf.config import ArchConfig
from gpthf.data.special_tokens import PAD_ID
from gpthf.errors import ConfigError
from gpthf.models.layers import RMSNorm


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting token t+1 at position t, over targets that are not <pad>.

    `reduction="sum"` lets the trainer normalise by the whole step's target count across
    micro-batches and ranks, so accumulation does not change the loss.
    """
    targets = input_ids[:, 1:]
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=PAD_ID, reduction=reduction
    )


class LanguageModel(nn.Module):
    """Embedding → (the subclass's stacks) → final norm → tied head. Subclasses set `n_blocks`."""

    n_blocks: int

    def __init__(self, arch: ArchConfig, vocab_size: int, attention: str = "sdpa"):
        super().__init__()
        if arch.d_model % arch.n_heads or (arch.d_model // arch.n_heads) % 2:
            raise ConfigError(
                f"arch.d_model={arch.d_model} must split into arch.n_heads={arch.n_heads} heads of even size"
            )
        self.arch = arch
        self.vocab_size = vocab_size
        self.head_dim = arch.d_model // arch.n_heads
        self.embed = nn.Embedding(vocab_size, arch.d_model)
        self.norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.head = nn.Linear(arch.d_model, vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.set_attention_backend(attention)

    def set_attention_backend(self, name: str) -> None:
        """Switch `impl.attention`; changes speed, never results (tests check the backends agree)."""
        self.attention = get_backend(name)
        self.attention_name = name

    def init_weights(self) -> None:
        """Normal(0, 0.02); output projections of residual branches scaled down by depth (GPT-2)."""
        residual_std = 0.02 / math.sqrt(2 * self.n_blocks)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(param)
            elif name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(param, std=residual_std)
            else:
                nn.init.normal_(param, std=0.02)

    def block_stack(self) -> list[nn.Module]:
        """The transformer blocks in depth order (empty for models without them)."""
        return []

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        sentence_ids: torch.Tensor | None,
        bounds: SentenceBounds | None = None,
    ) -> torch.Tensor:
        """The last block's output (B, T, d): what the subclass's stacks compute. `bounds` lets a model
        that sizes tensors by the sentence structure (GPTHF) take the sizes from the host; the others
        accept and ignore it."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        sentence_ids: torch.Tensor | None = None,
        bounds: SentenceBounds | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, V)."""
        return self.logits(self.hidden_states(input_ids, sentence_ids, bounds))

    def features(
        self,
        input_ids: torch.Tensor,
        sentence_ids: torch.Tensor | None = None,
        bounds: SentenceBounds | None = None,
    ) -> torch.Tensor:
        """Final-norm states (B, T, d), what the head reads: the input of downstream classifiers."""
        return self.norm(self.hidden_states(input_ids, sentence_ids, bounds))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden))  # (B, T, V)

    def loss(
        self,
        input_ids: torch.Tensor,
        sentence_ids: torch.Tensor | None,
        bounds: SentenceBounds | None = None,
    ) -> torch.Tensor:
        return next_token_loss(self(input_ids, sentence_ids, bounds), input_ids)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
