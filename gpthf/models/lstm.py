"""The LSTM language model: the baseline the question "which transformer generates like an RNN?"
starts from, with the GPT's embedding, final norm and tied head around `nn.LSTM` layers.

`arch.lstm_hidden` is chosen per size so the parameter count matches the GPT twin's (within 1 %); a
projection brings the hidden size back to d_model for the tied head.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gpthf.attention.sentences import SentenceBounds
from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.base import LanguageModel
from gpthf.models.flops import head_flops
from gpthf.models.spec import ModelSpec

FORGET_GATE_BIAS = 1.0  # gates are ordered input, forget, cell, output in torch's LSTM


class LSTMLanguageModel(LanguageModel):
    def __init__(self, arch: ArchConfig, vocab_size: int, attention: str = "sdpa"):
        if not arch.n_layers or arch.n_layers < 1 or not arch.lstm_hidden or arch.lstm_hidden < 1:
            raise ConfigError(
                f"arch.model=lstm needs arch.n_layers >= 1 and arch.lstm_hidden >= 1, "
                f"got {arch.n_layers}, {arch.lstm_hidden}"
            )
        self.n_blocks = arch.n_layers
        super().__init__(arch, vocab_size, attention)
        self.lstm = nn.LSTM(
            arch.d_model, arch.lstm_hidden, arch.n_layers, batch_first=True, dropout=arch.dropout
        )
        self.proj = nn.Linear(arch.lstm_hidden, arch.d_model, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """The embedding and projection as the transformers'; the LSTM keeps torch's uniform init."""
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=0.02)
        self.lstm.reset_parameters()
        hidden = self.arch.lstm_hidden
        with torch.no_grad():
            for name, param in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    param[hidden : 2 * hidden].fill_(FORGET_GATE_BIAS)

    def run(self, input_ids: torch.Tensor, state=None):
        """(last layer's projected output (B, T, d), (h, c) each (layers, B, hidden))."""
        output, state = self.lstm(self.embed(input_ids), state)
        return self.proj(output), state

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        sentence_ids: torch.Tensor | None = None,
        bounds: SentenceBounds | None = None,
    ) -> torch.Tensor:
        """(B, T, d). `sentence_ids` and `bounds` are accepted for a common interface and not used."""
        return self.run(input_ids)[0]


def lstm_token_flops(arch: ArchConfig, vocab_size: int) -> float:
    """One token through the LSTM layers (4 gates over input and hidden), the projection and the head."""
    hidden = arch.lstm_hidden
    layers = sum(8 * hidden * ((arch.d_model if i == 0 else hidden) + hidden) for i in range(arch.n_layers))
    return layers + 2 * hidden * arch.d_model + head_flops(arch, vocab_size)


def lstm_row_flops(arch: ArchConfig, vocab_size: int, tokens: int, tokens_per_sentence: float) -> float:
    """Decoding and training alike: a token's cost does not depend on what came before it."""
    return lstm_token_flops(arch, vocab_size)


SPEC = ModelSpec(
    kind="lstm",
    rank=4,
    model=LSTMLanguageModel,
    fields=("n_layers", "lstm_hidden"),
    strategy="gpthf.generation.recurrent:LSTMRecurrentStrategy",
    forward_flops=lstm_row_flops,
    decode_flops=lstm_row_flops,
    color="C5",
    marker="D",
)
