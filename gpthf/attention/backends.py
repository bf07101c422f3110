"""Attention backends behind one interface, chosen by `impl.attention` (speed only, never results).

Each backend does the two token-level patterns the models need on (B, H, T, hd) tensors:
- `causal(q, k, v, dropout_p)`: the GPT's full causal attention;
- `within_sentences(sentence_ids, bounds=None)`: prepares, once per forward, the encoder's pattern
  (causal inside a sentence, blind across sentences) and returns `attend(q, k, v, dropout_p)` for
  every encoder layer.
The body's pattern is the same for all backends (`gpthf.attention.body`). With `SentenceBounds`
given, `within_sentences` takes every size from them and reads nothing back from the device.

`sdpa` runs everywhere. `flex` (FlexAttention) and `flash` (flash-attn) are CUDA-only; asking for them
where they cannot run is an error naming the alternatives, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gpthf.attention.sentences import SentenceBounds, longest_sentence, sentence_offsets, window_mask
from gpthf.errors import ConfigError

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


# Encoder queries per `F.scaled_dot_product_attention` call of the sdpa backend: rows up to this
# long are one window with one (B, 1, T, T) mask; longer ones are attended in windows of this many queries.
ENCODER_QUERY_CHUNK = 256
# Bytes of boolean window masks the sdpa backend builds once per forward and keeps for every encoder
# layer; windows whose masks would total more (sentences nearly as long as long rows) get each mask
# built when a layer uses it instead, so only one window's mask is held at a time.
ENCODER_MASK_BUDGET_BYTES = 64 << 20


class SdpaBackend:
    """`F.scaled_dot_product_attention`; the encoder gets a boolean block-diagonal causal mask.

    A token sees only its own sentence, which starts at most L - 1 tokens back (L: the batch's
    longest sentence, at most data.max_sentence_len). So a row is attended a window of C =
    ENCODER_QUERY_CHUNK queries at a time, each against the keys from L - 1 before the window to its
    end, and each token attends to the same keys as under the whole mask. The masks and scores cost
    O(T·(C + L)) for a row of T tokens: far below T² for short sentences, but T² again when L nears T
    (data.max_sentence_len close to data.seq_len). The masks are built once per forward and shared by
    every encoder layer while they total at most ENCODER_MASK_BUDGET_BYTES (B·T·(C + L) bytes); past
    that, each window's mask (B·C·(C + L) bytes) is built when a layer uses it and dropped after."""

    def causal(self, q, k, v, dropout_p: float = 0.0):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)

    def within_sentences(self, sentence_ids: torch.Tensor, bounds: SentenceBounds | None = None) -> Attend:
        batch, length = sentence_ids.shape
        # a query's sentence starts at most `reach` tokens back (a row of one window needs no sync for it)
        reach = longest_sentence(sentence_ids, bounds) - 1 if length > ENCODER_QUERY_CHUNK else 0
        windows = [  # (first query, end, first key)
            (start, min(start + ENCODER_QUERY_CHUNK, length), max(start - reach, 0))
            for start in range(0, length, ENCODER_QUERY_CHUNK)
        ]
        mask_bytes = sum(batch * (end - start) * (end - first_key) for start, end, first_key in windows)
        held = (  # mask (B, 1, end - start, end - first_key) of each window, kept for every layer
            [window_mask(sentence_ids, *window) for window in windows]
            if mask_bytes <= ENCODER_MASK_BUDGET_BYTES
            else None
        )

        def attend(q, k, v, dropout_p=0.0):
            out = []
            for i, (start, end, first_key) in enumerate(windows):
                mask = held[i] if held is not None else window_mask(sentence_ids, start, end, first_key)
                keys, values = k[:, :, first_key:end], v[:, :, first_key:end]
                out.append(  # (B, H, end - start, hd)
                    F.scaled_dot_product_attention(
                        q[:, :, start:end], keys, values, attn_mask=mask, dropout_p=dropout_p
                    )
                )
            return out[0] if len(out) == 1 else torch.cat(out, dim=2)  # (B, H, T, hd)

        return attend


def _no_dropout(name: str, dropout_p: float) -> None:
    if dropout_p > 0:
        raise ConfigError(
            f"impl.attention={name} has no attention dropout; set arch.dropout=0 or impl.attention=sdpa"
        )


