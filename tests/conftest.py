"""Shared fixtures: tiny corpora written by the tests, and configs pointing at a temporary cache.

Every test runs on the CPU, also on a GPU host, unless it is marked `cuda` (`@pytest.mark.cuda` or a
module's `pytestmark`): CPU tests expect CPU results (bit-exact resumes, fp32, no compilation), so
the GPU is hidden from them and from the processes they start. Tests marked `cuda` see the real GPU
and are skipped where there is none.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from gpthf.config import load_config

# The GPU as the user's environment shows it, read before any test hides it. The first query
# initialises CUDA in this process, so the CUDA_VISIBLE_DEVICES="" set for CPU tests (meant for the
# processes they start) never hides the GPU from a later `cuda` test here.
CUDA = torch.cuda.is_available()
if CUDA:
    torch.cuda.init()
_REAL_CUDA = {"is_available": torch.cuda.is_available, "device_count": torch.cuda.device_count}
_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")


def pytest_collection_modifyitems(config, items) -> None:
    """A `cuda` test is skipped without a GPU; its file needs only the marker."""
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def hide_gpu(patch: pytest.MonkeyPatch) -> None:
    """This process and those it starts see no GPU: `device=auto` picks the CPU everywhere."""
    patch.setattr(torch.cuda, "is_available", lambda: False)
    patch.setattr(torch.cuda, "device_count", lambda: 0)
    patch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session", autouse=True)
def _cpu_by_default():
    """Hidden for the whole session, so session fixtures (`trained_runs`) train on the CPU too."""
    with pytest.MonkeyPatch.context() as patch:
        hide_gpu(patch)
        yield


@pytest.fixture(autouse=True)
def _gpu_for_cuda_tests(request, monkeypatch):
    """A test marked `cuda` gets the real GPU back for its duration (and its function-scoped fixtures,
    the module's autouse ones too; fixtures of a wider scope were built with the GPU hidden)."""
    if request.node.get_closest_marker("cuda") is None:
        return
    for name, function in _REAL_CUDA.items():
        monkeypatch.setattr(torch.cuda, name, function)
    if _VISIBLE is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", _VISIBLE)


SMALL_DATA = ["data.seq_len=64", "data.max_sentence_len=32", "data.vocab_size=512"]

STORY = """Mr. Brown lives in London. He keeps bees, e.g. the common honey bee.
They make honey in summer.

Dr. Green visits him on Sundays. "Is the honey ready?" she asks. He says it is not.
The bees are busy. The garden is full of flowers.
"""

TALES = [
    "The fox ran into the wood. The hound followed it. Night fell over the hills.",
    "A ship sailed at dawn. The sea was calm. Its captain sang a song.",
    "The baker baked bread. The town woke to the smell. Children ran to the shop.",
    "Rain came in the spring. The river rose high. The mill turned all day.",
]


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """An in-process pretrain run lets hydra point the root logger at that run's `pretrain.log`:
    restored after each test, so a later test's log lines never write into an earlier test's files."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and handler not in before:
            root.removeHandler(handler)
            handler.close()


def tiny_overrides(cache_dir: Path, corpus: Path, **data: object) -> list[str]:
    """Overrides for a small local corpus: small vocabulary and rows, so a build takes a second."""
    values = {"vocab_size": 300, "seq_len": 32, "max_sentence_len": 16} | data
    return [f"cache_dir={cache_dir}", "data=local", f"data.path={corpus}"] + [
        f"data.{k}={v}" for k, v in values.items()
    ]


@pytest.fixture
def tales_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tales"
    folder.mkdir()
    for i, tale in enumerate(TALES):
        (folder / f"tale{i}.txt").write_text(tale)
    return folder


@pytest.fixture
def tales_cfg(tmp_path: Path, tales_dir: Path):
    return load_config(tiny_overrides(tmp_path / "cache", tales_dir))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """The embedded corpus prepared once (small rows and vocabulary) for all tests that train."""
    from gpthf.data.dataset import prepare_data

    cache = tmp_path_factory.mktemp("data_cache")
    prepare_data(load_config([f"cache_dir={cache}", *SMALL_DATA]), progress=False)
    return cache


def run_overrides(data_cache: Path, out: Path, *extra: str, arch: str = "gpthf-test") -> list[str]:
    """A training config that steps in milliseconds on CPU."""
    return [
        f"arch={arch}",
        "train=test",
        "train.eval_rows=16",
        *SMALL_DATA,
        f"cache_dir={data_cache}",
        f"output_dir={out}",
        *extra,
    ]


def frozen_clock() -> float:
    """No time passes: the schedule is driven by train.max_tokens alone, so runs are bit-reproducible."""
    return 0.0


@pytest.fixture(scope="session")
def trained_runs(data_cache, tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run of each model kind (a few thousand tokens), for generation and eval tests."""
    from gpthf.training.trainer import train

    out = tmp_path_factory.mktemp("runs")
    return {
        arch: train(
            load_config(run_overrides(data_cache, out, "train.max_tokens=3000", arch=f"{arch}-test")),
            clock=frozen_clock,
        )
        for arch in ("gpthf", "gpt")
    }


REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str, timeout: float = 120):
    """Run `python ARGS...` from the repository root as a user would; captured text output."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
