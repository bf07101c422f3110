"""Loads the offline tasks' data for lm-eval (`custom_dataset: !function gpthf_tasks.load` in the
task YAMLs beside this file): eval/tasks/data/<file>.jsonl, found from this file, not the working
folder, so `--include_path eval/tasks` works from anywhere."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def load(data_file: str, **_metadata):
    import datasets

    path = DATA / data_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; rebuild the offline task data: python eval/tasks/build_data.py"
        )
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(records)})
