"""`cached` generation for the models whose memory does not grow: linear attention / T2R, the LSTM and
the Block-Recurrent Transformer.

Same protocol as gpthf.generation.strategies (`prefill` once, `decode` per token, all state in the
returned object, rows advancing on their own). The state is a fixed size whatever the context:
- linear / T2R: per layer Σ φ(k) vᵀ and Σ φ(k) (`LinearAttentionState`), plus each row's position
  for RoPE;
- LSTM: (h, c) per layer;
- Block-Recurrent Transformer: per layer the keys and values of the previous and the current block,
  plus the recurrent layer's state vectors.

As there, a step writes its state in place and asks the host only through `host_query`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpthf.attention.linear import LinearAttentionState
from gpthf.generation.context import causal_forward_capturing, last_real
from gpthf.generation.decode_attention import decode_attention
from gpthf.models import BlockRecurrentTransformer, LinearTransformer, LSTMLanguageModel
from gpthf.models.block_recurrent import RecurrentLayer
from gpthf.models.layers import AttentionPattern, rope_angles


def _nothing_to_ask(state: torch.Tensor) -> torch.Tensor:
    return state.new_zeros(0, dtype=torch.long)


@dataclass
class LinearRecurrentState:
    layers: list[LinearAttentionState]
    lengths: torch.Tensor  # (B,) tokens seen per row: the RoPE position of the next one

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def host_query(self, active: torch.Tensor) -> torch.Tensor:
        return _nothing_to_ask(self.lengths)

    def host_answer(self, values: list[int]) -> None:
        pass


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
                # `step` returns its sums as new tensors; they are copied into the state's own.
                stepped = LinearAttentionState(layer.kv, layer.k)
                out = stepped.step(q, k, v, active)
                layer.kv.copy_(stepped.kv)
                layer.k.copy_(stepped.k)
                return out

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

    def host_query(self, active: torch.Tensor) -> torch.Tensor:
        return _nothing_to_ask(self.h)

    def host_answer(self, values: list[int]) -> None:
        pass


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
        if torch.compiler.is_compiling():
            out, (h, c) = lstm_step(model.lstm, model.embed(token), state.h, state.c)
            hidden = model.proj(out)  # (B, d): what `model.run` computes, one token long
        else:
            hidden, (h, c) = model.run(token[:, None], (state.h, state.c))
            hidden = hidden[:, 0]
        keep = active[None, :, None]
        state.h.copy_(torch.where(keep, h, state.h))
        state.c.copy_(torch.where(keep, c, state.c))
        return model.logits(hidden)


def lstm_step(
    lstm: torch.nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One token (B, d) through `lstm`'s layers written as the LSTM equations, for a compiled step:
    dynamo cannot trace `nn.LSTM` (a graph break in every step). Same result up to rounding.
    Returns the top layer's output (B, hidden) and the new (h, c), each (layers, B, hidden)."""
    hs, cs = [], []
    for layer in range(lstm.num_layers):
        gates = F.linear(
            x, getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"bias_ih_l{layer}", None)
        ) + F.linear(h[layer], getattr(lstm, f"weight_hh_l{layer}"), getattr(lstm, f"bias_hh_l{layer}", None))
        enter, forget, cell, out = gates.chunk(4, dim=-1)  # torch's gate order
        c_new = forget.sigmoid() * c[layer] + enter.sigmoid() * cell.tanh()
        x = out.sigmoid() * c_new.tanh()
        hs.append(x)
        cs.append(c_new)
    return x, (torch.stack(hs), torch.stack(cs))


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
    told_block_ends: bool | None = None  # whether the next step completes a block in some active row

    def nbytes(self) -> int:
        return sum(w.nbytes() for w in self.windows) + self.state.nbytes

    def completes_block(self, active: torch.Tensor) -> torch.Tensor:
        """(B,) the active rows whose next token is the last of their block."""
        width = self.windows[0].cur_k.shape[2]
        return active & (self.lengths % width == width - 1)

    def host_query(self, active: torch.Tensor) -> torch.Tensor:
        """Whether the next step moves some row's state on: the recurrent update costs as much as
        a layer over S tokens, too much for every step, so it runs only at a block's end."""
        return self.completes_block(active).any()[None].long()

    def host_answer(self, values: list[int]) -> None:
        (ends,) = values
        self.told_block_ends = bool(ends)


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
        # Own copies: the heads are views into one projection, and the step writes them in place.
        state_kv = tuple(t.clone() for t in model.recurrent.state_keys(state)[1:3])
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
                window.cur_k.copy_(torch.where(writes, k, window.cur_k))
                window.cur_v.copy_(torch.where(writes, v, window.cur_v))
                keys = torch.cat([window.prev_k, window.cur_k], dim=2)
                values = torch.cat([window.prev_v, window.cur_v], dim=2)
                return decode_attention(q, keys, values, visible)

            if isinstance(layer, RecurrentLayer):
                q, k, v = layer.attn.project(layer.attn_norm(x), cos, sin)
                x = layer.token_update(x, attend(q, k, v), *state.state_kv)
            else:
                x = layer(x, AttentionPattern(cos, sin, attend))
        logits = model.logits(x[:, 0])

        complete = state.completes_block(active)
        ends = state.told_block_ends
        state.told_block_ends = None
        if ends is None:  # not told: compiled, update (masked) rather than break the graph; eager, read it
            ends = torch.compiler.is_compiling() or bool(complete.any())
        if ends:
            recurrent = state.windows[model.recurrent_index]
            carried = model.recurrent.next_state(state.state, recurrent.cur_k, recurrent.cur_v)
            state.state.copy_(torch.where(complete[:, None, None], carried, state.state))
            for kept, new in zip(state.state_kv, model.recurrent.state_keys(state.state)[1:3]):
                kept.copy_(new)
            moved = complete[:, None, None, None]
            for window in state.windows:
                window.prev_k.copy_(torch.where(moved, window.cur_k, window.prev_k))
                window.prev_v.copy_(torch.where(moved, window.cur_v, window.prev_v))
        state.lengths += active.long()
        return logits
