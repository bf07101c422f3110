"""The number format of inference (`--dtype`): weights and generation state in one type.

Training keeps fp32 weights with bf16 autocast (`impl.amp`); inference can store the weights
themselves in bf16, halving the bytes every decode step must read. Norms, RoPE, attention
softmax and the loss still accumulate in fp32 inside the layers, so bf16 changes rounding, not
the algorithm. The names are importable without torch, so scripts list them before loading it.
"""

from __future__ import annotations

import logging
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
    if device.type == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"this GPU ({torch.cuda.get_device_name(device)}) cannot run bf16; use --dtype fp16 or fp32"
        )
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
