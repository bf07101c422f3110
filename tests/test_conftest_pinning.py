"""The suite's device rule (tests/conftest.py): CPU tests see no GPU, even on a GPU host; `cuda` tests
see the real one and are skipped without it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gpthf.training.distributed import resolve_device
from tests import conftest


@pytest.fixture(scope="session")
def session_view() -> tuple[bool, str | None]:
    """What a session fixture (such as `trained_runs`) sees when it is built."""
    return torch.cuda.is_available(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_cpu_tests_see_no_gpu_here_or_in_their_processes():
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    assert resolve_device("auto", 0, setting="--device") == torch.device("cpu")
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout.strip() == "''"


def test_session_fixtures_are_built_on_the_cpu(session_view):
    assert session_view == (False, "")


@pytest.mark.cuda
def test_cuda_tests_see_the_real_gpu():
    assert torch.cuda.is_available() and torch.cuda.device_count() >= 1
    assert os.environ.get("CUDA_VISIBLE_DEVICES") != ""


class _Item:
    def __init__(self, cuda: bool):
        self.markers = [pytest.mark.cuda.mark] if cuda else []

    def get_closest_marker(self, name: str):
        return next((m for m in self.markers if m.name == name), None)

    def add_marker(self, marker) -> None:
        self.markers.append(marker.mark)


def test_cuda_tests_are_skipped_without_a_gpu(monkeypatch):
    monkeypatch.setattr(conftest, "CUDA", False)
    cuda_item, cpu_item = _Item(cuda=True), _Item(cuda=False)
    conftest.pytest_collection_modifyitems(None, [cuda_item, cpu_item])
    assert cuda_item.get_closest_marker("skip").kwargs["reason"] == "needs a CUDA GPU"
    assert cpu_item.get_closest_marker("skip") is None
