"""Analytical FLOPs (2 per multiply-add, matrix products only, as `FlopCounterMode` counts them).

Per token and block: the projections cost 2·(4d² + 3·d·h) (q, k, v, out; SwiGLU gate, up, down) and
attention over n keys costs 4·d·n (scores and weighted values, all heads). The head costs 2·d·V.
What differs between the models is n:
- GPT: every earlier token of the context (and itself);
- GPTHF encoder: the earlier tokens of the same sentence (and itself);
- GPTHF body: the ends of the earlier sentences (and itself).
Linear attention / T2R and the LSTM attend to no keys: their per-token cost does not depend on the
context (a state update and a read, 4·F·d per layer for F features per head; T2R adds its feature
maps on q and k, 4·d·F).
"""

from __future__ import annotations

from gpthf.attention.linear import CHUNK
from gpthf.config import ArchConfig


def block_projection_flops(arch: ArchConfig) -> int:
    return 2 * (4 * arch.d_model**2 + 3 * arch.d_model * arch.mlp_hidden)


def attention_flops(arch: ArchConfig, n_keys: float) -> float:
    return 4 * arch.d_model * n_keys


def head_flops(arch: ArchConfig, vocab_size: int) -> int:
    return 2 * arch.d_model * vocab_size


def gpt_token_flops(arch: ArchConfig, vocab_size: int, n_keys: float) -> float:
    """One token's forward through the GPT, attending `n_keys` keys in every layer."""
    return arch.n_layers * (block_projection_flops(arch) + attention_flops(arch, n_keys)) + head_flops(
        arch, vocab_size
    )


def gpthf_token_flops(arch: ArchConfig, vocab_size: int, encoder_keys: float, body_keys: float) -> float:
    """One token's forward through GPTHF: `encoder_keys` in its sentence, `body_keys` sentence ends + itself."""
    encoder = arch.n_enc * (block_projection_flops(arch) + attention_flops(arch, encoder_keys))
    body = arch.n_body * (block_projection_flops(arch) + attention_flops(arch, body_keys))
    return encoder + body + head_flops(arch, vocab_size)


def feature_dim(arch: ArchConfig) -> int:
    """Features per head of linear attention: the head size for elu(x)+1, `feature_dim` when learned."""
    return arch.feature_dim if arch.feature_map == "learned" else arch.d_model // arch.n_heads


def linear_token_flops(arch: ArchConfig, vocab_size: int, chunk_keys: float = 0.0) -> float:
    """One token through linear attention: recurrent state read + update (and, in the chunked training
    form, `chunk_keys` direct keys inside its chunk)."""
    features = feature_dim(arch)
    attention = 4 * features * arch.d_model + 4 * features * chunk_keys * arch.n_heads
    maps = 4 * arch.d_model * features if arch.feature_map == "learned" else 0
    return arch.n_layers * (block_projection_flops(arch) + attention + maps) + head_flops(arch, vocab_size)


def lstm_token_flops(arch: ArchConfig, vocab_size: int) -> float:
    """One token through the LSTM layers (4 gates over input and hidden), the projection and the head."""
    hidden = arch.lstm_hidden
    layers = sum(8 * hidden * ((arch.d_model if i == 0 else hidden) + hidden) for i in range(arch.n_layers))
    return layers + 2 * hidden * arch.d_model + head_flops(arch, vocab_size)


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


def decode_flops(arch: ArchConfig, vocab_size: int, context_tokens: int, tokens_per_sentence: float) -> float:
    """FLOPs to generate one token after `context_tokens` tokens, with the cache (the new token included).

    For GPTHF the new token sits, on average, halfway through a sentence after
    context/tokens_per_sentence finished ones.
    """
    if arch.model == "gpt":
        return gpt_token_flops(arch, vocab_size, context_tokens + 1)
    if arch.model in ("linear", "t2r"):
        return linear_token_flops(arch, vocab_size)
    if arch.model == "lstm":
        return lstm_token_flops(arch, vocab_size)
    if arch.model == "block_recurrent":  # the previous block and, on average, half of its own
        return block_recurrent_token_flops(
            arch, vocab_size, min(context_tokens, arch.block_len) + arch.block_len / 2 + 0.5
        )
    finished = context_tokens // tokens_per_sentence
    return gpthf_token_flops(arch, vocab_size, tokens_per_sentence / 2 + 1, finished + 1)


def full_recompute_flops(
    arch: ArchConfig, vocab_size: int, context_tokens: int, tokens_per_sentence: float
) -> float:
    """FLOPs of the `full` strategy per generated token: a whole forward over the context."""
    return training_forward_flops(arch, vocab_size, context_tokens + 1, tokens_per_sentence) * (
        context_tokens + 1
    )


def training_forward_flops(
    arch: ArchConfig, vocab_size: int, seq_len: int, tokens_per_sentence: float
) -> float:
    """Forward FLOPs per token of a packed row, counting only the keys a token may attend."""
    if arch.model == "gpt":
        return gpt_token_flops(arch, vocab_size, (seq_len + 1) / 2)
    if arch.model in ("linear", "t2r"):
        return linear_token_flops(arch, vocab_size, chunk_keys=(min(CHUNK, seq_len) + 1) / 2)
    if arch.model == "lstm":
        return lstm_token_flops(arch, vocab_size)
    if arch.model == "block_recurrent":
        return block_recurrent_token_flops(
            arch, vocab_size, min(seq_len, arch.block_len) / 2 + arch.block_len / 2
        )
    sentences_per_row = max(seq_len / tokens_per_sentence, 1)
    return gpthf_token_flops(arch, vocab_size, (tokens_per_sentence + 1) / 2, (sentences_per_row - 1) / 2 + 1)


def training_flops_per_token(
    arch: ArchConfig, vocab_size: int, seq_len: int, tokens_per_sentence: float
) -> float:
    """Forward + backward (backward ≈ 2× forward)."""
    return 3 * training_forward_flops(arch, vocab_size, seq_len, tokens_per_sentence)
