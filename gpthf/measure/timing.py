"""How long measured work took and how much memory it held, read the same way by every benchmark.

On a CPU a call returns when its work is done, so the host clock (perf_counter) times it. On CUDA a
call returns once its kernels are queued: the host clock would time the queueing. There, CUDA events
recorded on the device's stream between the pieces of work give the GPU's own timeline, read after a
synchronize (and the queue is drained before the first mark, so earlier work is not counted).
Memory: on CUDA the most bytes the caching allocator held in tensors since the last reset; on the
host the process's peak resident set, which never resets (the run's peak so far).
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch


class Clock:
    """Marks on the timeline of `device`; `seconds()` reads them all at the end, so marking costs
    no host sync in between (a GPU is never made to wait for the clock)."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._marks: list = []
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def mark(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Every mark's time in seconds after the first one (which reads 0.0)."""
        if not self._marks:
            return []
        first = self._marks[0]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return [first.elapsed_time(mark) / 1000 for mark in self._marks]
        return [mark - first for mark in self._marks]


def timed_seconds(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Seconds one call of `fn` keeps `device` busy (its queued kernels included on CUDA)."""
    clock = Clock(device)
    clock.mark()
    fn()
    clock.mark()
    return clock.seconds()[-1]


def best_seconds(fn: Callable[[], object], repeats: int, device: str | torch.device = "cpu") -> float:
    """Fastest of `repeats` timed calls after one warm-up call (allocation, kernel choice): on a
    shared machine the minimum is the least disturbed run."""
    fn()
    return min(timed_seconds(fn, device) for _ in range(repeats))


def square_matmul_flop_s(side: int, dtype: torch.dtype, repeats: int, device: torch.device) -> float:
    """FLOP/s of a (side × side) @ (side × side) product, the fastest of `repeats`: a machine's matmul
    peak, for MFU and rooflines to divide by."""
    a, b = (torch.randn(side, side, device=device).to(dtype) for _ in range(2))
    return 2 * side**3 / best_seconds(lambda: a @ b, repeats, device)


def peak_rss_mb() -> float:
    """The process's peak resident set so far (MiB): host memory, whatever device computes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a new peak for `peak_device_mb` (nothing to reset on the host, see `peak_rss_mb`)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_device_mb(device: str | torch.device) -> float | None:
    """Most MiB of tensors held on a CUDA `device` since `reset_peak_memory`; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def machine_name(device: str | torch.device) -> str:
    """What a figure was measured on: the GPU's name on CUDA, else the CPU's."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model() or platform.processor() or platform.machine()


def cpu_model() -> str | None:
    """The CPU's model name as the kernel reports it ("AMD EPYC ...", "Intel(R) Xeon(R) ..."), with
    its thread count: the project's figures vary by CPU model between machines. None off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return f"{names[0]}, {torch.get_num_threads()} threads" if names else None
