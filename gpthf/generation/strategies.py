"""How each model turns context into next-token logits: `prefill` once, then `decode` per token.

- `full` (every model): recompute the whole context every step. Slow; kept as the oracle that the
  cached strategies must match token for token.
- `cached`: the strategy the model kind's spec names (gpthf.models.spec), here or in a module of its own.
- `cached` GPT: a per-layer KV cache over all tokens.
- `cached` linear attention / T2R, LSTM, Block-Recurrent Transformer: a fixed-size state
  (gpthf.generation.recurrent).
- `cached` GPTHF: the body's K/V of finished sentences only (one entry per sentence per body layer)
  plus the encoder's K/V of the sentence in progress (reset after its <eos>). A finished sentence
  never passes through the network again.

A strategy keeps everything it needs in the state object it returns; nothing is stored on the model.
Every row of a batch advances on its own: `active` (B,) says which rows take the token they are given.
A step writes its state in place (a compiled step's buffers keep their addresses, see
gpthf.generation.compiled). What a step must know on the host (an eager cache's window) the state
asks for with `host_query(active)` and is told with `host_answer(values)`: the generation loop reads
it with the one host sync it makes per step; a state not told reads it itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from gpthf.attention.sentences import sentence_end_positions
from gpthf.errors import ConfigError
from gpthf.generation.cache import KVCache
from gpthf.generation.context import causal_forward_capturing, closes_sentence, last_real, sentence_ids_for
from gpthf.generation.context import pad_rows as pad_rows  # where generation's clients have imported it
from gpthf.generation.decode_attention import decode_attention
from gpthf.generation.sentence_rows import pack_sentences
from gpthf.models import GPT, GPTHF, LanguageModel, spec_of
from gpthf.models.layers import AttentionPattern, rope_angles

CACHE_HEADROOM = 64  # entries allocated beyond the prompt before the first growth


def _cached_pattern(cache: KVCache, layer: int, cos, sin, visible: torch.Tensor) -> AttentionPattern:
    """Decode one token: store its k/v at each row's length, attend over the visible window."""

    def attend(q, k, v, dropout_p=0.0):
        cache.write_at_lengths(layer, k, v)
        keys, values = cache.window(layer, visible.shape[-1])
        return decode_attention(q, keys, values, visible)

    return AttentionPattern(cos, sin, attend)


@dataclass
class FullState:
    tokens: torch.Tensor  # (B, capacity)
    lengths: torch.Tensor  # (B,)
    told: tuple[int, int] | None = None  # the longest row before and after the next step

    def nbytes(self) -> int:
        return int(self.lengths.max()) * self.tokens.shape[0] * self.tokens.element_size()

    def host_query(self, active: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.lengths.max(), (self.lengths + active.long()).max()])

    def host_answer(self, values: list[int]) -> None:
        self.told = tuple(values)


