"""A trained model back from disk, whichever form it was kept in: a gpthf checkpoint (or the run
folder holding one) or a Hugging Face folder that `python -m gpthf export` wrote.

It sits above `gpthf.training.checkpoint` and `gpthf.export`, which both read checkpoints, so that
neither has to import the other to offer every form.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpthf.export.load import load_exported
from gpthf.models import LanguageModel, build_model
from gpthf.precision import DEFAULT_DTYPE, resolve_dtype
from gpthf.training.checkpoint import (
    CheckpointMeta,
    check_shapes_before_allocating,
    load_weights,
    read_meta,
    resolve_checkpoint,
)


def load_model_from_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    attention: str = "sdpa",
    dtype: str = DEFAULT_DTYPE,
) -> tuple[LanguageModel, CheckpointMeta, Path]:
    """(model in eval mode, checkpoint meta, checkpoint folder) for generation and evaluation;
    `dtype` (fp32, bf16, fp16) is the number format its weights and generation state use."""
    torch_dtype = resolve_dtype(dtype, device)  # before anything is read

    checkpoint = resolve_checkpoint(path)
    exported = load_exported(checkpoint, attention)  # (model, meta) of a `python -m gpthf export` folder
    if exported is not None:
        return exported[0].to(device=device, dtype=torch_dtype).eval(), exported[1], checkpoint
    meta = read_meta(checkpoint)
    check_shapes_before_allocating(meta, checkpoint)
    model = build_model(meta.arch, meta.vocab_size, attention)
    load_weights(model, checkpoint)
    return model.to(device=device, dtype=torch_dtype).eval(), meta, checkpoint
