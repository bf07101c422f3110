"""The decoding loop shared by every model and strategy: prefill, then sample and decode one token at a time.

A step reads the device once: the new tokens, each row's stop (if any) and what the strategy's next
step must know on the host, packed into one tensor and read with one `.tolist()`. Everything else
(sampling, counters, stop conditions, which rows stay active) is computed on the device, so a GPU
step never waits for the host in between; the host mirrors which rows are live from the stops it reads.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID
from gpthf.errors import GpthfError
from gpthf.generation.compiled import Horizon
from gpthf.generation.packed import packed_linears
from gpthf.generation.rows import put_rows, row_range
from gpthf.generation.sampling import PromptStreams, SamplingSettings, sample
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


class PromptError(GenerationError):
    """A prompt the model cannot continue; `prompt` is its index among the prompts given, so a caller
    can name it in its own terms (a line of a batch file)."""

    def __init__(self, prompt: int, problem: str):
        super().__init__(f"prompt {prompt} {problem}")
        self.prompt, self.problem = prompt, problem


def check_prompts(model: LanguageModel, prompts: Sequence[Sequence[int]], limit: ContextLimit) -> None:
    """Raises PromptError for the first prompt `generate` would refuse: before any work is done."""
    if not prompts:
        raise GenerationError("no prompts given")
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise PromptError(row, "is empty; every prompt needs at least one token")
        if isinstance(model, GPTHF) and limit.sentences is not None:
            sentences = sum(1 for t in prompt if t in (EOS_ID, EOD_ID))
            if sentences >= limit.sentences:
                raise PromptError(
                    row,
                    f"has {sentences} sentences; this GPTHF was trained with at most {limit.sentences} per row",
                )
        if not isinstance(model, GPTHF) and limit.tokens is not None and len(prompt) >= limit.tokens:
            raise PromptError(
                row,
                f"has {len(prompt)} tokens; this {model.arch.model} model was trained on {limit.tokens}-token rows",
            )


def _open_sentence_counters(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of right-padded prompts: tokens of the sentence in progress, finished sentences."""
    index = torch.arange(tokens.shape[1], device=tokens.device)
    closes = closes_sentence(tokens) & (index[None, :] < lengths[:, None])
    return lengths - (torch.where(closes, index, -1).amax(1) + 1), closes.sum(1)


@dataclass
class Prefilled:
    """Prompts prefilled ahead of their slots, waiting in prompt order: rows `taken:` are still free."""

    prompts: list[int]
    tokens: torch.Tensor  # (N, T) right-padded
    lengths: torch.Tensor  # (N,)
    logits: torch.Tensor | None  # (N, V)
    state: object
    taken: int = 0

    @classmethod
    def none(cls) -> Prefilled:
        return cls([], torch.zeros(0, 1), torch.zeros(0), None, None)

    def __len__(self) -> int:
        return len(self.prompts) - self.taken

    def take(self, count: int) -> Prefilled:
        """The next `count` waiting prompts (fewer if fewer wait), their rows as views: `put_rows`
        copies them into the batch once."""
        start = self.taken
        self.taken = min(start + count, len(self.prompts))
        return Prefilled(
            self.prompts[start : self.taken],
            self.tokens[start : self.taken],
            self.lengths[start : self.taken],
            self.logits[start : self.taken],
            row_range(self.state, start, self.taken),
        )


def _prefill_ahead(model, runner, prompts, pending: deque, needed: int, width: int, device) -> Prefilled:
    """Prefill the next waiting prompts for `needed` free slots. A strategy whose batched prefill
    computes no padding (GPTHF's sentence-packed one) prefills a whole batch of `width` ahead: one
    call for many prompts costs far less per prompt than one call each (measured on the sweep's
    gpthf-5m: 4.4 against 10 ms for prompts of 4-128 tokens); others prefill only what is needed, as
    padding prompts of mixed lengths to the longest would cost more than the calls it saves."""
    count = max(needed, width) if getattr(runner, "prefills_without_padding", False) else needed
    arrivals = [pending.popleft() for _ in range(min(count, len(pending)))]
    tokens, lengths = pad_rows([prompts[i] for i in arrivals], device)
    logits, state = runner.prefill(model, tokens, lengths)
    return Prefilled(arrivals, tokens, lengths, logits, state)


HORIZON_CHUNK = 1024  # prompts padded together while `horizon` reads them


