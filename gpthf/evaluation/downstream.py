"""Downstream evaluation of a checkpoint: finetuned classification and zero-shot cloze.

Classification pools the state at the last token of the text, which is its last <eos>: for GPTHF that
is the last sentence-end state (the embedding of the final sentence, which saw all earlier sentence
embeddings), for the GPT the last token. A linear layer on it is trained together with the whole
network, once per seed; accuracy and macro-F1 are reported per seed, with median and spread.
"""

from __future__ import annotations

import copy
import random
import statistics
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from gpthf.data.packing import sentence_units
from gpthf.data.special_tokens import EOS_ID
from gpthf.data.tokenizer import encode_sentences
from gpthf.evaluation.tasks import Example, Task
from gpthf.generation.strategies import pad_rows, sentence_ids_for
from gpthf.models import LanguageModel
from gpthf.training.scoring import next_token_logprobs


def encode_texts(
    texts: list[str], tokenizer, splitter, max_sentence_len: int, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, T) right-padded, lengths (N,)): every sentence closed by <eos>, cut to at most `max_len`
    tokens at a sentence end, so the pooled token is always an <eos>."""
    rows = []
    for text in texts:
        ids: list[int] = []
        for tokens in encode_sentences(tokenizer, splitter.split(text) or [text.strip() or "."]):
            for unit in sentence_units(tokens, max_sentence_len):
                if len(ids) + len(unit) > max_len:
                    break
                ids.extend(unit)
        rows.append(ids or [EOS_ID])
    return pad_rows(rows)


class SequenceClassifier(nn.Module):
    def __init__(self, backbone: LanguageModel, n_labels: int):
        super().__init__()
        self.backbone = backbone
        self.classify = nn.Linear(backbone.arch.d_model, n_labels)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states = self.backbone.features(ids, sentence_ids_for(ids, lengths))  # (B, T, d)
        pooled = states[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # the last <eos>
        return self.classify(pooled)


@dataclass
class Encoded:
    ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor


def _encode(examples: list[Example], tokenizer, splitter, max_sentence_len: int, max_len: int) -> Encoded:
    ids, lengths = encode_texts([e.text for e in examples], tokenizer, splitter, max_sentence_len, max_len)
    return Encoded(ids, lengths, torch.tensor([e.label for e in examples]))


@torch.no_grad()
def _predict(model: SequenceClassifier, data: Encoded, batch_size: int) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(data.labels), batch_size):
        ids, lengths = data.ids[start : start + batch_size], data.lengths[start : start + batch_size]
        out.append(model(ids[:, : int(lengths.max())], lengths).argmax(-1))
    return torch.cat(out)


def accuracy_and_f1(predicted: torch.Tensor, labels: torch.Tensor, n_labels: int) -> tuple[float, float]:
    accuracy = float((predicted == labels).float().mean())
    f1s = []
    for c in range(n_labels):
        tp = int(((predicted == c) & (labels == c)).sum())
        fp, fn = int(((predicted == c) & (labels != c)).sum()), int(((predicted != c) & (labels == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return accuracy, sum(f1s) / n_labels


def finetune(
    backbone: LanguageModel, task: Task, tokenizer, splitter, max_sentence_len: int, max_len: int,
    seeds: list[int], epochs: int = 2, lr: float = 1e-4, batch_size: int = 16, max_train: int | None = None, max_eval: int | None = None,
    progress: bool = False,
) -> dict:  # fmt: skip
    """Finetune a copy of `backbone` per seed; test accuracy/macro-F1 per seed, median and spread."""
    train = _encode(task.train[:max_train], tokenizer, splitter, max_sentence_len, max_len)
    test = _encode(task.test[:max_eval], tokenizer, splitter, max_sentence_len, max_len)
    per_seed = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = SequenceClassifier(copy.deepcopy(backbone), len(task.labels))
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        order = list(range(len(train.labels)))
        for epoch in range(epochs):
            model.train()
            random.Random(seed).shuffle(order)
            batches = range(0, len(order), batch_size)
            for start in tqdm(
                batches, desc=f"seed {seed} epoch {epoch + 1}/{epochs}", leave=False, disable=not progress
            ):
                index = torch.tensor(order[start : start + batch_size])
                ids, lengths = train.ids[index], train.lengths[index]
                loss = F.cross_entropy(model(ids[:, : int(lengths.max())], lengths), train.labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        accuracy, f1 = accuracy_and_f1(_predict(model, test, batch_size), test.labels, len(task.labels))
        per_seed.append({"seed": seed, "accuracy": accuracy, "macro_f1": f1})
    accuracies = [r["accuracy"] for r in per_seed]
    return {
        "task": task.name,
        "labels": task.labels,
        "train_examples": len(train.labels),
        "test_examples": len(test.labels),
        "per_seed": per_seed,
        "accuracy_median": statistics.median(accuracies),
        "accuracy_spread": max(accuracies) - min(accuracies),
        "macro_f1_median": statistics.median(r["macro_f1"] for r in per_seed),
        "majority_baseline": max(float((test.labels == c).float().mean()) for c in range(len(task.labels))),
    }


@torch.no_grad()
def continuation_logprob(
    model: LanguageModel, context: list[int], candidates: list[list[int]]
) -> list[float]:
    """Summed log-probability of each candidate's tokens after `context`, scored in one batch."""
    ids, lengths = pad_rows([context + c for c in candidates])
    logprobs, _ = next_token_logprobs(model, ids, sentence_ids_for(ids, lengths))
    first = len(context) - 1  # where the prediction of a candidate's first token stands
    return [
        float(logprobs[i, first : first + len(candidate)].sum()) for i, candidate in enumerate(candidates)
    ]


def cloze(
    model: LanguageModel,
    documents: list[list[list[int]]],
    n_examples: int = 200,
    n_distractors: int = 3,
    context_sentences: int = 4,
    seed: int = 0,
) -> dict:
    """Zero-shot: after a few held-out sentences, is the true next sentence more likely than sentences
    from elsewhere? `documents` holds each document's sentences as token ids closed by <eos>."""
    rng = random.Random(seed)
    pool = [s for doc in documents for s in doc]
    candidates_at = [(d, i) for d, doc in enumerate(documents) for i in range(context_sentences, len(doc))]
    if not candidates_at or len(pool) <= n_distractors:
        raise ValueError("not enough held-out sentences for the cloze task")
    model.eval()
    correct = 0
    picks = rng.sample(candidates_at, min(n_examples, len(candidates_at)))
    for d, i in picks:
        context = [t for s in documents[d][i - context_sentences : i] for t in s]
        true = documents[d][i]
        distractors = [s for s in rng.sample(pool, n_distractors + 1) if s != true][:n_distractors]
        scores = continuation_logprob(model, context, [true, *distractors])
        correct += int(max(range(len(scores)), key=scores.__getitem__) == 0)
    return {
        "task": "cloze",
        "examples": len(picks),
        "choices": n_distractors + 1,
        "accuracy": correct / len(picks),
        "chance": 1 / (n_distractors + 1),
    }