class FullStrategy:
    """Recompute everything each step with the training forward."""

    def _logits(self, model: LanguageModel, state: FullState, longest: int) -> torch.Tensor:
        tokens = state.tokens[:, :longest]
        return last_real(model(tokens, sentence_ids_for(tokens, state.lengths)), state.lengths)

    def prefill(self, model: LanguageModel, tokens: torch.Tensor, lengths: torch.Tensor):
        capacity = tokens.shape[1] + CACHE_HEADROOM
        buffer = tokens.new_zeros(tokens.shape[0], capacity)
        buffer[:, : tokens.shape[1]] = tokens
        state = FullState(buffer, lengths.clone())
        return self._logits(model, state, int(lengths.max())), state

    def decode(
        self, model: LanguageModel, state: FullState, token: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        longest, longest_after = state.told or state.host_query(active).tolist()
        state.told = None
        if longest + 1 > state.tokens.shape[1]:
            grown = state.tokens.new_zeros(state.tokens.shape[0], 2 * state.tokens.shape[1])
            grown[:, : state.tokens.shape[1]] = state.tokens
            state.tokens = grown
        state.tokens.scatter_(1, state.lengths[:, None], token[:, None])
        state.lengths += active.long()
        return self._logits(model, state, longest_after)


@dataclass
class GPTCacheState:
    kv: KVCache

    def nbytes(self) -> int:
        return self.kv.nbytes()

    def fix_capacity(self, horizon) -> None:
        self.kv.fix_capacity(horizon.tokens + 1)

    def host_query(self, active: torch.Tensor) -> torch.Tensor:
        return self.kv.host_query()

    def host_answer(self, values: list[int]) -> None:
        self.kv.host_answer(values)


class GPTCachedStrategy:
    @staticmethod
    def kv_layers(model: GPT) -> dict[str, int]:
        """Layers whose KV entries a row's state adds per unit of its horizon (gpthf.generation.state_size)."""
        return {"tokens": len(model.blocks)}

    def prefill(self, model: GPT, tokens: torch.Tensor, lengths: torch.Tensor):
        batch, length = tokens.shape
        x, keys, values = causal_forward_capturing(model, tokens)
        kv = KVCache(
            len(model.blocks),
            batch,
            model.arch.n_heads,
            model.head_dim,
            length + CACHE_HEADROOM,
            x.device,
            x.dtype,
        )
        for layer, (k, v) in enumerate(zip(keys, values)):
            kv.write_prefix(layer, k, v)
        kv.lengths = lengths.clone()
        return model.logits(last_real(x, lengths)), GPTCacheState(kv)

    def decode(
        self, model: GPT, state: GPTCacheState, token: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        kv = state.kv
        visible = kv.visible_through_lengths(kv.next_window())
        cos, sin = rope_angles(kv.lengths[:, None], model.head_dim, model.arch.rope_base)
        x = model.embed(token[:, None])  # (B, 1, d)
        for layer, block in enumerate(model.blocks):
            x = block(x, _cached_pattern(kv, layer, cos, sin, visible))
        kv.lengths += active.long()
        return model.logits(x[:, 0])


@dataclass
class GPTHFCacheState:
    encoder: KVCache  # per encoder layer: the sentence in progress; lengths = its tokens so far
    body: KVCache  # per body layer: one entry per finished sentence; lengths = finished sentences

    def nbytes(self) -> int:
        return self.encoder.nbytes() + self.body.nbytes()

    def fix_capacity(self, horizon) -> None:
        self.encoder.fix_capacity(horizon.sentence_tokens + 1)
        self.body.fix_capacity(horizon.sentences + 1)

    def host_query(self, active: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encoder.host_query(), self.body.host_query()])

    def host_answer(self, values: list[int]) -> None:
        if values:  # both eager (a static pair asks for nothing)
            self.encoder.host_answer(values[:1])
            self.body.host_answer(values[1:])


class GPTHFCachedStrategy:
    prefills_without_padding = True  # its encoder reads prompts packed by sentence (sentence_rows)

    @staticmethod
    def kv_layers(model: GPTHF) -> dict[str, int]:
        """The body's entries per finished sentence, the encoder's per token of the one in progress."""
        return {"sentences": model.arch.n_body, "sentence_tokens": model.arch.n_enc}

    def prefill(self, model: GPTHF, tokens: torch.Tensor, lengths: torch.Tensor):
        batch, length = tokens.shape
        heads, head_dim = model.arch.n_heads, model.head_dim
        # The encoder reads the prompts' sentences packed into short rows (no padding computed);
        # `flat` finds prompt b's token t in them again.
        packed = pack_sentences(tokens, lengths)
        flat = packed.flat_index  # (B, T) into the R × C packed tokens
        index = torch.arange(length, device=tokens.device)
        real = index[None, :] < lengths[:, None]
        closes = closes_sentence(tokens) & real
        finished = closes.sum(1)  # (B,) finished sentences per row
        start = torch.where(closes, index, -1).amax(1) + 1  # (B,) first token of the sentence in progress
        in_progress = lengths - start

        # The body's output at a token depends only on the sentence ends before it and on itself, and
        # generation keeps only the ends' k/v and the last token's logits: so the body runs over those
        # alone, [end 0, ..., end S-1, last token], each one its own sentence (a prompt ending in
        # <eos> has no sentence in progress: its logits come from its last end). O(S) positions, not O(T).
        ends = sentence_end_positions(sentence_ids_for(tokens, lengths))[:, : int(finished.max())]  # (B, S)
        slots = torch.arange(ends.shape[1] + 1, device=tokens.device)
        picked = torch.cat([ends, (lengths - 1)[:, None]], dim=1)  # (B, S+1) token indices
        picked = torch.where(slots[None, :] < finished[:, None], picked, (lengths - 1)[:, None])
        kept, where = torch.unique(flat.gather(1, picked), return_inverse=True)  # into the packed tokens
        enc_k, enc_v = [], []
        x = model.embed(packed.tokens)  # (R, C, d)
        pattern = model.encoder_pattern(packed.sentence_ids).capturing(enc_k, enc_v)
        *lower, top = model.wlt_encoder
        for block in lower:
            x = block(x, pattern)
        x = top.forward_at(x, pattern, kept)[where]  # (B, S+1, d): the top layer only where kept
        body_k, body_v = [], []
        pattern = model.body_pattern(slots.expand(batch, -1)).capturing(body_k, body_v)
        for block in model.slt_body:
            x = block(x, pattern)
        last = torch.where(in_progress > 0, finished, finished - 1)  # the last token's slot
        logits = model.logits(x[torch.arange(batch, device=tokens.device), last])

        n_ends = ends.shape[1]
        body = KVCache(model.arch.n_body, batch, heads, head_dim, n_ends + CACHE_HEADROOM, x.device, x.dtype)
        for layer in range(model.arch.n_body):
            body.write_prefix(layer, body_k[layer][:, :, :n_ends], body_v[layer][:, :, :n_ends])
        body.lengths = finished

        span = max(int(in_progress.max()), 1)
        encoder = KVCache(model.arch.n_enc, batch, heads, head_dim, span + CACHE_HEADROOM, x.device, x.dtype)
        positions = (start[:, None] + torch.arange(span, device=tokens.device)[None, :]).clamp(max=length - 1)
        where = flat.gather(1, positions)  # (B, span) into the packed tokens
        for layer in range(model.arch.n_enc):
            k, v = (
                t.transpose(1, 2).reshape(-1, heads, head_dim)[where].transpose(1, 2)
                for t in (enc_k[layer], enc_v[layer])
            )
            encoder.write_prefix(layer, k, v)  # (B, H, span, hd)
        encoder.lengths = in_progress
        return logits, GPTHFCacheState(encoder, body)

    def decode(
        self, model: GPTHF, state: GPTHFCacheState, token: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        encoder, body = state.encoder, state.body
        x = model.embed(token[:, None])  # (B, 1, d)
        visible = encoder.visible_through_lengths(encoder.next_window())
        cos, sin = rope_angles(
            encoder.lengths[:, None], model.head_dim, model.arch.rope_base
        )  # position in sentence
        for layer, block in enumerate(model.wlt_encoder):
            x = block(x, _cached_pattern(encoder, layer, cos, sin, visible))

        # The token's own k/v go to the slot at each row's length (counted only if it closes its
        # sentence), so "the finished sentences' ends and itself" is exactly the entries up to that
        # length: the same cached attention as the encoder's.
        visible = body.visible_through_lengths(body.next_window())
        cos, sin = rope_angles(body.lengths[:, None], model.head_dim, model.arch.rope_base)  # sentence index
        for layer, block in enumerate(model.slt_body):
            x = block(x, _cached_pattern(body, layer, cos, sin, visible))
        logits = model.logits(x[:, 0])

        closing = closes_sentence(token) & active
        body.lengths += closing.long()
        encoder.lengths.copy_(torch.where(closing, 0, encoder.lengths + active.long()))
        return logits


STRATEGIES = ("cached", "full")


def cached_strategy_class(model: LanguageModel) -> type:
    """The `cached` strategy the model's spec names ("module:Class"): imported here, so the models
    never import generation."""
    module, _, name = spec_of(model).strategy.partition(":")
    return getattr(importlib.import_module(module), name)


def get_strategy(model: LanguageModel, name: str, compile_for=None):
    """The strategy `name` for this model; `compile_for=Horizon(...)` compiles its decode step
    (gpthf.generation.compiled) over caches sized for that horizon."""
    if compile_for is not None:
        if name != "cached":
            raise ConfigError("--compile applies to --strategy cached (full recomputes a growing context)")
        from gpthf.generation.compiled import CompiledStrategy

        return CompiledStrategy(get_strategy(model, name), compile_for, model.embed.weight.device)
    if name == "full":
        return FullStrategy()
    if name == "cached":
        return cached_strategy_class(model)()
    raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
