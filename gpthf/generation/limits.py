"""What a model can continue: its context limit and the prompt checks every generation client makes.

Below both the engine (gpthf.generation.engine) and `generate`, so each states these rules once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpthf.data.special_tokens import SENTENCE_CLOSERS
from gpthf.errors import GpthfError
from gpthf.models import LanguageModel, spec_of


class GenerationError(GpthfError):
    """A prompt or setting generation cannot honour."""


@dataclass(frozen=True)
class ContextLimit:
    """How much context a model was trained for: tokens for a GPT, sentences for GPTHF's body."""

    tokens: int | None = None
    sentences: int | None = None


def stopping_limit(model: LanguageModel, limit: ContextLimit) -> ContextLimit:
    """The part of `limit` that stops this model's rows: what its spec says its context counts
    (sentences for GPTHF's body, tokens for the others)."""
    if spec_of(model).context_unit == "sentences":
        return ContextLimit(sentences=limit.sentences)
    return ContextLimit(tokens=limit.tokens)


class PromptError(GenerationError):
    """A prompt the model cannot continue; `prompt` is its index among the prompts given (None for a
    request that came alone), so a caller can name it in its own terms (a line of a batch file);
    `problem` is the message without that name."""

    def __init__(self, prompt: int | None, problem: str):
        super().__init__(f"prompt {prompt} {problem}" if prompt is not None else f"the prompt {problem}")
        self.prompt, self.problem = prompt, problem


def prompt_problem(model: LanguageModel, prompt: Sequence[int], limit: ContextLimit) -> str | None:
    """Why the model cannot continue `prompt` (a phrase after "prompt N"), or None when it can."""
    if len(prompt) == 0:
        return "is empty; every prompt needs at least one token"
    limit = stopping_limit(model, limit)
    if limit.sentences is not None:
        sentences = sum(1 for t in prompt if t in SENTENCE_CLOSERS)
        if sentences >= limit.sentences:
            return f"has {sentences} sentences; this GPTHF was trained with at most {limit.sentences} per row"
    if limit.tokens is not None and len(prompt) >= limit.tokens:
        return f"has {len(prompt)} tokens; this {model.arch.model} model was trained on {limit.tokens}-token rows"
    return None


def check_prompts(model: LanguageModel, prompts: Sequence[Sequence[int]], limit: ContextLimit) -> None:
    """Raises PromptError for the first prompt `generate` would refuse: before any work is done."""
    if not prompts:
        raise GenerationError("no prompts given")
    for row, prompt in enumerate(prompts):
        problem = prompt_problem(model, prompt, limit)
        if problem is not None:
            raise PromptError(row, problem)
