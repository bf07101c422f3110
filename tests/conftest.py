"""Shared fixtures: tiny corpora written by the tests, and configs pointing at a temporary cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpthf.config import load_config

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