class FlexBackend:
    """FlexAttention with a block mask built from sentence_ids (CUDA: it has no backward on CPU; its
    forward runs on CPU too, which the CPU tests use).

    Both the kernel and the block-mask builder are compiled with `dynamic=False`: each new (B, T)
    compiles them once more (seconds), and past torch's recompile limit they fall back to eager. So
    whatever runs flex uncompiled should keep shapes fixed: training rows are `data.seq_len` long,
    and evaluation pads its batches to a fixed shape. The builder is compiled because eager
    `create_block_mask` materialises the dense (B, 1, T, T) mask every forward; compiled, it builds
    the block structure without it. Causal masks depend on T only and are built once per T."""

    def __init__(self) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._create_block_mask = torch.compile(create_block_mask, dynamic=False)
        self._flex = torch.compile(flex_attention, dynamic=False)
        self._causal_masks: dict[tuple, object] = {}

    def _attend(self, block_mask) -> Attend:
        def attend(q, k, v, dropout_p=0.0):
            _no_dropout("flex", dropout_p)
            return self._flex(q, k, v, block_mask=block_mask)

        return attend

    def causal(self, q, k, v, dropout_p: float = 0.0):
        length = q.shape[-2]
        key = (length, q.device)
        if key not in self._causal_masks:
            self._causal_masks[key] = self._create_block_mask(
                _causal_mask_mod, None, None, length, length, device=q.device
            )
        return self._attend(self._causal_masks[key])(q, k, v, dropout_p)

    def within_sentences(self, sentence_ids: torch.Tensor, bounds: SentenceBounds | None = None) -> Attend:
        """`bounds` is not needed: the block mask's shape is (B, T) alone, nothing is read back."""

        def same_sentence_causal(b, h, qi, ki):
            return (sentence_ids[b, qi] == sentence_ids[b, ki]) & (ki <= qi)

        batch, length = sentence_ids.shape
        block_mask = self._create_block_mask(
            same_sentence_causal, batch, None, length, length, device=sentence_ids.device
        )
        return self._attend(block_mask)


def _causal_mask_mod(b, h, q_index, k_index):
    return k_index <= q_index


class FlashBackend:
    """flash-attn; the encoder runs `flash_attn_varlen_func` with every sentence as its own causal
    sequence (`cu_seqlens` from sentence boundaries), so it needs no mask at all. bf16/fp16 only."""

    def __init__(self) -> None:
        from flash_attn import flash_attn_func, flash_attn_varlen_func

        self._dense = flash_attn_func
        self._varlen = flash_attn_varlen_func

    @staticmethod
    def _check_dtype(q: torch.Tensor) -> None:
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(
                f"impl.attention=flash needs bf16/fp16 activations (got {q.dtype}); enable AMP or use impl.attention=sdpa"
            )

    def causal(self, q, k, v, dropout_p: float = 0.0):
        self._check_dtype(q)
        out = self._dense(
            *(t.transpose(1, 2) for t in (q, k, v)), dropout_p=dropout_p, causal=True
        )  # (B, T, H, hd)
        return out.transpose(1, 2)

    def within_sentences(self, sentence_ids: torch.Tensor, bounds: SentenceBounds | None = None) -> Attend:
        """With `bounds`, fixed-size offsets (empty sequences past the last sentence) and
        max_len = bounds.sentence_len: no `.nonzero()` or max read back."""
        batch, length = sentence_ids.shape
        cu_seqlens, max_len = sentence_offsets(sentence_ids, bounds)

        def attend(q, k, v, dropout_p=0.0):
            self._check_dtype(q)
            heads, head_dim = q.shape[1], q.shape[3]
            flat = [
                t.transpose(1, 2).reshape(batch * length, heads, head_dim) for t in (q, k, v)
            ]  # (B*T, H, hd)
            out = self._varlen(
                *flat, cu_seqlens, cu_seqlens, max_len, max_len, dropout_p=dropout_p, causal=True
            )
            return out.reshape(batch, length, heads, head_dim).transpose(1, 2)

        return attend


ATTENTION_BACKENDS: dict[str, type] = {"sdpa": SdpaBackend, "flex": FlexBackend, "flash": FlashBackend}


def backend_unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run here, or None when it can."""
    if name not in ATTENTION_BACKENDS:
        return f"unknown impl.attention={name!r}; choose one of: {', '.join(ATTENTION_BACKENDS)}"
    if name == "sdpa":
        return None
    if not torch.cuda.is_available():
        return f"impl.attention={name} needs a CUDA GPU (none here); use impl.attention=sdpa"
    if name == "flex":
        try:
            from torch.nn.attention import flex_attention  # noqa: F401
        except ImportError:
            return f"impl.attention=flex needs torch>=2.5 with FlexAttention (found {torch.__version__}); use sdpa"
    if name == "flash":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return 'impl.attention=flash needs flash-attn: pip install ".[gpu]"; or use impl.attention=sdpa or flex'
    return None


def get_backend(name: str):
    reason = backend_unavailable_reason(name)
    if reason:
        raise ConfigError(reason)
    return ATTENTION_BACKENDS[name]()
