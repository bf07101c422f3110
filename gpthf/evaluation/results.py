"""Evaluation results live beside the run they evaluate: `<run>/eval/<name>.json`, gathered by report.py."""

from __future__ import annotations

import json
from pathlib import Path


def run_dir_of(checkpoint: Path) -> Path:
    """`<run>/checkpoints/<name>` → `<run>`; a checkpoint folder elsewhere keeps its results inside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def save_result(checkpoint: Path, name: str, result: dict) -> Path:
    folder = run_dir_of(checkpoint) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    return path


def load_results(run_dir: Path) -> dict[str, dict]:
    folder = Path(run_dir) / "eval"
    return (
        {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    )
