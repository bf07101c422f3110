"""Choosing the next token from logits: greedy, temperature, top-k, top-p, each prompt drawing from
its own random stream; one setting for the whole batch (`SamplingSettings`) or one per row
(`RowSampling`, the engine's requests side by side), a row's token the same either way."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gpthf.settings import SAMPLING, check_all


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 50
    top_p: float | None = None  # nucleus: keep the smallest set of tokens with this much probability

    def __post_init__(self) -> None:
        check_all(self, SAMPLING)  # ConfigError


NO_TOP_P = float("inf")  # a row's top_p when it keeps the whole distribution


@dataclass(frozen=True)
class RowSampling:
    """Each row's sampling settings as (B,) tensors on the logits' device, and what the host knows
    of them all (so a batch skips the work no row of it asks for; skipped work is a no-op for a row
    that does not ask for it, so a row's token never depends on its neighbours).
    Rows without a top-k hold a top_k of 0, rows without a top-p NO_TOP_P."""

    temperature: torch.Tensor  # (B,) float32, 0 = greedy
    top_k: torch.Tensor  # (B,) long
    top_p: torch.Tensor  # (B,) float32
    sampled: bool  # some row has temperature > 0
    largest_top_k: int  # 0 when no row has a top-k
    any_top_p: bool

    @classmethod
    def of(
        cls, settings: Sequence[SamplingSettings], device: torch.device | str | None = None
    ) -> RowSampling:
        """One row per setting."""
        top_ks, top_ps = _row_top_ks(settings), _row_top_ps(settings)
        return cls(
            torch.tensor([s.temperature for s in settings], dtype=torch.float32, device=device),
            torch.tensor(top_ks, dtype=torch.long, device=device),
            torch.tensor(top_ps, dtype=torch.float32, device=device),
            *cls.host_flags(settings),
        )

    @staticmethod
    def host_flags(settings: Sequence[SamplingSettings]) -> tuple[bool, int, bool]:
        """(sampled, largest_top_k, any_top_p) of these rows' settings."""
        return (
            any(s.temperature > 0 for s in settings),
            max(_row_top_ks(settings), default=0),
            any(p != NO_TOP_P for p in _row_top_ps(settings)),
        )


def _row_top_ks(settings: Sequence[SamplingSettings]) -> list[int]:
    return [s.top_k if s.temperature > 0 and s.top_k is not None else 0 for s in settings]


def _row_top_ps(settings: Sequence[SamplingSettings]) -> list[float]:
    return [
        s.top_p if s.temperature > 0 and s.top_p is not None and s.top_p < 1 else NO_TOP_P for s in settings
    ]


def sample(
    logits: torch.Tensor, settings: SamplingSettings | RowSampling, uniforms: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids. A sampled row's token is where its uniform draw `uniforms`
    (B,) in [0, 1) falls in the cumulative distribution (drawn here when not given), so the row's
    own stream alone decides it (`PromptStreams`). With `RowSampling` every row follows its own
    settings, and gets the token the same settings given to the whole batch would give it."""
    if isinstance(settings, RowSampling):
        return _sample_rows(logits, settings, uniforms)
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.shape[-1]:
        kth = logits.topk(settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = (
            cumulative - sorted_logits.softmax(dim=-1) >= settings.top_p
        )  # keeps the first token always
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0], device=logits.device)
    return inverse_cdf(logits.softmax(dim=-1), uniforms)


def _sample_rows(logits: torch.Tensor, rows: RowSampling, uniforms: torch.Tensor | None) -> torch.Tensor:
    """`sample` with per-row settings: the same operations, each row's own number where the batch
    path has one number (dividing by a float32 tensor rounds as dividing by the Python float does)."""
    greedy = logits.argmax(dim=-1)
    if not rows.sampled:
        return greedy
    sampled = rows.temperature > 0
    logits = logits.float() / torch.where(sampled, rows.temperature, 1.0)[:, None]
    vocab = logits.shape[-1]
    if rows.largest_top_k:
        # The k-th largest value, as `topk(k).values[:, -1]` finds it, for every row's own k; rows
        # with no top-k (or one as large as the vocabulary) keep everything.
        largest = logits.topk(min(rows.largest_top_k, vocab), dim=-1).values
        kth = largest.gather(1, (rows.top_k.clamp(1, largest.shape[-1]) - 1)[:, None])
        keeps_all = (rows.top_k < 1) | (rows.top_k >= vocab)
        kth = torch.where(keeps_all[:, None], float("-inf"), kth)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if rows.any_top_p:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= rows.top_p[:, None]
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0], device=logits.device)
    return torch.where(sampled, inverse_cdf(logits.softmax(dim=-1), uniforms), greedy)


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token whose share of the cumulative distribution holds each row's draw: token i with
    probability probs[i]. A token of probability 0 is never chosen, at either end of [0, 1)."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    point = torch.minimum(uniforms.to(cdf)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True).squeeze(1)


def stream_seed(seed: int, key: int | None = None) -> int:
    """The seed of a prompt's random stream: of the job's `seed` and the prompt's `key` (its index in
    the job), or of a request's own `seed` alone (key None)."""
    text = f"{seed}/{key}" if key is not None else f"{seed}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class PromptStreams:
    """A random stream per prompt, seeded by the job's seed and the prompt's key: a prompt's samples
    then depend on those alone, not on its slot, the batch size or the prompts beside it. So a batch
    job resumed after a crash, or run with another --batch-size, draws the same text.
    Cost: one generator per slot, one draw per row and step (a few µs each)."""

    def __init__(self, seed: int, rows: int, device: torch.device):
        self.seed, self.device = seed, device
        self.generators: list[torch.Generator | None] = [None] * rows

    def assign(self, row: int, key: int) -> None:
        """Row `row` now generates the prompt with `key`: its stream starts from the beginning."""
        self.start(row, stream_seed(self.seed, key))

    def start(self, row: int, seed: int | None) -> None:
        """Row `row` now draws from the stream `seed` (`stream_seed`) from its beginning; None: it
        draws nothing (a greedy row), its uniform is 0."""
        generator = None
        if seed is not None:
            generator = torch.Generator()
            generator.manual_seed(seed)
        self.generators[row] = generator

    def resize(self, rows: int, kept: Sequence[int] | None = None) -> None:
        """`rows` rows from now on: those of `kept` (old rows, in their new order) first, the rest
        drawing nothing until started; all of the old ones in order when `kept` is None."""
        old = self.generators if kept is None else [self.generators[row] for row in kept]
        self.generators = (old + [None] * rows)[:rows]

    def uniforms(self) -> torch.Tensor:
        """(rows,) the next draw of every row's stream, on the device. The streams are CPU
        generators (the same draws on any device); to a GPU they go from pinned memory without
        waiting, as a plain copy from pageable memory would make the host wait for the GPU."""
        draws = torch.cat(
            [torch.rand(1, generator=g) if g is not None else torch.zeros(1) for g in self.generators]
        )
        if self.device.type == "cpu":
            return draws
        if self.device.type == "cuda":
            draws = draws.pin_memory()
        return draws.to(self.device, non_blocking=True)
