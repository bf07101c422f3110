"""Bits per byte and perplexity of a checkpoint on packed rows, with the loss split by where the
predicted token stands in its sentence: the first token of a sentence is where GPTHF has only the
compressed past to go on, so that is where sentence compression would cost quality.

Bits per byte = summed next-token loss in bits / UTF-8 bytes of the text scored: comparable across
tokenizers and models. Text is always re-packed with the checkpoint's own tokenizer.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from gpthf.attention.sentences import positions_in_sentence
from gpthf.data.dataset import SPLITS, pack_split_in_memory
from gpthf.data.special_tokens import EOS_ID, PAD_ID
from gpthf.errors import DataError
from gpthf.precision import DEFAULT_DTYPE
from gpthf.training.checkpoint import CheckpointMeta
from gpthf.training.scoring import bits_per_byte, next_token_logprobs

GROUPS = ("first_in_sentence", "later_in_sentence", "sentence_end")


@dataclass
class PerplexityResult:
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of the text those tokens encode
    nats_per_token: float
    bits_per_byte: float
    perplexity: float
    tokens_per_s: float
    loss_by_position: dict[str, float]  # nats/token for each of GROUPS
    tokens_by_position: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def rows_for_text(
    meta: CheckpointMeta, tokenizer, split: str = "test", path: str | None = None, max_rows: int | None = None
):
    """(input_ids, sentence_ids, bytes) of a split of the checkpoint's corpus, or of every document
    under `path` (a file or folder of any kind `gpthf.data.readers` reads), packed like the training data; only the
    first `max_rows` rows (and the documents they need) are read when it is given."""
    input_ids, sentence_ids, stats = pack_for_scoring(meta, tokenizer, split, path, max_rows)
    return input_ids, sentence_ids, stats["bytes"]


def pack_for_scoring(
    meta: CheckpointMeta, tokenizer, split: str = "test", path: str | None = None, max_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """`rows_for_text`'s rows with the packing's stats: "bytes", and "skipped_records", the malformed
    records and damaged files passed over by reason (warned once, as prepare does)."""
    data_cfg = OmegaConf.create(meta.data)
    if path is not None:
        data_cfg.merge_with(
            {"source": "local", "path": str(path), "validation_fraction": 0.0, "test_fraction": 0.0}
        )
        split = "train"  # all of the file's text
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    input_ids, sentence_ids, stats = pack_split_in_memory(data_cfg, tokenizer, split, max_rows)
    if not len(input_ids):
        raise DataError(f"the {split} split of {path or data_cfg.source} has no text")
    return input_ids, sentence_ids, stats


@torch.inference_mode()
def score(
    model,
    input_ids: np.ndarray,
    sentence_ids: np.ndarray,
    n_bytes: int,
    batch_size: int = 8,
    max_rows: int | None = None,
) -> PerplexityResult:
    device = model.embed.weight.device
    rows = len(input_ids) if max_rows is None else min(max_rows, len(input_ids))
    totals = dict.fromkeys(GROUPS, 0.0)
    counts = dict.fromkeys(GROUPS, 0)
    start = time.perf_counter()
    for begin in range(0, rows, batch_size):
        ids = torch.from_numpy(input_ids[begin : begin + batch_size]).to(device)
        sids = torch.from_numpy(sentence_ids[begin : begin + batch_size]).to(device)
        logprobs, _ = next_token_logprobs(model, ids, sids)
        nll = -logprobs
        targets = ids[:, 1:]
        position = positions_in_sentence(sids)[:, 1:]  # of the predicted token
        real = targets != PAD_ID
        groups = {
            "first_in_sentence": real & (position == 0),
            "later_in_sentence": real & (position > 0) & (targets != EOS_ID),
            "sentence_end": real & (position > 0) & (targets == EOS_ID),
        }
        for name, mask in groups.items():
            totals[name] += float(nll[mask].sum())
            counts[name] += int(mask.sum())
    elapsed = time.perf_counter() - start
    tokens = sum(counts.values())
    if tokens == 0:
        raise DataError("no tokens to score")
    nats = sum(totals.values())
    scored_bytes = n_bytes * rows / len(input_ids)  # bytes of the rows actually scored
    return PerplexityResult(
        tokens=tokens,
        bytes=round(scored_bytes),
        nats_per_token=nats / tokens,
        bits_per_byte=bits_per_byte(nats, scored_bytes),
        perplexity=math.exp(nats / tokens),
        tokens_per_s=tokens / elapsed,
        loss_by_position={k: totals[k] / counts[k] if counts[k] else float("nan") for k in GROUPS},
        tokens_by_position=counts,
    )


def sample_sanity(
    model, meta: CheckpointMeta, input_ids: np.ndarray, n_samples: int, new_tokens: int = 64
) -> dict:
    """Sample continuations of the first 16 tokens of `n_samples` rows and check them (see sanity.py)."""
    from gpthf.evaluation.sanity import generation_sanity
    from gpthf.generation import GenerationSettings, generate

    prompts = [[t for t in row[:16].tolist() if t != PAD_ID] for row in input_ids[:n_samples]]
    prompts = [p for p in prompts if p]
    settings = GenerationSettings(
        max_new_tokens=new_tokens, max_sentence_len=meta.data["max_sentence_len"], seed=0
    )
    return generation_sanity(generate(model, prompts, settings).tokens, meta.data["max_sentence_len"])


def evaluate_checkpoint(
    ckpt: str | Path, data: str = "default", split: str = "test", batch_size: int = 8,
    max_rows: int | None = None, device="cpu", samples: int = 16, dtype: str = DEFAULT_DTYPE,
) -> dict:  # fmt: skip
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.training.checkpoint import load_checkpoint_tokenizer

    model, meta, checkpoint = load_model_from_checkpoint(ckpt, device, dtype=dtype)
    tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
    input_ids, sentence_ids, stats = pack_for_scoring(
        meta, tokenizer, split, None if data == "default" else data, max_rows
    )
    result = score(model, input_ids, sentence_ids, stats["bytes"], batch_size, max_rows)
    summary = {
        "checkpoint": str(checkpoint),
        "model": meta.arch["model"],
        "data": data,
        "split": split if data == "default" else "all",
        "dtype": dtype,
    }
    summary.update(result.as_dict())
    summary["skipped_records"] = stats["skipped_records"]
    if samples:
        summary["generation"] = sample_sanity(model, meta, input_ids, samples)
    return summary
