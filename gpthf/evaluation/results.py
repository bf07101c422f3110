"""Evaluation results live beside the run they evaluate: `<run>/eval/<name>.json`, gathered by report.py."""

from __future__ import annotations

import json
from pathlib import Path

from gpthf.atomic import atomic_write, writing


def run_dir_of(checkpoint: Path) -> Path:
    """`<run>/checkpoints/<name>` → `<run>`; a checkpoint folder elsewhere keeps its results inside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def save_result(checkpoint: Path, name: str, result: dict) -> Path:
    """`<run>/eval/<name>.json`, written whole or not at all (report.py trusts every file there)."""
    folder = run_dir_of(checkpoint) / "eval"
    kept = f"this result is not saved; the results already in {folder} are intact"
    with writing(folder, kept):
        folder.mkdir(parents=True, exist_ok=True)
    return atomic_write(folder / f"{name}.json", json.dumps(result, indent=2), kept)


def load_results(run_dir: Path) -> dict[str, dict]:
    folder = Path(run_dir) / "eval"
    return (
        {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    )
