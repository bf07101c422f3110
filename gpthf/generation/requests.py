"""What the engine (gpthf.generation.engine) and its clients say to each other: a request's settings,
the events it gets back, the engine's refusals and its statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpthf.errors import GpthfError
from gpthf.generation.limits import GenerationError
from gpthf.generation.sampling import SamplingSettings
from gpthf.settings import IGNORE_EOS, MAX_SENTENCES, MAX_TOKENS, SEED, check_all

# Why a request stopped, in the order the stop checks run (the first that holds wins), then the
# reasons decided on the host.
FINISH_REASONS = ("eod", "max_sentences", "context", "max_tokens")
ABORT, ERROR = "abort", "error"


@dataclass(frozen=True)
class RequestSettings:
    """One request's sampling and stopping; validated when made (GenerationError, ConfigError)."""

    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # None: a random seed; a given seed makes the samples depend on it alone
    max_sentences: int | None = None  # stop after this many new finished sentences
    # Generate on past <eod> to exactly max_tokens (or the context limit): a benchmark's fixed amount
    # of work per request (vLLM's `ignore_eos`), whatever the model would say.
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        check_all(self, (MAX_TOKENS, MAX_SENTENCES, IGNORE_EOS, SEED), GenerationError)
        self.sampling  # noqa: B018  (the sampling rules, as SamplingSettings checks them: ConfigError)

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(self.temperature, self.top_k, self.top_p)


@dataclass(frozen=True)
class Token:
    """One generated token."""

    token_id: int


@dataclass(frozen=True)
class Finished:
    """Always the last event of a request."""

    reason: str  # one of FINISH_REASONS, "abort" or "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


Event = Token | Finished


class QueueFull(GpthfError):
    """`add` while `max_queue` requests already wait: retry later."""


class RequestTooLarge(GenerationError):
    """A request whose state at its horizon alone exceeds the engine's state memory."""


class EngineStopped(GpthfError):
    """`add` after `run` ended: on its stop event, or on an error (`error` says which)."""

    def __init__(self, error: str | None):
        cause = f"failed: {error}" if error is not None else "was stopped"
        super().__init__(f"the generation engine {cause}; no request can be added")
        self.error = error


@dataclass(frozen=True)
class EngineStats:
    running: int  # requests decoding in a slot
    waiting: int  # requests queued (prefilled ahead of a slot or not)
    state_bytes_in_use: int  # the horizons of the requests admitted (prefilled, not finished)
    state_bytes_free: int | None  # max_state_bytes less that; None without a limit
    prompt_tokens_total: int  # of every request prefilled so far
    generated_tokens_total: int


@dataclass(eq=False)
class Request:
    """A request as the engine keeps it, from `add` until its Finished."""

    id: int
    prompt: Sequence[int]
    settings: RequestSettings
    on_event: Callable[[Event], None]
    stream: int | None  # the seed of its random stream; None: greedy, draws nothing
    state_bytes: int  # at its horizon
    where: str = "queued"  # queued | ready (prefilled ahead) | running | done
    slot: int = -1
    generated: int = 0
    aborted: bool = False

    def finished(self, reason: str, error: str | None = None) -> Finished:
        """Its last event."""
        return Finished(reason, len(self.prompt), self.generated, error)
