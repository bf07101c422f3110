"""`--dtype` on a CPU: formats it cannot run are refused; bf16 where the CPU only converts it is
allowed but said to be slower."""

from __future__ import annotations

import logging

import pytest
import torch

from gpthf.errors import ConfigError
from gpthf.precision import cpu_computes_bf16, resolve_dtype

CPUS = [  # (AVX512-BF16, AMX, a warning expected for bf16)
    (False, False, True),
    (True, False, False),
    (False, True, False),
]


@pytest.mark.parametrize("avx512_bf16, amx, warned", CPUS)
def test_bf16_on_a_cpu_without_bf16_arithmetic_is_said_to_be_slower(
    monkeypatch, caplog, avx512_bf16, amx, warned
):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_computes_bf16() is not warned
    with caplog.at_level(logging.WARNING, logger="gpthf.precision"):
        assert resolve_dtype("bf16", "cpu") is torch.bfloat16
        assert resolve_dtype("fp32", "cpu") is torch.float32
    said = [r.getMessage() for r in caplog.records if r.name == "gpthf.precision"]
    assert len(said) == int(warned) and all("--dtype fp32 is faster" in m for m in said)


def test_an_older_torch_without_the_probes_is_not_warned_about(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert cpu_computes_bf16()


def test_formats_a_device_cannot_run_are_refused():
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(ConfigError, match="not a number format"):
        resolve_dtype("int8", "cpu")
