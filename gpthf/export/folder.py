"""`export_checkpoint`: a gpthf checkpoint as a Hugging Face model folder, written whole or not at all.

    DIR/config.json              Hugging Face's config; the checkpoint's own config.json under `gpthf`
    DIR/model.safetensors        the weights under Hugging Face's names (the tied head not stored)
    DIR/generation_config.json   <eod> ends a text, <pad> pads (gpthf.export.hf_generation)
    DIR/tokenizer.json, tokenizer_config.json, special_tokens_map.json   (gpthf.export.tokenizer)
    DIR/configuration_gpthf.py, modeling_gpthf.py    every kind but the GPT (gpthf.export.remote_code)

A GPT becomes a plain `LlamaForCausalLM` (gpthf.export.llama); the other kinds a `trust_remote_code`
folder. The files are assembled in a staging folder beside DIR and renamed into place.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from gpthf.atomic import writing
from gpthf.errors import ConfigError
from gpthf.export import EXPORT_DTYPES, llama, remote_code
from gpthf.export.hf_generation import GENERATION_IDS
from gpthf.export.load import CONFIG_FILE, EXPORT_KEY, WEIGHTS_FILE
from gpthf.export.tokenizer import tokenizer_files
from gpthf.precision import torch_dtype


def check_out(out: Path, force: bool) -> None:
    """Refuse an `--out` that holds anything but an earlier export (which `force` replaces), before
    the model is read: a typo must never replace a folder of the user's."""
    if out.is_file():
        raise ConfigError(f"--out {out} is a file; give a folder to create")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ConfigError(f"--out {out} exists and is not empty; give a new folder, or --force to replace it")
    try:
        config = json.loads((out / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = None
    if not (isinstance(config, dict) and isinstance(config.get(EXPORT_KEY), dict)):
        raise ConfigError(
            f"--force replaces only a folder `python -m gpthf export` wrote, and --out {out} is not one "
            f"(its {CONFIG_FILE} has no `{EXPORT_KEY}` entry); give a new folder"
        )


def _hf_config(model_type: str, values: dict, torch_name: str) -> dict:
    """config.json through transformers' own config class (its defaults and field names), plus the
    older names of two fields, so that readers built on transformers 4 (vLLM, llama.cpp's converter)
    find them too."""
    from transformers import LlamaConfig

    from gpthf.export.remote.configuration_gpthf import GPTHFConfig

    config_class = {llama.MODEL_TYPE: LlamaConfig, remote_code.MODEL_TYPE: GPTHFConfig}[model_type]
    config = json.loads(config_class(**values, dtype=torch_name).to_json_string())
    config.setdefault("torch_dtype", torch_name)
    if "rope_theta" in values:
        config.setdefault("rope_theta", values["rope_theta"])
    return config


def layout(meta):
    """How a model of `meta`'s kind is exported: the GPT as Llama, every other kind as remote code."""
    return llama if meta.arch["model"] == "gpt" else remote_code


def export_files(
    model: torch.nn.Module, meta, checkpoint: Path, dtype: str
) -> dict[str, Callable[[Path], object]]:
    """File name -> function writing it, for the exported folder of `model` (loaded from `checkpoint`)."""
    torch_type = torch_dtype(dtype)
    torch_name = str(torch_type).removeprefix("torch.")  # as config.json names it: float32, bfloat16
    ours = {name: p.detach().to("cpu", torch_type).contiguous() for name, p in model.named_parameters()}
    kind = layout(meta)
    values = {
        "vocab_size": meta.vocab_size,
        "tie_word_embeddings": True,
        "architectures": [kind.ARCHITECTURE],
        EXPORT_KEY: meta.to_json(),
        **GENERATION_IDS,
    }
    if kind is llama:  # a limit in tokens: the trained context
        weights, context, code = llama.to_llama(ours), llama.context_tokens(meta), ()
        values.update(llama.llama_config(meta))
    else:
        weights, context, code = remote_code.to_remote(ours), None, remote_code.CODE_FILES
        values.update(hidden_size=meta.arch["d_model"], auto_map=remote_code.AUTO_MAP)
    config = json.dumps(_hf_config(kind.MODEL_TYPE, values, torch_name), indent=2)
    generation = json.dumps(GENERATION_IDS, indent=2)
    files: dict[str, Callable[[Path], object]] = {
        CONFIG_FILE: lambda path: path.write_text(config),
        WEIGHTS_FILE: lambda path: save_file(weights, str(path), metadata={"format": "pt"}),
        "generation_config.json": lambda path: path.write_text(generation),
    }
    for name, content in tokenizer_files(checkpoint, context).items():
        files[name] = lambda path, content=content: path.write_bytes(content)
    for name in code:
        files[name] = lambda path, name=name: shutil.copyfile(remote_code.CODE_FOLDER / name, path)
    return files


def export_checkpoint(
    ckpt: str | Path, out: str | Path, dtype: str = "fp32", force: bool = False
) -> tuple[Path, str]:
    """Write the Hugging Face folder of checkpoint `ckpt` (a checkpoint, run or exported folder) at
    `out`; returns the folder and the class transformers loads it as."""
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.training.checkpoint import (
        CheckpointWriteFailed,
        load_checkpoint_tokenizer,
        write_atomically,
    )

    out = Path(out).expanduser()
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not exported; choose one of: {', '.join(EXPORT_DTYPES)}")
    check_out(out, force)
    model, meta, checkpoint = load_model_from_checkpoint(ckpt)
    load_checkpoint_tokenizer(checkpoint, meta)  # refused here if missing or of another vocabulary
    files = export_files(model, meta, checkpoint, dtype)

    def write(folder: Path) -> None:
        for name, write_file in files.items():
            with writing(folder / name):
                write_file(folder / name)

    try:
        write_atomically(out, write)
    except CheckpointWriteFailed as err:
        raise err.keeping(f"{out} is as it was") from None
    return out, layout(meta).ARCHITECTURE
