"""Learning-rate schedules as functions of progress, the elapsed fraction of the budget (0 → 1).

Because progress is measured against the budget (wall clock, or `train.max_tokens` when that is
set), the same config anneals correctly for `budget=10m` and `budget=24h`, and the learning rate
reaches exactly zero when training stops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gpthf.errors import ConfigError


def _cosine(decay_progress: float, cooldown_fraction: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * decay_progress))


def _linear(decay_progress: float, cooldown_fraction: float) -> float:
    return 1.0 - decay_progress


def _trapezoid(decay_progress: float, cooldown_fraction: float) -> float:
    """Flat, then linear to zero over the last `cooldown_fraction` of the budget."""
    remaining = 1.0 - decay_progress
    return min(1.0, remaining / cooldown_fraction) if cooldown_fraction > 0 else 1.0


# Each maps progress after warm-up (0 → 1) to a multiplier of the peak learning rate.
SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "cosine": _cosine,
    "linear": _linear,
    "trapezoid": _trapezoid,
}


def check_schedule(train_cfg) -> None:
    if train_cfg.schedule not in SCHEDULES:
        raise ConfigError(
            f"unknown train.schedule={train_cfg.schedule!r}; choose one of: {', '.join(SCHEDULES)}"
        )


def lr_at(progress: float, train_cfg) -> float:
    """Learning rate at `progress`: linear warm-up, then the chosen decay, 0 from progress 1 on."""
    if progress >= 1.0:
        return 0.0
    warmup = train_cfg.warmup_fraction
    if progress < warmup:
        return train_cfg.lr * progress / warmup
    decay_progress = (progress - warmup) / (1.0 - warmup)
    return train_cfg.lr * SCHEDULES[train_cfg.schedule](decay_progress, train_cfg.cooldown_fraction)
