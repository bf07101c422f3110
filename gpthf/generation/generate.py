"""The decoding loop shared by every model and strategy: prefill, then sample and decode one token at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID
from gpthf.errors import GpthfError
from gpthf.generation.sampling import SamplingSettings, sample
from gpthf.generation.strategies import closes_sentence, get_strategy, pad_rows
from gpthf.models import GPTHF, LanguageModel


class GenerationError(GpthfError):
    """A prompt or setting generation cannot honour."""


@dataclass(frozen=True)
class ContextLimit:
    """How much context a model was trained for: tokens for a GPT, sentences for GPTHF's body."""

    tokens: int | None = None
    sentences: int | None = None


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 100
    max_sentences: int | None = None  # stop a row after it finished this many new sentences
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    seed: int | None = 0
    max_sentence_len: int | None = None  # as in training: a sentence this long is closed with <eos>
    limit: ContextLimit = field(default_factory=ContextLimit)
    record_logits: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens={self.max_new_tokens} must be >= 0")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise GenerationError(
                f"max_sentences={self.max_sentences} must be >= 1 (leave it unset for no limit)"
            )


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens of each row
    finish_reasons: list[str]  # eod | max_new_tokens | max_sentences | context
    state_bytes: int  # bytes of the strategy's state at the end
    step_logits: list[torch.Tensor] = field(default_factory=list)  # (B, V) per step, if recorded


def _check_prompts(model: LanguageModel, prompts: Sequence[Sequence[int]], limit: ContextLimit) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("every prompt needs at least one token")
    for row, prompt in enumerate(prompts):
        if isinstance(model, GPTHF) and limit.sentences is not None:
            sentences = sum(1 for t in prompt if t in (EOS_ID, EOD_ID))
            if sentences >= limit.sentences:
                raise GenerationError(
                    f"prompt {row} has {sentences} sentences; this GPTHF was trained with at most {limit.sentences} per row"
                )
        if not isinstance(model, GPTHF) and limit.tokens is not None and len(prompt) >= limit.tokens:
            raise GenerationError(
                f"prompt {row} has {len(prompt)} tokens; this {model.arch.model} model was trained on {limit.tokens}-token rows"
            )


@torch.inference_mode()
def generate(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings = GenerationSettings(),
    strategy: str = "cached",
    on_token: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Continue each prompt (token ids, as `encode_prompt` makes them); rows advance independently."""
    _check_prompts(model, prompts, settings.limit)
    device = model.embed.weight.device
    batch = len(prompts)
    outputs: list[list[int]] = [[] for _ in prompts]
    reasons = ["max_new_tokens"] * batch
    if settings.max_new_tokens == 0:
        return GenerationResult(outputs, reasons, 0)

    tokens, lengths = pad_rows(prompts, device)
    runner = get_strategy(model, strategy)
    logits, state = runner.prefill(model, tokens, lengths)
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed if settings.seed is not None else torch.seed())

    # Per-row bookkeeping, identical for every strategy.
    index = torch.arange(tokens.shape[1], device=device)
    closes = closes_sentence(tokens) & (index[None, :] < lengths[:, None])
    sentence_len = lengths - (torch.where(closes, index, -1).amax(1) + 1)  # tokens in the open sentence
    sentences = closes.sum(1)  # finished sentences in the context
    new_sentences = torch.zeros_like(sentences)
    context_tokens = lengths.clone()
    active = torch.ones(batch, dtype=torch.bool, device=device)
    step_logits = []

    for step in range(settings.max_new_tokens):
        if settings.record_logits:
            step_logits.append(logits.float().cpu())
        next_token = sample(logits, settings.sampling, generator)
        if settings.max_sentence_len is not None:
            next_token = torch.where(sentence_len >= settings.max_sentence_len - 1, EOS_ID, next_token)
        next_token = torch.where(active, next_token, PAD_ID)
        for row in active.nonzero().flatten().tolist():
            outputs[row].append(int(next_token[row]))
            if on_token is not None:
                on_token(row, int(next_token[row]))

        closing = closes_sentence(next_token) & active
        sentence_len = torch.where(closing, 0, sentence_len + 1)
        sentences += closing.long()
        new_sentences += closing.long()
        context_tokens += active.long()
        stops = {
            "eod": next_token == EOD_ID,
            "max_sentences": new_sentences >= settings.max_sentences
            if settings.max_sentences
            else torch.zeros_like(active),
            "context": (
                sentences >= settings.limit.sentences
                if settings.limit.sentences and isinstance(model, GPTHF)
                else torch.zeros_like(active)
            )
            | (
                context_tokens >= settings.limit.tokens
                if settings.limit.tokens and not isinstance(model, GPTHF)
                else torch.zeros_like(active)
            ),
        }
        for reason, hit in stops.items():
            for row in (hit & active).nonzero().flatten().tolist():
                reasons[row] = reason
            active = active & ~hit
        if step == settings.max_new_tokens - 1 or not active.any():
            break
        logits = runner.decode(model, state, next_token, active)
    return GenerationResult(outputs, reasons, state.nbytes(), step_logits)
