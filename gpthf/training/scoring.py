"""How a model scores text, defined once for every score: the validation loss while training, the
perplexity and bits per byte of a checkpoint, lm-eval's log-likelihoods and the cloze task. Here, at
the training level, so the trainer and the evaluation code above it read the same definition.
"""

from __future__ import annotations

import math

import torch

from gpthf.attention.sentences import SentenceBounds


def next_token_logprobs(
    model: torch.nn.Module,
    ids: torch.Tensor,
    sentence_ids: torch.Tensor,
    bounds: SentenceBounds | None = None,
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T-1) log P(ids[:, t+1] | ids[:, :t+1]) in float32 (what a <pad> target gets is the
    caller's to drop), and with `greedy` whether each of those tokens is the model's most likely one.
    `bounds`: the batch's sentence bounds, when the caller knows them without reading the device."""
    logits = model(ids, sentence_ids, bounds=bounds)
    logprobs = logits[:, :-1].float().log_softmax(-1)
    targets = ids[:, 1:]
    chosen = logprobs.gather(-1, targets[..., None]).squeeze(-1)
    return chosen, (logprobs.argmax(-1) == targets) if greedy else None


def bits_per_byte(nats: float, n_bytes: float) -> float:
    """Summed loss in bits per UTF-8 byte of the text scored: comparable across tokenizers and models."""
    return nats / math.log(2) / n_bytes
