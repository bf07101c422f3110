"""`cached` generation for the models whose memory does not grow: linear attention / T2R, the LSTM and
the Block-Recurrent Transformer.

Same protocol as gpthf.generation.strategies (`prefill` once, `decode` per token, all state in the
returned object, rows advancing on their own). The state is a fixed size whatever the context:
- linear / T2R: per layer Σ φ(k) vᵀ and Σ φ(k) (`LinearAttentionState`), plus each row's position
  for RoPE;
- LSTM: (h, c) per layer;
- Block-Recurrent Transformer: per layer the keys and values of the previous and the current block,
  plus the recurrent layer's state vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpthf.attention.linear import LinearAttentionState
from gpthf.generation.decode_attention import decode_attention
from gpthf.generation.strategies import causal_forward_capturing, last_real
from gpthf.models import BlockRecurrentTransformer, LinearTransformer, LSTMLanguageModel
from gpthf.models.block_recurrent import RecurrentLayer
from gpthf.models.layers import AttentionPattern, rope_angles


@dataclass
class LinearRecurrentState:
    layers: list[LinearAttentionState]
    lengths: torch.Tensor  # (B,) tokens seen per row: the RoPE position of the next one

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


class LinearRecurrentStrategy:
    def prefill(self, model: LinearTransformer, tokens: torch.Tensor, lengths: torch.Tensor):
        x, keys, values = causal_forward_capturing(model, tokens)
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
    batch_dim = 1  # for gpthf.generation.rows (not a field)

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


@dataclass
class BlockWindow:
    """One layer's keys and values of the previous block and of the block in progress: (B, H, W, hd)."""

    prev_k: torch.Tensor
    prev_v: torch.Tensor
    cur_k: torch.Tensor
    cur_v: torch.Tensor

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.prev_k, self.prev_v, self.cur_k, self.cur_v))


@dataclass
class BlockRecurrentState:
    windows: list[BlockWindow]  # per layer
    state: torch.Tensor  # (B, S, d): the recurrent layer's state entering the block in progress
    state_kv: tuple[torch.Tensor, torch.Tensor]  # its keys and values as the tokens read them
    lengths: torch.Tensor  # (B,) tokens seen per row

    def nbytes(self) -> int:
        return sum(w.nbytes() for w in self.windows) + self.state.nbytes


class BlockRecurrentStrategy:
    """Per-block KV caches (two blocks per layer) and the carried state: memory fixed by W and S."""

    def prefill(self, model: BlockRecurrentTransformer, tokens: torch.Tensor, lengths: torch.Tensor):
        x, keys, values, states = model.run(tokens)
        batch, width = tokens.shape[0], model.arch.block_len
        rows = torch.arange(batch, device=tokens.device)
        done = lengths // width  # complete blocks per row: the next token's block index
        state = torch.stack(states, dim=1)[rows, done]
        offsets = torch.arange(width, device=tokens.device)[None, :]
        last = tokens.shape[1] - 1
        current = (done[:, None] * width + offsets).clamp(max=last)
        previous = ((done[:, None] - 1) * width + offsets).clamp(0, last)

        def take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return t.gather(2, index[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))

        windows = [
            BlockWindow(take(k, previous), take(v, previous), take(k, current), take(v, current))
            for k, v in zip(keys, values)
        ]
        state_kv = model.recurrent.state_keys(state)[1:3]
        return model.logits(last_real(x, lengths)), BlockRecurrentState(
            windows, state, state_kv, lengths.clone()
        )

    def decode(
        self,
        model: BlockRecurrentTransformer,
        state: BlockRecurrentState,
        token: torch.Tensor,
        active: torch.Tensor,
    ) -> torch.Tensor:
        width = model.arch.block_len
        offset = state.lengths % width
        slots = torch.arange(width, device=token.device)[None, :]
        visible = torch.cat(
            [(state.lengths >= width)[:, None].expand(-1, width), slots <= offset[:, None]], dim=1
        )
        visible = visible[:, None, None, :]  # (B, 1, 1, 2W)
        writes = ((slots == offset[:, None]) & active[:, None])[:, None, :, None]  # (B, 1, W, 1)
        cos, sin = rope_angles(state.lengths[:, None], model.head_dim, model.arch.rope_base)
        x = model.embed(token[:, None])  # (B, 1, d)
        for layer, window in zip(model.layers, state.windows):

            def attend(q, k, v, dropout_p=0.0, window=window):
                window.cur_k = torch.where(writes, k, window.cur_k)
                window.cur_v = torch.where(writes, v, window.cur_v)
                keys = torch.cat([window.prev_k, window.cur_k], dim=2)
                values = torch.cat([window.prev_v, window.cur_v], dim=2)
                return decode_attention(q, keys, values, visible)

            if isinstance(layer, RecurrentLayer):
                q, k, v = layer.attn.project(layer.attn_norm(x), cos, sin)
                x = layer.token_update(x, attend(q, k, v), *state.state_kv)
            else:
                x = layer(x, AttentionPattern(cos, sin, attend))
        logits = model.logits(x[:, 0])

        complete = active & (offset == width - 1)
        if bool(complete.any()):
            recurrent = state.windows[model.recurrent_index]
            carried = model.recurrent.next_state(state.state, recurrent.cur_k, recurrent.cur_v)
            state.state = torch.where(complete[:, None, None], carried, state.state)
            state.state_kv = model.recurrent.state_keys(state.state)[1:3]
            moved = complete[:, None, None, None]
            for window in state.windows:
                window.prev_k = torch.where(moved, window.cur_k, window.prev_k)
                window.prev_v = torch.where(moved, window.cur_v, window.prev_v)
        state.lengths += active.long()
        return logits
