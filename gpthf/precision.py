"""The number format of inference (`--dtype`): weights and generation state in one type.

Training keeps fp32 weights with bf16 autocast (`impl.amp`); inference can store the weights
themselves in bf16, halving the bytes every decode step must read. Norms, RoPE, attention
softmax and the loss still accumulate in fp32 inside the layers, so bf16 changes rounding, not
the algorithm.
"""

from __future__ import annotations

import torch

from gpthf.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_DTYPE = "fp32"


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype for `--dtype NAME` on `device`, or one error naming what runs there instead."""
    if name not in DTYPES:
        raise ConfigError(f"--dtype={name!r} is not a number format; choose one of: {', '.join(DTYPES)}")
    device = torch.device(device)
    if device.type == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"this GPU ({torch.cuda.get_device_name(device)}) cannot run bf16; use --dtype fp16 or fp32"
        )
    if device.type == "cpu" and name == "fp16":
        raise ConfigError("--dtype=fp16 is for CUDA devices; on CPU use --dtype bf16 (or fp32)")
    return DTYPES[name]
