"""An exported Hugging Face folder read back into gpthf: `--ckpt DIR` for generate.py, the eval
scripts and the server, through `gpthf.loading.load_model_from_checkpoint`.

The export keeps the checkpoint's own config.json under the `gpthf` key of the folder's config.json,
so the model is rebuilt exactly as it was trained (and checked as any checkpoint's config is), and the
weights come back from Hugging Face's names by the inverse of the export's mapping. transformers is
not needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpthf.errors import CheckpointError
from gpthf.export import llama, remote_code
from gpthf.training.checkpoint import EXPORTED_META_KEY as EXPORT_KEY

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# config.json's `model_type` -> how its weights' names become ours again.
FROM_HF_NAMES = {llama.MODEL_TYPE: llama.from_llama, remote_code.MODEL_TYPE: remote_code.from_remote}


def _exported_config(folder: Path) -> dict | None:
    """config.json of a folder `gpthf export` wrote; None for a gpthf checkpoint (or an unreadable
    file: `read_meta` tells what is wrong with it). A Hugging Face folder without our metadata is an
    error here, naming what it lacks."""
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or "format" in raw:
        return None
    if isinstance(raw.get(EXPORT_KEY), dict) and raw.get("model_type") in FROM_HF_NAMES:
        return raw
    if EXPORT_KEY in raw or "model_type" in raw or "architectures" in raw:
        kind = (raw.get("architectures") or [raw.get("model_type", "?")])[0]
        raise CheckpointError(
            f"{folder} is a Hugging Face model folder ({kind}) without gpthf's metadata (a `{EXPORT_KEY}` "
            f"object in its {CONFIG_FILE} and model_type {' or '.join(FROM_HF_NAMES)}): gpthf reads only "
            f"folders that `python -m gpthf export` wrote; export the gpthf checkpoint again, or load this "
            f"folder with transformers"
        )
    return None


def exported_meta(folder: Path):
    """The `CheckpointMeta` an exported folder keeps, validated as a checkpoint's config.json is;
    None when `folder` is not an exported folder."""
    from gpthf.training.checkpoint import parse_meta

    raw = _exported_config(folder)
    return None if raw is None else parse_meta(raw[EXPORT_KEY], folder)


def load_exported(checkpoint: Path, attention: str = "sdpa"):
    """(model, meta) of an exported folder, the model in fp32 on the CPU as a checkpoint's would be
    loaded; None when `checkpoint` is a gpthf checkpoint (the caller loads it as one)."""
    from safetensors.torch import load_file

    from gpthf.models import build_model
    from gpthf.training.checkpoint import parse_meta
    from gpthf.training.checkpoint_checks import check_finite

    raw = _exported_config(checkpoint)
    if raw is None:
        return None
    meta = parse_meta(raw[EXPORT_KEY], checkpoint)
    where = str(checkpoint / WEIGHTS_FILE)
    try:
        stored = load_file(where)
    except Exception as err:  # safetensors raises its own types for a missing, truncated or corrupt file
        raise CheckpointError(f"exported weights {where} are unreadable ({err})") from None
    weights = FROM_HF_NAMES[raw["model_type"]](stored, where)
    with torch.device("meta"):  # no memory: a config.json edited to huge sizes is refused first
        expected = {k: tuple(p.shape) for k, p in build_model(meta.arch, meta.vocab_size).named_parameters()}
    found = {k: tuple(t.shape) for k, t in weights.items()}
    if found != expected:
        odd = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
        raise CheckpointError(
            f"{where} does not fit the model its {CONFIG_FILE} describes ({odd[0]!r} differs): the files "
            f"do not belong together; export the gpthf checkpoint again"
        )
    check_finite(weights, Path(where), "weights")
    model = build_model(meta.arch, meta.vocab_size, attention)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name])
    return model, meta
