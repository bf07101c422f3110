"""`generate`: continue a list of prompts, every prompt through the engine (gpthf.generation.engine),
the one decoding loop; what stays here is the batch's view of it: one setting for every prompt,
results in prompt order, callbacks by prompt index."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gpthf.generation.compiled import Horizon
from gpthf.generation.engine import Engine, Event, RequestSettings, Token
from gpthf.generation.limits import (  # noqa: F401  (their home before the engine; imported from here)
    ContextLimit,
    GenerationError,
    PromptError,
    check_prompts,
)
from gpthf.generation.packed import packed_linears
from gpthf.generation.sampling import SamplingSettings
from gpthf.generation.state_size import horizon_of, open_sentence_counters
from gpthf.generation.strategies import pad_rows
from gpthf.models import LanguageModel
from gpthf.settings import MAX_NEW_TOKENS, MAX_SENTENCES, SEED, SLOTS, check_all


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
        check_all(self, (MAX_NEW_TOKENS, MAX_SENTENCES, SEED), GenerationError)  # `sampling` checks itself


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens of each row
    finish_reasons: list[str]  # eod | max_new_tokens | max_sentences | context
    state_bytes: int  # bytes of the strategy's state at the end
    step_logits: list[torch.Tensor] = field(default_factory=list)  # (B, V) per step, if recorded


HORIZON_CHUNK = 1024  # prompts padded together while `horizon` reads them


def horizon(prompts: Sequence[Sequence[int]], settings: GenerationSettings) -> Horizon:
    """The largest state any row of this generation can reach (each new token closes at most one
    sentence; a forced <eos> bounds the sentence in progress). Prompts are read HORIZON_CHUNK at a
    time: padded all at once, a batch job's million prompts would cost millions × the longest."""
    longest = longest_open = most_finished = 0
    for begin in range(0, len(prompts), HORIZON_CHUNK):
        tokens, lengths = pad_rows(prompts[begin : begin + HORIZON_CHUNK])
        open_tokens, finished = open_sentence_counters(tokens, lengths)
        longest = max(longest, int(lengths.max()))
        longest_open = max(longest_open, int(open_tokens.max()))
        most_finished = max(most_finished, int(finished.max()))
    return horizon_of(
        longest, longest_open, most_finished, settings.max_new_tokens, settings.max_sentence_len
    )


@torch.inference_mode()
def generate(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings = GenerationSettings(),
    strategy: str = "cached",
    on_token: Callable[[int, int], None] | None = None,
    slots: int | None = None,
    on_finish: Callable[[int, list[int], str], None] | None = None,
    compile: bool = False,
    pack: bool = True,
    keep_results: bool = True,
    sampling_keys: Sequence[int] | None = None,
) -> GenerationResult:
    """Continue each prompt (token ids, as `encode_prompt` makes them); rows advance independently.

    `slots` rows run at once (default: every prompt). With more prompts than slots this is
    continuous batching: the moment a row stops, its slot takes the next prompt (its state written
    into the batch; gpthf.generation.engine says when prompts are prefilled together), so no slot idles
    while a long row finishes.
    `on_token(prompt, token)` sees every new token, `on_finish(prompt, tokens, finish_reason)` every
    finished prompt, in the order they finish; the result lists them in prompt order.
    `keep_results=False` hands finished rows to `on_finish` only (the result's lists stay empty), so a
    batch job of millions of prompts that writes them out as they come holds only the rows in flight.
    `compile=True` runs the decode step compiled over caches sized for this call's horizon
    (gpthf.generation.compiled).
    `pack=True` multiplies eager calls of at least `slots` rows (decode steps, prefills) from
    weights packed for that many rows on CPU (gpthf.generation.packed); it changes rounding, not the
    algorithm.
    """
    check_prompts(model, prompts, settings.limit)
    if slots is not None:
        SLOTS.check(slots, GenerationError)
    keys = range(len(prompts)) if sampling_keys is None else sampling_keys
    if len(keys) != len(prompts):
        raise GenerationError(f"{len(keys)} sampling_keys for {len(prompts)} prompts; give one per prompt")
    if settings.max_new_tokens == 0:
        for prompt in range(len(prompts)) if on_finish is not None else ():
            on_finish(prompt, [], "max_new_tokens")
        count = len(prompts) if keep_results else 0
        return GenerationResult([[] for _ in range(count)], ["max_new_tokens"] * count, 0)

    width = min(slots or len(prompts), len(prompts))
    with packed_linears(model, width, enabled=pack):
        return _generate(
            model, prompts, settings, strategy, on_token, width, on_finish, compile, keep_results, keys
        )


RENAMED = {"max_tokens": "max_new_tokens"}  # the engine's finish reasons as GenerationResult names them
QUEUED_PER_SLOT = 2  # prompts handed to the engine ahead, per slot: enough to prefill a batch ahead


def _generate(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    strategy: str,
    on_token: Callable[[int, int], None] | None,
    width: int,
    on_finish: Callable[[int, list[int], str], None] | None,
    compile: bool,
    keep_results: bool,
    keys: Sequence[int],
) -> GenerationResult:
    """`generate` as a client of an engine of `width` slots: prompts go in a few per slot ahead
    (a batch job's million prompts are never all queued at once), events come back by prompt."""
    engine = Engine(
        model,
        limit=settings.limit,
        max_sentence_len=settings.max_sentence_len,
        max_batch=width,
        max_queue=QUEUED_PER_SLOT * width,
        compile=compile,
        strategy=strategy,
        horizon=horizon(prompts, settings) if compile else None,
        record_logits=settings.record_logits,
    )
    sampling = settings.sampling
    request = RequestSettings(
        max_tokens=settings.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        seed=settings.seed if settings.seed is not None else secrets.randbits(63),
        max_sentences=settings.max_sentences,
    )
    outputs: list[list[int]] = [[] for _ in prompts] if keep_results else []
    reasons = ["max_new_tokens"] * len(prompts) if keep_results else []

    def listener(prompt: int) -> Callable[[Event], None]:
        tokens: list[int] = []

        def on_event(event: Event) -> None:
            if isinstance(event, Token):
                tokens.append(event.token_id)
                if on_token is not None:
                    on_token(prompt, event.token_id)
                return
            reason = RENAMED.get(event.reason, event.reason)
            if keep_results:
                outputs[prompt], reasons[prompt] = tokens, reason
            if on_finish is not None:
                on_finish(prompt, tokens, reason)

        return on_event

    added = 0
    while True:
        while added < len(prompts) and engine.stats().waiting < QUEUED_PER_SLOT * width:
            engine.add(prompts[added], request, listener(added), sampling_key=keys[added])
            added += 1
        if not engine.step() and added == len(prompts):
            break
    return GenerationResult(outputs, reasons, engine.idle_state_bytes, engine.step_logits)
