"""Choosing the next token from logits: greedy, temperature, top-k, top-p, each prompt drawing from
its own random stream."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 50
    top_p: float | None = None  # nucleus: keep the smallest set of tokens with this much probability

    def __post_init__(self) -> None:
        from gpthf.errors import ConfigError

        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"temperature={self.temperature} must be a finite number >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]")


def sample(
    logits: torch.Tensor, settings: SamplingSettings, uniforms: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids. A sampled row's token is where its uniform draw `uniforms`
    (B,) in [0, 1) falls in the cumulative distribution (drawn here when not given), so the row's
    own stream alone decides it (`PromptStreams`)."""
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


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token whose share of the cumulative distribution holds each row's draw: token i with
    probability probs[i]. A token of probability 0 is never chosen, at either end of [0, 1)."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    point = torch.minimum(uniforms.to(cdf)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True).squeeze(1)


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
        digest = hashlib.blake2b(f"{self.seed}/{key}".encode(), digest_size=8).digest()
        generator = torch.Generator()
        generator.manual_seed(int.from_bytes(digest, "little"))
        self.generators[row] = generator

    def uniforms(self) -> torch.Tensor:
        """(rows,) the next draw of every row's stream, on the device. The streams are CPU
        generators (the same draws on any device); to a GPU they go from pinned memory without
        waiting, as a plain copy from pageable memory would make the host wait for the GPU."""
        draws = torch.cat([torch.rand(1, generator=generator) for generator in self.generators])
        if self.device.type == "cpu":
            return draws
        if self.device.type == "cuda":
            draws = draws.pin_memory()
        return draws.to(self.device, non_blocking=True)
