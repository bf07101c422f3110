"""Where a decode step stands against the machine: the bytes and FLOPs it must move, and this
machine's own peaks measured in the same run.

A decode step must read every weight once (the tied embedding is read whole by the head) and its
generation state; it must do the model's FLOPs per generated token for every row. Dividing by the
measured step time gives achieved GB/s and GFLOP/s, which mean something only next to what the same
machine reaches on the same threads and number format: a large copy (memory bandwidth), a
batch-8 matmul over a weight that does not fit in cache (what a decode step's matmuls are) and a
large square matmul (the arithmetic peak). On CUDA they are measured on the GPU the model is on,
timed by CUDA events (gpthf.measure.timing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from gpthf.generation.packed import PackedLinear
from gpthf.measure import flops
from gpthf.measure.timing import best_seconds, square_matmul_flop_s


@dataclass
class MachinePeaks:
    dtype: str
    copy_gb_s: float  # bytes read + written per second by a large tensor copy
    matmul_b8_gflop_s: float  # (8, d) @ (d, 4d) over weights far larger than the caches
    matmul_square_gflop_s: float  # (n, n) @ (n, n): the arithmetic peak

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"copy {self.copy_gb_s:.1f} GB/s, batch-8 matmul {self.matmul_b8_gflop_s:.0f} GFLOP/s, "
            f"square matmul {self.matmul_square_gflop_s:.0f} GFLOP/s"
        )


SQUARE_SIDE = {"cpu": 2048, "cuda": 8192}  # a GPU's tensor cores reach their peak only on larger products


def _copy_gb_s(dtype: torch.dtype, megabytes: int, repeats: int, device: torch.device) -> float:
    elements = megabytes * 2**20 // torch.tensor([], dtype=dtype).element_size()
    source = torch.ones(elements, dtype=dtype, device=device)
    target = torch.empty(elements, dtype=dtype, device=device)
    seconds = best_seconds(lambda: target.copy_(source), repeats, device)
    return 2 * source.numel() * source.element_size() / seconds / 1e9


@torch.inference_mode()
def measure_peaks(
    dtype: torch.dtype,
    name: str,
    copy_mb: int = 512,
    repeats: int = 5,
    device: str | torch.device = "cpu",
) -> MachinePeaks:
    """The machine's peaks in `dtype` on `device` (on a CPU: on the current threads, about 2 s)."""
    device = torch.device(device)
    copy_gb_s = _copy_gb_s(dtype, copy_mb, repeats, device)

    width, layers = 2048, 8  # 8 × 32 MiB of fp32 weights: no cache holds them
    # The faster of the plain and the packed kernels a decode step may use (gpthf.generation.packed).
    projections = [
        PackedLinear(torch.nn.Linear(width, 4 * width, bias=False).to(device, dtype), rows=8)
        for _ in range(layers)
    ]
    x = torch.randn(8, width, device=device).to(dtype)
    b8_s = min(
        best_seconds(lambda: [projection(x) for projection in projections], repeats, device),
        best_seconds(lambda: [F.linear(x, projection.weight) for projection in projections], repeats, device),
    )
    b8_gflop_s = 2 * 8 * width * 4 * width * layers / b8_s / 1e9

    square_flop_s = square_matmul_flop_s(SQUARE_SIDE[device.type], dtype, repeats, device)
    return MachinePeaks(name, copy_gb_s, b8_gflop_s, square_flop_s / 1e9)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct parameters (a tied head counts once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def roofline(step_bytes: float, step_flops: float, ms_per_step: float, peaks: MachinePeaks) -> dict:
    """Achieved rates of one decode step and their share of the measured peaks."""
    seconds = ms_per_step / 1000
    gb_s, gflop_s = step_bytes / seconds / 1e9, step_flops / seconds / 1e9
    return {
        "step_bytes": int(step_bytes),
        "step_flops": float(step_flops),
        "achieved_gb_s": gb_s,
        "achieved_gflop_s": gflop_s,
        "pct_of_copy_bandwidth": 100 * gb_s / peaks.copy_gb_s,
        "pct_of_matmul_b8": 100 * gflop_s / peaks.matmul_b8_gflop_s,
        "pct_of_matmul_peak": 100 * gflop_s / peaks.matmul_square_gflop_s,
    }


@dataclass
class DecodeRoofline:
    """Adds to a decode timing's row (gpthf.measure.speed.DecodeTiming.as_dict) the bytes and FLOPs
    its step must move and their share of the peaks: `full` re-reads the tokens only and does a whole
    forward per token; the others read their state and do the kind's decode FLOPs (the outside peer,
    hf-llama, counts as the GPT it is shaped like)."""

    models: dict  # kind -> model
    vocab_size: int
    tokens_per_sentence: float
    peaks: MachinePeaks

    def __call__(self, row: dict) -> dict:
        model = self.models["gpt" if row["model"] == "hf-llama" else row["model"]]
        full = row["strategy"] == "full"
        count = flops.full_recompute_flops if full else flops.decode_flops
        per_token = count(model.arch, self.vocab_size, row["context"], self.tokens_per_sentence)
        state = 0 if full else row["state_bytes"]
        row["roofline"] = roofline(
            weight_bytes(model) + state, per_token * row["batch"], row["ms_per_token"], self.peaks
        )
        return row
