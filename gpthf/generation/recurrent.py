"""`cached` generation for the models whose memory does not grow: linear attention and the LSTM.

Same protocol as gpthf.generation.strategies (`prefill` once, `decode` per token, all state in the
returned object, rows advancing on their own). The state is a fixed size whatever the context:
- linear / T2R: per layer Σ φ(k) vᵀ and Σ φ(k) (`LinearAttentionState`), plus each row's position
  for RoPE;
- LSTM: (h, c) per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpthf.attention.linear import LinearAttentionState
from gpthf.generation.strategies import capturing, last_real
from gpthf.models import LinearTransformer, LSTMLanguageModel
from gpthf.models.layers import AttentionPattern, rope_angles


@dataclass
class LinearRecurrentState:
    layers: list[LinearAttentionState]
    lengths: torch.Tensor  # (B,) tokens seen per row: the RoPE position of the next one

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


class LinearRecurrentStrategy:
    def prefill(self, model: LinearTransformer, tokens: torch.Tensor, lengths: torch.Tensor):
        batch, length = tokens.shape
        pattern = model.causal_pattern(torch.arange(length, device=tokens.device).expand(batch, length))
        keys, values = [], []
        pattern = capturing(pattern, keys, values)
        x = model.embed(tokens)
        for block in model.blocks:
            x = block(x, pattern)
        layers = [LinearAttentionState.from_prefix(k, v, lengths) for k, v in zip(keys, values)]
        return model.logits(last_real(x, lengths)), LinearRecurrentState(layers, lengths.clone())

    def decode(
        self, model: LinearTransformer, state: LinearRecurrentState, token: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        cos, sin = rope_angles(state.lengths[:, None], model.head_dim, model.arch.rope_base)
        x = model.embed(token[:, None])  # (B, 1, d)
        for block, layer in zip(model.blocks, state.layers):

            def attend(q, k, v, dropout_p=0.0, layer=layer):
                return layer.step(q, k, v, active)

            x = block(x, AttentionPattern(cos, sin, attend))
        state.lengths += active.long()
        return model.logits(x[:, 0])


@dataclass
class LSTMState:
    h: torch.Tensor  # (layers, B, hidden)
    c: torch.Tensor

    def nbytes(self) -> int:
        return self.h.nbytes + self.c.nbytes


class LSTMRecurrentStrategy:
    def prefill(self, model: LSTMLanguageModel, tokens: torch.Tensor, lengths: torch.Tensor):
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            model.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        output, (h, c) = model.lstm(packed)  # (h, c) at each row's own last token
        output, _ = torch.nn.utils.rnn.pad_packed_sequence(output, batch_first=True)
        return model.logits(last_real(model.proj(output), lengths)), LSTMState(h, c)

    def decode(
        self, model: LSTMLanguageModel, state: LSTMState, token: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        hidden, (h, c) = model.run(token[:, None], (state.h, state.c))
        keep = active[None, :, None]
        state.h, state.c = torch.where(keep, h, state.h), torch.where(keep, c, state.c)
        return model.logits(hidden[:, 0])
