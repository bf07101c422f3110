"""What the decode and training benchmarks run on: real text from a prepared data set (its training
split), and the facts of that set their FLOPs need (vocabulary, tokens per sentence).

Only the rows a benchmark needs are read, so preparing a workload costs the same whatever the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gpthf.measure.speed import decode_stream


@dataclass
class Workload:
    stream: list[int]  # real text, enough for `batch_of_contexts` at the largest context and batch
    train_ids: np.ndarray  # (rows, seq_len) packed training rows for the training timings
    train_sentence_ids: np.ndarray
    vocab_size: int
    tokens_per_sentence: float  # the training split's mean: GPTHF's FLOPs depend on it

    def training_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training rows and their sentence_ids as tensors (B, T)."""
        return torch.from_numpy(self.train_ids), torch.from_numpy(self.train_sentence_ids)


def prepare_workload(
    overrides: Sequence[str], context: int, new_tokens: int, batch: int, train_rows: int = 0
) -> Workload:
    """The data set that `overrides` configure, prepared (or found in its cache), as a workload for
    decoding `new_tokens` after `context` tokens in rows of `batch`, and training on `train_rows` rows."""
    from gpthf.config import load_config
    from gpthf.data.dataset import prepare_data

    data = prepare_data(load_config(list(overrides)))
    stats = data.stats
    train = data.split("train")
    stream = decode_stream(train, stats["data_config"]["seq_len"], context, new_tokens, batch)
    train_ids, train_sentence_ids = train.rows(np.arange(min(len(train), train_rows)))  # only what is timed
    return Workload(
        stream,
        train_ids,
        train_sentence_ids,
        stats["vocab_size"],
        stats["splits"]["train"]["tokens_per_sentence_mean"],
    )
