"""`init_from=CKPT`: start a run from another model's trained weights (swap, then finetune).

Weights are matched by role, not by name: embedding, final norm, then the transformer blocks in
depth order (GPT `blocks`, GPTHF `wlt_encoder` then `slt_body`, linear/T2R `blocks`). Every tensor of
the source must land somewhere with its shape; the target's tensors the source lacks (T2R's learned
feature maps) keep their fresh initialisation. So GPT → T2R swaps softmax for learned linear
attention, and GPT → GPTHF keeps every weight and swaps in the sentence masks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from gpthf.data.tokenizer import TOKENIZER_FILE
from gpthf.errors import ConfigError
from gpthf.loading import load_model_from_checkpoint
from gpthf.models import LanguageModel

log = logging.getLogger(__name__)


def _modules_by_role(model: LanguageModel) -> list[tuple[str, torch.nn.Module]]:
    blocks = model.block_stack()
    if not blocks:
        raise ConfigError(f"arch.model={model.arch.model} has no transformer blocks to take weights into")
    return [("embed", model.embed), ("norm", model.norm)] + [(f"block {i}", b) for i, b in enumerate(blocks)]


def initialize_from(model: LanguageModel, path: str | Path, tokenizer_file: Path) -> dict:
    """Copy a checkpoint's weights into `model` by role; returns what was copied and what is new."""
    source, meta, checkpoint = load_model_from_checkpoint(path)
    if (checkpoint / TOKENIZER_FILE).read_bytes() != Path(tokenizer_file).read_bytes():
        raise ConfigError(
            f"init_from={checkpoint} was trained with another tokenizer; use the data config it was trained "
            f"on (its config.json 'data')"
        )
    source_parts, target_parts = _modules_by_role(source), _modules_by_role(model)
    if len(source_parts) != len(target_parts):
        raise ConfigError(
            f"init_from={checkpoint} has {len(source_parts) - 2} blocks, arch has {len(target_parts) - 2}: "
            f"pick the arch of the same size"
        )
    new: list[str] = []
    for (role, src), (_, dst) in zip(source_parts, target_parts):
        try:
            missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
        except RuntimeError as err:  # shape mismatch
            raise ConfigError(
                f"init_from={checkpoint}: {role} does not fit the arch ({str(err).splitlines()[-1].strip()})"
            ) from None
        if unexpected:
            raise ConfigError(
                f"init_from={checkpoint}: {role} has weights the arch has no place for: {unexpected[:3]}"
            )
        new += [f"{role}: {name}" for name in missing]
    kept = sum(p.numel() for p in source.parameters())
    fresh = model.num_parameters() - kept
    summary = {"checkpoint": str(checkpoint), "model": meta.arch["model"], "tokens": meta.tokens,
               "kept_parameters": kept, "new_parameters": fresh, "new_tensors": new}  # fmt: skip
    log.info(
        "init_from %s (%s): %s parameters copied, %s new (%d tensors)",
        checkpoint, summary["model"], f"{kept:,}", f"{fresh:,}", len(new),
    )  # fmt: skip
    return summary
