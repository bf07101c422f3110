"""The best-of-N wall time of a callable: what the one-time kernel choices and the machine peaks use."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` timed calls after one warm-up call (allocation, kernel choice): on a
    shared machine the minimum is the least disturbed run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
