"""How large a generation's state can grow: each row's horizon, and the bytes one row holds at it.

The horizon bounds what a row can reach (each new token closes at most one sentence; a forced <eos>
bounds the sentence in progress; the context limit stops a row). A compiled step sizes its static
caches for it (gpthf.generation.compiled), and the engine admits a request only when the bytes at
its horizon fit its memory budget (gpthf.generation.engine): counted at the horizon, not at the
prompt, so rows admitted together never outgrow the budget later.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from gpthf.data.special_tokens import SENTENCE_CLOSERS
from gpthf.generation.compiled import Horizon
from gpthf.generation.limits import ContextLimit
from gpthf.generation.strategies import cached_strategy_class, closes_sentence, get_strategy
from gpthf.models import LanguageModel


def open_sentence_counters(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of right-padded prompts: tokens of the sentence in progress, finished sentences."""
    index = torch.arange(tokens.shape[1], device=tokens.device)
    closes = closes_sentence(tokens) & (index[None, :] < lengths[:, None])
    return lengths - (torch.where(closes, index, -1).amax(1) + 1), closes.sum(1)


def horizon_of(
    longest: int, longest_open: int, most_finished: int, max_new_tokens: int, max_sentence_len: int | None
) -> Horizon:
    """The horizon of prompts with these extremes: the one rule both a batch's horizon
    (gpthf.generation.generate.horizon) and `row_horizon` apply."""
    if max_sentence_len is not None:
        sentence_tokens = max(max_sentence_len, longest_open + 1)
    else:
        sentence_tokens = longest_open + max_new_tokens
    return Horizon(
        tokens=longest + max_new_tokens,
        sentence_tokens=sentence_tokens,
        sentences=most_finished + max_new_tokens,
    )


def row_horizon(
    prompt: Sequence[int],
    max_new_tokens: int,
    max_sentence_len: int | None,
    limit: ContextLimit | None = None,
    max_sentences: int | None = None,
) -> Horizon:
    """One prompt's horizon, read on the host, narrowed by what stops the row sooner: its context
    limit (tokens, sentences) and its `max_sentences`."""
    finished = open_tokens = 0
    for token in prompt:
        if token in SENTENCE_CLOSERS:
            finished, open_tokens = finished + 1, 0
        else:
            open_tokens += 1
    reach = horizon_of(len(prompt), open_tokens, finished, max_new_tokens, max_sentence_len)
    tokens, sentences = reach.tokens, reach.sentences
    limit = limit or ContextLimit()
    if max_sentences is not None:
        sentences = min(sentences, finished + max_sentences)
    if limit.tokens is not None:
        tokens = min(tokens, limit.tokens)
    if limit.sentences is not None:
        sentences = min(sentences, limit.sentences)
    return Horizon(tokens=tokens, sentence_tokens=reach.sentence_tokens, sentences=sentences)


_FIXED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(strategy, dtype, device): bytes}


def _fixed_state_bytes(model: LanguageModel, strategy: str) -> int:
    """A one-token prefill's state: what a row of a model whose state never grows holds at any
    length. Measured once per model, format and device (every `generate()` makes an engine)."""
    weight = model.embed.weight
    known = _FIXED.setdefault(model, {})
    key = (strategy, weight.dtype, weight.device)
    if key not in known:
        one = torch.ones(1, dtype=torch.long, device=weight.device)
        with torch.inference_mode():
            _, state = get_strategy(model, strategy).prefill(model, one[:, None], one)
        known[key] = state.nbytes()
    return known[key]


class StateSize:
    """Bytes of one row's generation state at a horizon, for one model and strategy: a GPT's KV
    entries per token, GPTHF's body entries per sentence and encoder entries per token of the
    sentence in progress, the fixed state of the recurrent kinds (measured once, from a one-token
    prefill). Equals the strategy's own `nbytes()` of a row filled to that horizon."""

    def __init__(self, model: LanguageModel, strategy: str = "cached"):
        self.per_token = self.per_sentence = self.per_sentence_token = self.fixed = 0
        weight = model.embed.weight
        if strategy == "full":  # the token ids themselves
            self.per_token = torch.empty(0, dtype=torch.long).element_size()
            return
        entry = 2 * model.arch.n_heads * model.head_dim * weight.element_size()  # a key and a value
        kv_layers = getattr(cached_strategy_class(model), "kv_layers", None)  # None: a state that never grows
        if kv_layers is None:
            self.fixed = _fixed_state_bytes(model, strategy)
            return
        layers = kv_layers(model)
        self.per_token = entry * layers.get("tokens", 0)
        self.per_sentence = entry * layers.get("sentences", 0)
        self.per_sentence_token = entry * layers.get("sentence_tokens", 0)

    def __call__(self, horizon: Horizon) -> int:
        return (
            self.fixed
            + self.per_token * horizon.tokens
            + self.per_sentence * horizon.sentences
            + self.per_sentence_token * horizon.sentence_tokens
        )
