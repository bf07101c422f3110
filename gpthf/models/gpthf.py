"""GPTHF: a word-level encoder per sentence, then a sentence-level body over sentence embeddings.

- `wlt_encoder` (n_enc blocks): causal inside a sentence, blind across sentences; RoPE position =
  position inside the sentence, so a sentence's encoding does not depend on where it stands.
- sentence embedding = the encoder output at the sentence's last token (its <eos>).
- `slt_body` (n_body blocks): a token of sentence k attends to the body states at the ends of
  sentences 0..k-1 and to itself, nothing else; RoPE position = sentence index, at training and at
  generation alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gpthf.attention import attend_to_sentence_ends
from gpthf.attention.sentences import SentenceBounds, positions_in_sentence, sentence_end_positions
from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.base import LanguageModel
from gpthf.models.flops import attention_flops, block_projection_flops, head_flops
from gpthf.models.layers import AttentionPattern, Block, rope_angles
from gpthf.models.spec import ModelSpec


class GPTHF(LanguageModel):
    def __init__(self, arch: ArchConfig, vocab_size: int, attention: str = "sdpa"):
        if not (arch.n_enc and arch.n_body and arch.n_enc >= 1 and arch.n_body >= 1):
            raise ConfigError(
                f"arch.model=gpthf needs arch.n_enc >= 1 and arch.n_body >= 1, got {arch.n_enc}, {arch.n_body}"
            )
        self.n_blocks = arch.n_enc + arch.n_body
        super().__init__(arch, vocab_size, attention)
        self.wlt_encoder = nn.ModuleList(Block(arch) for _ in range(arch.n_enc))
        self.slt_body = nn.ModuleList(Block(arch) for _ in range(arch.n_body))
        self.init_weights()

    def block_stack(self) -> list[nn.Module]:
        return [*self.wlt_encoder, *self.slt_body]

    def encoder_pattern(
        self, sentence_ids: torch.Tensor, bounds: SentenceBounds | None = None
    ) -> AttentionPattern:
        cos, sin = rope_angles(positions_in_sentence(sentence_ids), self.head_dim, self.arch.rope_base)
        return AttentionPattern(cos, sin, self.attention.within_sentences(sentence_ids, bounds))

    def body_pattern(
        self, sentence_ids: torch.Tensor, bounds: SentenceBounds | None = None
    ) -> AttentionPattern:
        cos, sin = rope_angles(sentence_ids, self.head_dim, self.arch.rope_base)
        ends = sentence_end_positions(sentence_ids, bounds)  # (B, S)

        def attend(q, k, v, dropout_p=0.0):
            return attend_to_sentence_ends(q, k, v, sentence_ids, ends, dropout_p)

        return AttentionPattern(cos, sin, attend)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        sentence_ids: torch.Tensor | None,
        bounds: SentenceBounds | None = None,
    ) -> torch.Tensor:
        """Last body block's output (B, T, d) for packed rows with their `sentence_ids` (B, T).

        With `bounds` the forward reads nothing back from the device (shapes come from them); without,
        the batch's own maxima are read (host syncs, a graph break under torch.compile)."""
        if sentence_ids is None:
            raise ValueError("GPTHF needs sentence_ids (B, T) alongside input_ids")
        x = self.embed(input_ids)  # (B, T, d)
        pattern = self.encoder_pattern(sentence_ids, bounds)
        for block in self.wlt_encoder:
            x = block(x, pattern)
        pattern = self.body_pattern(sentence_ids, bounds)
        for block in self.slt_body:
            x = block(x, pattern)
        return x


def gpthf_token_flops(arch: ArchConfig, vocab_size: int, encoder_keys: float, body_keys: float) -> float:
    """One token's forward through GPTHF: `encoder_keys` in its sentence, `body_keys` sentence ends + itself."""
    encoder = arch.n_enc * (block_projection_flops(arch) + attention_flops(arch, encoder_keys))
    body = arch.n_body * (block_projection_flops(arch) + attention_flops(arch, body_keys))
    return encoder + body + head_flops(arch, vocab_size)


def gpthf_decode_flops(
    arch: ArchConfig, vocab_size: int, context_tokens: int, tokens_per_sentence: float
) -> float:
    """The new token sits, on average, halfway through a sentence after context/tokens_per_sentence
    finished ones."""
    finished = context_tokens // tokens_per_sentence
    return gpthf_token_flops(arch, vocab_size, tokens_per_sentence / 2 + 1, finished + 1)


def gpthf_forward_flops(arch: ArchConfig, vocab_size: int, seq_len: int, tokens_per_sentence: float) -> float:
    """A token of a packed row attends, on average, half its sentence and half the row's sentence ends."""
    sentences_per_row = max(seq_len / tokens_per_sentence, 1)
    return gpthf_token_flops(arch, vocab_size, (tokens_per_sentence + 1) / 2, (sentences_per_row - 1) / 2 + 1)


SPEC = ModelSpec(
    kind="gpthf",
    rank=0,
    model=GPTHF,
    fields=("n_enc", "n_body"),
    strategy="gpthf.generation.strategies:GPTHFCachedStrategy",
    forward_flops=gpthf_forward_flops,
    decode_flops=gpthf_decode_flops,
    color="C0",
    marker="o",
    context_unit="sentences",
)
