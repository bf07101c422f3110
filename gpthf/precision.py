"""Number formats: inference's `--dtype`, training's autocast (`impl.amp`) and its fp32 matmuls (`impl.tf32`).

Training keeps fp32 weights with bf16 autocast (`impl.amp`); inference can store the weights
themselves in bf16, halving the bytes every decode step must read. Norms, RoPE, attention
softmax and the loss still accumulate in fp32 inside the layers, so bf16 changes rounding, not
the algorithm. The names are importable without torch, so scripts list them before loading it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gpthf.errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "bf16", "fp16")
DEFAULT_DTYPE = "fp32"
log = logging.getLogger(__name__)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype for `--dtype NAME` on `device`, or one error naming what runs there instead."""
    import torch

    if name not in DTYPE_NAMES:
        raise ConfigError(f"--dtype={name!r} is not a number format; choose one of: {', '.join(DTYPE_NAMES)}")
    device = torch.device(device)
    if device.type == "cuda" and name == "bf16" and not gpu_computes_bf16():
        raise ConfigError(f"this GPU ({gpu_name(device)}) cannot run bf16; use --dtype fp16 or fp32")
    if device.type == "cpu" and name == "fp16":
        raise ConfigError("--dtype=fp16 is for CUDA devices; on CPU use --dtype bf16 (or fp32)")
    if device.type == "cpu" and name == "bf16" and not cpu_computes_bf16():
        log.warning(
            "this CPU has no bf16 arithmetic (no AVX512-BF16 or AMX): bf16 runs converted to fp32 on "
            "every product, slower than fp32 here (a decode matmul 2.8x, generation 1.4-1.7x slower on an "
            "AVX2 EPYC); --dtype fp32 is faster on this machine"
        )
    return torch_dtype(name)


def cpu_computes_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively, where bf16 halves the bytes without costing
    arithmetic; on AVX2-only CPUs oneDNN converts every product. Unknown (an older torch): True."""
    import torch

    probes = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(probe is None for probe in probes):
        return True
    return any(probe() for probe in probes)


def gpu_computes_bf16(device: torch.device | None = None) -> bool:
    """Whether CUDA GPU `device` (the current one when None) has bf16 arithmetic: compute capability
    8.0 on (A100, H100, RTX 30xx on). torch's `is_bf16_supported` counts emulation, which says yes on a
    V100 or T4 where bf16 runs converted, slower than fp32, or fails inside a kernel (cuBLAS, flash
    attention) that needs sm80; and it asks the current GPU, not the one a run uses."""
    import torch

    if torch.version.hip:  # ROCm: capability numbers mean something else; torch's answer is the one
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device)[0] >= 8


def gpu_name(device: torch.device) -> str:
    """The GPU's name for an error line; its index where the driver cannot say."""
    import torch

    try:
        return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):
        return str(device)


AMP_NAMES = ("auto", "bf16", "fp32")  # impl.amp; fp16 autocast would need a loss scaler the trainer lacks


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype training uses on `device` for `impl.amp` (None: plain fp32). `auto` takes
    bf16 where the GPU computes it and fp32 elsewhere (CPU, V100, T4), never a format that cannot run."""
    import torch

    choice = str(amp).lower()
    if choice not in AMP_NAMES:
        raise ConfigError(f"impl.amp={amp!r}: use {', '.join(AMP_NAMES)}")
    if choice == "fp32" or device.type != "cuda":
        return torch.bfloat16 if choice == "bf16" else None
    if gpu_computes_bf16(device):
        return torch.bfloat16
    if choice == "bf16":
        raise ConfigError(
            f"impl.amp=bf16 but this GPU ({gpu_name(device)}) has no bf16 arithmetic; use impl.amp=fp32 "
            f"(or auto, which picks fp32 there)"
        )
    log.info("this GPU (%s) has no bf16 arithmetic: training in fp32 (impl.amp=auto)", gpu_name(device))
    return None


@contextlib.contextmanager
def fp32_matmuls(device: torch.device, tf32: bool) -> Iterator[None]:
    """fp32 matrix products and convolutions on TF32 tensor cores (`tf32`), or in full fp32, while a
    run on a CUDA device lasts (`impl.tf32`): Ampere and Hopper multiply fp32 several times faster
    with TF32, at bf16-like input rounding with fp32 accumulation. The switch is process-wide, so it is
    put back afterwards (an in-process caller, a sweep's next job, sees what it had). Set through
    torch's per-backend `fp32_precision` (torch 2.9 on), never through the legacy `allow_tf32` flags,
    which torch refuses to mix with it; the CPU's own setting is left alone."""
    import torch

    if device.type != "cuda":
        yield
        return
    backends = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    attribute, value = "fp32_precision", "tf32" if tf32 else "ieee"
    if not all(hasattr(backend, attribute) for backend in backends):  # torch before 2.9: legacy flags
        backends, attribute, value = [torch.backends.cuda.matmul, torch.backends.cudnn], "allow_tf32", tf32
    before = [getattr(backend, attribute) for backend in backends]
    for backend in backends:
        setattr(backend, attribute, value)
    try:
        yield
    finally:
        for backend, old in zip(backends, before):
            setattr(backend, attribute, old)