def horizon(prompts: Sequence[Sequence[int]], settings: GenerationSettings) -> Horizon:
    """The largest state any row of this generation can reach (each new token closes at most one
    sentence; a forced <eos> bounds the sentence in progress). Prompts are read HORIZON_CHUNK at a
    time: padded all at once, a batch job's million prompts would cost millions × the longest."""
    longest = longest_open = most_finished = 0
    for begin in range(0, len(prompts), HORIZON_CHUNK):
        tokens, lengths = pad_rows(prompts[begin : begin + HORIZON_CHUNK])
        open_tokens, finished = _open_sentence_counters(tokens, lengths)
        longest = max(longest, int(lengths.max()))
        longest_open = max(longest_open, int(open_tokens.max()))
        most_finished = max(most_finished, int(finished.max()))
    if settings.max_sentence_len is not None:
        sentence_tokens = max(settings.max_sentence_len, longest_open + 1)
    else:
        sentence_tokens = longest_open + settings.max_new_tokens
    return Horizon(
        tokens=longest + settings.max_new_tokens,
        sentence_tokens=sentence_tokens,
        sentences=most_finished + settings.max_new_tokens,
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
    into the batch; `_prefill_ahead` says when prompts are prefilled together), so no slot idles
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
    if slots is not None and slots < 1:
        raise GenerationError(f"slots={slots} must be >= 1")
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
    """`generate`'s loop over `width` slots."""
    device = model.embed.weight.device
    running: dict[int, list[int]] = {}  # new tokens of the prompts in flight
    outputs: list[list[int]] = [[] for _ in prompts] if keep_results else []
    reasons = ["max_new_tokens"] * len(prompts) if keep_results else []
    runner = get_strategy(model, strategy, compile_for=horizon(prompts, settings) if compile else None)
    pending = deque(range(len(prompts)))
    prompt_of = [pending.popleft() for _ in range(width)]  # which prompt each slot is generating
    running.update((prompt, []) for prompt in prompt_of)
    tokens, lengths = pad_rows([prompts[i] for i in prompt_of], device)
    logits, state = runner.prefill(model, tokens, lengths)
    sampled = settings.sampling.temperature > 0
    streams = PromptStreams(
        settings.seed if settings.seed is not None else secrets.randbits(63), width, device
    )
    for slot, prompt in enumerate(prompt_of if sampled else ()):
        streams.assign(slot, keys[prompt])

    # Per-slot bookkeeping, identical for every strategy.
    sentence_len, sentences = _open_sentence_counters(tokens, lengths)
    new_sentences = torch.zeros_like(sentences)
    new_tokens = torch.zeros_like(sentences)
    context_tokens = lengths.clone()
    active = torch.ones(width, dtype=torch.bool, device=device)
    live = [True] * width  # `active` as the host knows it
    never = torch.zeros_like(active)
    step_logits = []
    ready = Prefilled.none()  # prompts prefilled ahead of a free slot

    while True:
        if settings.record_logits:
            step_logits.append(logits.float().cpu())
        next_token = sample(logits, settings.sampling, streams.uniforms() if sampled else None)
        if settings.max_sentence_len is not None:
            next_token = torch.where(sentence_len >= settings.max_sentence_len - 1, EOS_ID, next_token)
        next_token = torch.where(active, next_token, PAD_ID)

        closing = closes_sentence(next_token) & active
        sentence_len = torch.where(closing, 0, sentence_len + 1)
        sentences += closing.long()
        new_sentences += closing.long()
        new_tokens += active.long()
        context_tokens += active.long()
        limit = settings.limit
        stops = {
            "eod": next_token == EOD_ID,
            "max_sentences": new_sentences >= settings.max_sentences if settings.max_sentences else never,
            "context": (
                sentences >= limit.sentences if limit.sentences and isinstance(model, GPTHF) else never
            )
            | (context_tokens >= limit.tokens if limit.tokens and not isinstance(model, GPTHF) else never),
            "max_new_tokens": new_tokens >= settings.max_new_tokens,
        }
        stopped_by = _first_stop(list(stops.values()), active)  # (B,) 0: goes on, i: stops[i - 1]
        active = active & (stopped_by == 0)
        read = torch.cat([next_token, stopped_by, state.host_query(active)]).tolist()  # the step's one sync
        for slot in range(width):
            if live[slot]:
                running[prompt_of[slot]].append(read[slot])
                if on_token is not None:
                    on_token(prompt_of[slot], read[slot])
        finished: list[int] = []
        for number, reason in enumerate(stops, start=1):  # by reason, then by slot: on_finish's order
            for slot in range(width):
                if read[width + slot] == number:
                    finished.append(slot)
                    live[slot] = False
                    prompt, tokens_out = prompt_of[slot], running.pop(prompt_of[slot])
                    if keep_results:
                        outputs[prompt], reasons[prompt] = tokens_out, reason
                    if on_finish is not None:
                        on_finish(prompt, tokens_out, reason)
        if any(live):
            state.host_answer(read[2 * width :])
            logits = runner.decode(model, state, next_token, active)
        free = finished[: len(pending) + len(ready)]
        while free:  # continuous batching: free slots take the next prompts
            if not ready:
                ready = _prefill_ahead(model, runner, prompts, pending, len(free), width, device)
            taken = ready.take(len(free))
            index = torch.tensor(free[: len(taken.prompts)], device=device)
            state = put_rows(state, index, taken.state)
            logits[index] = taken.logits.to(logits.dtype)
            sentence_len[index], sentences[index] = _open_sentence_counters(taken.tokens, taken.lengths)
            new_sentences[index], new_tokens[index], context_tokens[index] = 0, 0, taken.lengths
            active[index] = True
            for slot, prompt in zip(free, taken.prompts):
                prompt_of[slot] = prompt
                live[slot] = True
                running[prompt] = []
                if sampled:
                    streams.assign(slot, keys[prompt])
            free = free[len(taken.prompts) :]
        if not any(live):
            break
    return GenerationResult(outputs, reasons, state.nbytes(), step_logits)


def _first_stop(hits: list[torch.Tensor], active: torch.Tensor) -> torch.Tensor:
    """(B,) long: for each active row, 1 + the index of the first of `hits` (each (B,) bool) it
    meets, or 0 where it meets none (and for inactive rows)."""
    first = torch.zeros(active.shape, dtype=torch.long, device=active.device)
    for number in range(len(hits), 0, -1):  # the earliest reason written last wins
        first = torch.where(hits[number - 1] & active, number, first)
    return first
