"""`python -m gpthf doctor`: runs on any machine and reports what it finds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from gpthf import doctor
from gpthf.__main__ import COMMANDS
from gpthf.doctor import format_report, report
from tests.conftest import run_script


def fake_v100(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda as a V100 shows it: bf16 "supported" by emulation, no bf16 arithmetic (sm70)."""
    props = SimpleNamespace(name="Tesla V100-SXM2-16GB", total_memory=16 * 2**30, major=7, minor=0)
    for name, fake in {
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "get_device_properties": lambda device=None: props,
        "get_device_name": lambda device=None: props.name,
        "get_device_capability": lambda device=None: (props.major, props.minor),
        "is_bf16_supported": lambda including_emulation=True: including_emulation,
    }.items():
        monkeypatch.setattr(torch.cuda, name, fake)


def test_doctor_says_no_bf16_on_a_gpu_that_only_emulates_it(monkeypatch):
    fake_v100(monkeypatch)
    info = doctor._devices()
    assert info["gpus"] == ["Tesla V100-SXM2-16GB (16 GiB)"] and info["bf16"] is False


def test_doctor_json_reports_backends_device_and_paths(tmp_path):
    run = run_script("-m", "gpthf", "doctor", "--json", f"cache_dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-2000:]
    info = json.loads(run.stdout)
    backends = info["attention backends (impl.attention)"]
    assert backends["sdpa"] == "available"
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in backends["flex"] and "needs a CUDA GPU" in backends["flash"]
    assert info["device"]["cuda_available"] == torch.cuda.is_available()
    assert info["packages"]["torch"] == torch.__version__
    assert info["paths"]["data cache (cache_dir)"] == str(tmp_path.resolve())
    assert info["paths"]["prepared data sets"].startswith("none yet")


def test_doctor_lists_prepared_data_and_prints_every_section(data_cache):
    from tests.conftest import SMALL_DATA

    info = report([f"cache_dir={data_cache}", *SMALL_DATA])
    builds = info["paths"]["prepared data sets"]
    assert len([b for b in builds if b.endswith("MiB, this config)")]) == 1
    text = format_report(info)
    assert all(f"{section}:" in text for section in info)


def test_unknown_command_is_one_line():
    run = run_script("-m", "gpthf", "docter")
    assert (
        run.returncode == 2
        and run.stderr.strip() == f"error: unknown command 'docter'; choose one of: {', '.join(COMMANDS)}"
    )
