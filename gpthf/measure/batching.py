"""Continuous batching against fixed batches on one batch job (eval/batching.py): the prompts, the
interleaved timings of both, and the figures that compare them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpthf.data.special_tokens import PAD_ID
from gpthf.generation import GenerationSettings, generate
from gpthf.measure.timing import reset_peak_memory, timed_seconds
from gpthf.models import LanguageModel
from gpthf.training.checkpoint import CheckpointMeta

PROMPT_TOKENS = (4, 128)  # shortest and longest prompt: mixed lengths, as a batch job has them


def held_out_prompts(meta: CheckpointMeta, tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    """`count` prompts of mixed lengths at random places of the checkpoint's held-out text."""
    from gpthf.evaluation.perplexity import rows_for_text

    input_ids, _, _ = rows_for_text(meta, tokenizer, "test")
    stream = [t for t in input_ids.reshape(-1).tolist() if t != PAD_ID]
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(count):
        length = int(rng.integers(PROMPT_TOKENS[0], PROMPT_TOKENS[1] + 1))
        start = int(rng.integers(0, max(len(stream) - length, 1)))
        prompts.append(stream[start : start + length])
    return prompts


@dataclass
class BatchingRuns:
    prompts: int
    slots: int
    fixed: list[list[int]]  # each prompt's new tokens, generated in fixed batches
    continuous: list[list[int]]  # and with continuous batching
    fixed_seconds: list[float]  # one per round
    continuous_seconds: list[float]

    def summary(self) -> dict:
        """The figures eval/batching.py reports, in the order it reports them."""
        fixed_s, continuous_s = (
            float(np.median(self.fixed_seconds)),
            float(np.median(self.continuous_seconds)),
        )
        lengths = [len(t) for t in self.continuous]
        new_tokens = sum(lengths)
        # Each round times both back to back, so its ratio cancels a slow spell that spans the round;
        # the median of those is the steadier figure on a shared machine.
        per_round = [f / c for f, c in zip(self.fixed_seconds, self.continuous_seconds)]
        return {
            "prompts": self.prompts,
            "slots": self.slots,
            "new_tokens": new_tokens,
            "new_tokens_per_prompt": {
                "min": min(lengths),
                "mean": new_tokens / self.prompts,
                "max": max(lengths),
            },
            "fixed_tokens_per_s": new_tokens / fixed_s,
            "continuous_tokens_per_s": new_tokens / continuous_s,
            "continuous_over_fixed": fixed_s / continuous_s,
            "continuous_over_fixed_per_round": per_round,
            "median_round_ratio": float(np.median(per_round)),
            "fixed_seconds": self.fixed_seconds,
            "continuous_seconds": self.continuous_seconds,
            # Decode steps: fixed batches take their longest row's length each; continuous batching
            # can at best keep every slot busy, so this ratio bounds its gain on this workload.
            "step_bound": sum(max(lengths[b : b + self.slots]) for b in range(0, len(lengths), self.slots))
            / -(-new_tokens // self.slots),
            "same_tokens": self.continuous == self.fixed,
        }


def time_batching(
    model: LanguageModel,
    prompts: list[list[int]],
    settings: GenerationSettings,
    slots: int,
    repeats: int,
    device: torch.device,
) -> BatchingRuns:
    """Both ways of serving `prompts` through `slots` rows, timed in `repeats` interleaved rounds (so a
    slow spell of a shared machine hits both), after a warm-up; the device's memory peak is reset
    after the warm-up, so it reads what serving takes."""
    generate(model, prompts[:slots], GenerationSettings(max_new_tokens=2))  # warm-up
    reset_peak_memory(device)
    runs = BatchingRuns(len(prompts), slots, [], [], [], [])

    def fixed_batches() -> None:
        runs.fixed.clear()
        for begin in range(0, len(prompts), slots):
            runs.fixed.extend(generate(model, prompts[begin : begin + slots], settings).tokens)

    def continuous_batching() -> None:
        runs.continuous[:] = generate(model, prompts, settings, slots=slots).tokens

    for _ in range(repeats):
        runs.fixed_seconds.append(timed_seconds(fixed_batches, device))
        runs.continuous_seconds.append(timed_seconds(continuous_batching, device))
    return runs
