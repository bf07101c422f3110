"""The Block-Recurrent Transformer (Hutchins et al. 2022) in the GPT's clothes.

The row is read in blocks of W = `arch.block_len` tokens. Every layer attends within a sliding
window: a token sees the earlier tokens of its own block and all of the previous block. One layer
(`arch.recurrent_layer`) is recurrent: it also carries `arch.n_states` state vectors from block to block.
- vertical (tokens): window self-attention and cross-attention to the state entering the block, side
  by side, their outputs concatenated and projected; then the usual MLP;
- horizontal (state): the state attends to itself and to the block's tokens (the keys and values of the
  vertical self-attention), projected, then the MLP; residual connections replaced by gates
  (`arch.state_gate`: `fixed`, a learned per-channel mix and the paper's best-reported choice, or
  `lstm`, input and forget gates computed from the update).
The state a block's tokens read is the one made from all earlier blocks, so the model is causal.
In training every token's window attention runs in parallel; only the state update loops over the
blocks, and `arch.truncate_blocks` cuts its gradient every that many blocks.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpthf.attention.sentences import SentenceBounds
from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.base import LanguageModel
from gpthf.models.flops import attention_flops, block_projection_flops, head_flops
from gpthf.models.layers import AttentionPattern, Block, RMSNorm, SelfAttention, SwiGLU, rope_angles
from gpthf.models.spec import ModelSpec

STATE_GATES = ("fixed", "lstm")
FIXED_GATE_BIAS = 2.0  # sigmoid(2) ≈ 0.88: a fresh state mostly keeps what it holds


def window_mask(length: int, block_len: int, device=None) -> torch.Tensor:
    """(T, T) bool: key j is visible to query i when j <= i and j is in i's block or the one before."""
    i = torch.arange(length, device=device)
    return (i[None, :] <= i[:, None]) & (i[None, :] // block_len >= i[:, None] // block_len - 1)


class StateGate(nn.Module):
    """Where a transformer adds a residual, the state mixes its old value with the update."""

    def __init__(self, d_model: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "fixed":
            self.bias = nn.Parameter(torch.empty(d_model))
            self.reset_parameters()
        else:
            self.gates = nn.Linear(d_model, 3 * d_model)

    def reset_parameters(self) -> None:
        if self.kind == "fixed":
            nn.init.constant_(self.bias, FIXED_GATE_BIAS)

    def forward(self, old: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        if self.kind == "fixed":
            keep = torch.sigmoid(self.bias)
            return old * keep + update * (1 - keep)
        candidate, into, forget = self.gates(update).chunk(3, dim=-1)
        return old * torch.sigmoid(forget + 1.0) + torch.tanh(candidate) * torch.sigmoid(into - 1.0)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., L, d) -> (..., H, L, hd)."""
    *lead, length, width = x.shape
    return x.view(*lead, length, n_heads, width // n_heads).transpose(-3, -2)


def _merge(y: torch.Tensor) -> torch.Tensor:
    """(..., H, L, hd) -> (..., L, d)."""
    y = y.transpose(-3, -2)
    return y.reshape(*y.shape[:-2], -1)


class RecurrentLayer(nn.Module):
    def __init__(self, arch: ArchConfig):
        super().__init__()
        d, self.n_heads = arch.d_model, arch.n_heads
        self.attn_norm = RMSNorm(d, arch.norm_eps)
        self.attn = SelfAttention(arch)  # token q, k, v (RoPE) and the out projection of the self half
        self.query_state = nn.Linear(d, d, bias=False)  # token queries into the state
        self.out_state = nn.Linear(d, d, bias=False)  # the cross half of the concatenated projection
        self.mlp_norm = RMSNorm(d, arch.norm_eps)
        self.mlp = SwiGLU(arch)

        self.state_ids = nn.Parameter(torch.zeros(arch.n_states, d))  # learned identity of each vector
        self.initial_state = nn.Parameter(torch.zeros(arch.n_states, d))
        self.state_norm = RMSNorm(d, arch.norm_eps)
        self.state_qkv = nn.Linear(d, 3 * d, bias=False)
        self.state_query_tokens = nn.Linear(d, d, bias=False)
        self.state_out = nn.Linear(2 * d, d, bias=False)
        self.state_gate = StateGate(d, arch.state_gate)
        self.state_mlp_norm = RMSNorm(d, arch.norm_eps)
        self.state_mlp = SwiGLU(arch)
        self.state_mlp_gate = StateGate(d, arch.state_gate)

    def start_state(self, batch: int) -> torch.Tensor:
        return self.initial_state.expand(batch, -1, -1)

    def state_keys(self, state: torch.Tensor):
        """The normed state's (q, k, v) heads (B, H, S, hd), and its queries into the tokens."""
        normed = self.state_norm(state + self.state_ids)
        q, k, v = (_heads(t, self.n_heads) for t in self.state_qkv(normed).chunk(3, dim=-1))
        return q, k, v, _heads(self.state_query_tokens(normed), self.n_heads)

    def next_state(self, state: torch.Tensor, block_k: torch.Tensor, block_v: torch.Tensor) -> torch.Tensor:
        """The state after reading one block of tokens (their k, v: (B, H, W, hd))."""
        q, k, v, q_tokens = self.state_keys(state)
        own = F.scaled_dot_product_attention(q, k, v)
        read = F.scaled_dot_product_attention(q_tokens, block_k, block_v)
        state = self.state_gate(state, self.state_out(torch.cat([_merge(own), _merge(read)], dim=-1)))
        return self.state_mlp_gate(state, self.state_mlp(self.state_mlp_norm(state)))

    def token_update(self, x, self_attention: torch.Tensor, state_k, state_v) -> torch.Tensor:
        """x + [window self-attention, cross-attention to the state] projected, then + MLP.

        x (..., L, d); self_attention (..., H, L, hd); state_k/v (..., H, S, hd).
        """
        q = _heads(self.query_state(self.attn_norm(x)), self.n_heads)
        cross = F.scaled_dot_product_attention(q, state_k, state_v)
        x = x + self.attn.out(_merge(self_attention)) + self.out_state(_merge(cross))
        return x + self.mlp(self.mlp_norm(x))


class BlockRecurrentTransformer(LanguageModel):
    def __init__(self, arch: ArchConfig, vocab_size: int, attention: str = "sdpa"):
        recurrent_index = arch.recurrent_layer
        if recurrent_index is None and arch.n_layers:
            recurrent_index = max(arch.n_layers - 2, 0)  # high in the stack, as in the paper
        if not arch.n_layers or not 0 <= recurrent_index < arch.n_layers:
            raise ConfigError(
                f"arch.model=block_recurrent needs arch.n_layers >= 1 and 0 <= arch.recurrent_layer < n_layers, "
                f"got {arch.n_layers}, {arch.recurrent_layer}"
            )
        if arch.state_gate not in STATE_GATES or arch.block_len < 1 or arch.n_states < 1:
            raise ConfigError(
                f"arch.state_gate must be one of {', '.join(STATE_GATES)} (got {arch.state_gate!r}); "
                f"arch.block_len and arch.n_states >= 1 (got {arch.block_len}, {arch.n_states})"
            )
        self.n_blocks = arch.n_layers
        super().__init__(arch, vocab_size, attention)
        self.recurrent_index = recurrent_index
        self.layers = nn.ModuleList(
            RecurrentLayer(arch) if i == recurrent_index else Block(arch) for i in range(arch.n_layers)
        )
        self.init_weights()

    def init_weights(self) -> None:
        super().init_weights()
        for module in self.modules():  # the fixed gates keep their remembering start
            if isinstance(module, StateGate):
                module.reset_parameters()

    @property
    def recurrent(self) -> RecurrentLayer:
        return self.layers[self.recurrent_index]

    def window_pattern(self, positions: torch.Tensor) -> AttentionPattern:
        length = positions.shape[1]
        mask = window_mask(length, self.arch.block_len, positions.device)
        cos, sin = rope_angles(positions, self.head_dim, self.arch.rope_base)

        def attend(q, k, v, dropout_p=0.0):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

        return AttentionPattern(cos, sin, attend)

    def run(self, input_ids: torch.Tensor):
        """(last layer's output (B, T, d), every layer's k and v (B, H, T, hd), the recurrent layer's state
        entering each block and after the last: a list of n_blocks + 1 tensors (B, S, d))."""
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(batch, length)
        pattern = self.window_pattern(positions)
        keys, values = [], []
        capturing = pattern.capturing(keys, values)
        x, states = self.embed(input_ids), []
        for layer in self.layers:
            if not isinstance(layer, RecurrentLayer):
                x = layer(x, capturing)
                continue
            q, k, v = layer.attn.project(layer.attn_norm(x), pattern.cos, pattern.sin)
            keys.append(k)
            values.append(v)
            window = pattern.attend(q, k, v, self.arch.dropout if self.training else 0.0)
            states = self._states_over_blocks(layer, k, v, batch)
            x = self._read_states(layer, x, window, states[:-1])
        return x, keys, values, states

    def _states_over_blocks(self, layer: RecurrentLayer, k, v, batch: int) -> list[torch.Tensor]:
        width, truncate = self.arch.block_len, self.arch.truncate_blocks
        states = [layer.start_state(batch)]
        for n, start in enumerate(range(0, k.shape[2], width), start=1):
            state = layer.next_state(
                states[-1], k[:, :, start : start + width], v[:, :, start : start + width]
            )
            states.append(state.detach() if truncate and n % truncate == 0 else state)
        return states

    def _read_states(self, layer: RecurrentLayer, x, window, states: list[torch.Tensor]) -> torch.Tensor:
        """Every block's tokens read the state entering their block, all blocks at once."""
        batch, length, width = x.shape[0], x.shape[1], self.arch.block_len
        pad = (-length) % width
        blocks = (length + pad) // width
        x_b = F.pad(x, (0, 0, 0, pad)).view(batch, blocks, width, -1)  # (B, N, W, d)
        w_b = F.pad(window, (0, 0, 0, pad)).view(*window.shape[:2], blocks, width, -1).transpose(1, 2)
        heads = [layer.state_keys(s)[1:3] for s in states]  # per block: (B, H, S, hd) each
        state_k = torch.stack([k for k, _ in heads], dim=1)  # (B, N, H, S, hd)
        state_v = torch.stack([v for _, v in heads], dim=1)
        out = layer.token_update(x_b, w_b, state_k, state_v)
        return out.reshape(batch, blocks * width, -1)[:, :length]

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        sentence_ids: torch.Tensor | None = None,
        bounds: SentenceBounds | None = None,
    ) -> torch.Tensor:
        """(B, T, d). `sentence_ids` and `bounds` are accepted for a common interface and not used."""
        return self.run(input_ids)[0]

    def block_stack(self) -> list[nn.Module]:
        return []  # its recurrent layer has no counterpart in a GPT: no init_from conversion


def block_recurrent_token_flops(
    arch: ArchConfig, vocab_size: int, window_keys: float, state_update_share: float = 1.0
) -> float:
    """One token through the Block-Recurrent Transformer: every layer attends `window_keys` keys; the
    recurrent layer adds its reads of the state and 1/W of one state update (times `state_update_share`)."""
    d, states, width = arch.d_model, arch.n_states, arch.block_len
    layers = arch.n_layers * (block_projection_flops(arch) + attention_flops(arch, window_keys))
    reads = 2 * 2 * d * d + 4 * d * states  # token queries into the state, their projection, attention
    update = states * (
        2 * (3 * d * d + d * d + 2 * d * d) + 4 * d * (states + width) + 6 * d * arch.mlp_hidden
    )
    if arch.state_gate == "lstm":
        update += states * 2 * 2 * 3 * d * d
    per_block_keys = states * 2 * 3 * d  # the new state's keys and values, as the next block reads them
    share = state_update_share * (update + per_block_keys) / width
    return layers + reads + share + head_flops(arch, vocab_size)


def block_recurrent_decode_flops(
    arch: ArchConfig, vocab_size: int, context_tokens: int, tokens_per_sentence: float
) -> float:
    """The window holds the previous block and, on average, half of the token's own."""
    window = min(context_tokens, arch.block_len) + arch.block_len / 2 + 0.5
    return block_recurrent_token_flops(arch, vocab_size, window)


def block_recurrent_forward_flops(
    arch: ArchConfig, vocab_size: int, seq_len: int, tokens_per_sentence: float
) -> float:
    """In training, on average half of the previous block and half of the token's own."""
    window = min(seq_len, arch.block_len) / 2 + arch.block_len / 2
    return block_recurrent_token_flops(arch, vocab_size, window)


SPEC = ModelSpec(
    kind="block_recurrent",
    rank=5,
    model=BlockRecurrentTransformer,
    fields=("n_layers", "block_len", "n_states", "recurrent_layer", "state_gate", "truncate_blocks"),
    strategy="gpthf.generation.recurrent:BlockRecurrentStrategy",
    forward_flops=block_recurrent_forward_flops,
    decode_flops=block_recurrent_decode_flops,
    color="C6",
    marker="P",
)
