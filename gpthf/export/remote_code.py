"""GPTHF and the other kinds as a Hugging Face `trust_remote_code` folder, and their weights back.

The folder carries `configuration_gpthf.py` and `modeling_gpthf.py` (copied verbatim from
`gpthf/export/remote/`, where they are tested as package modules) and names them in config.json's
`auto_map`. The model is the gpthf model itself under `model.`; the tied head is not stored.
Nothing here imports transformers: reading a folder back into gpthf does not need it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpthf.errors import CheckpointError

MODEL_TYPE = "gpthf"
ARCHITECTURE = "GPTHFForCausalLM"
PREFIX = "model."  # the wrapper's attribute holding our model (its `base_model_prefix`)
CODE_FILES = ("configuration_gpthf.py", "modeling_gpthf.py")
CODE_FOLDER = Path(__file__).resolve().parent / "remote"
AUTO_MAP = {
    "AutoConfig": "configuration_gpthf.GPTHFConfig",
    "AutoModelForCausalLM": f"modeling_gpthf.{ARCHITECTURE}",
}


def to_remote(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {PREFIX + name: tensor for name, tensor in weights.items()}


def from_remote(weights: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    foreign = sorted(name for name in weights if not name.startswith(PREFIX))
    if foreign:
        raise CheckpointError(
            f"{where} holds {foreign[0]!r}, outside the `{PREFIX}` the export writes: the folder was "
            f"changed or written by another tool; export the gpthf checkpoint again"
        )
    return {name.removeprefix(PREFIX): tensor for name, tensor in weights.items()}
