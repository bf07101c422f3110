"""How far a lower number format's greedy choices stay with fp32's (eval/precision.py).

Teacher-forced, each position is judged on the same context, so one near-tie flip counts once;
free-running, each format continues its own text, so one flip changes everything after it: the
harsher figure, reported with where each row first differs.
"""

from __future__ import annotations

import torch

from gpthf.generation.context import sentence_ids_for
from gpthf.models import LanguageModel


@torch.inference_mode()
def teacher_forced_agreement(
    model: LanguageModel, reference: LanguageModel, prompts: list[list[int]], continuations: list[list[int]]
) -> float:
    """On the reference's continuations of `prompts`, the share of positions where both models' argmax
    is the same token."""
    device = reference.embed.weight.device
    same = total = 0
    for prompt, continuation in zip(prompts, continuations):
        sequence = torch.tensor([prompt + continuation], device=device)
        lengths = torch.tensor([sequence.shape[1]], device=device)
        sentence_ids = sentence_ids_for(sequence, lengths)
        ours, theirs = (
            m(sequence, sentence_ids)[0, len(prompt) - 1 : -1].argmax(-1) for m in (model, reference)
        )
        same += int((ours == theirs).sum())
        total += len(continuation)
    return same / total


def free_running_agreement(ours: list[list[int]], reference: list[list[int]]) -> tuple[float, list[int]]:
    """The share of equal positions of two sets of generations, and each row's first differing position
    (its length where none differs)."""
    same = total = 0
    first_difference = []
    for mine, theirs in zip(ours, reference):
        pairs = list(zip(mine, theirs))
        same += sum(a == b for a, b in pairs)
        total += len(pairs)
        first_difference.append(next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs)))
    return same / total, first_difference
