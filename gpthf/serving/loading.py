"""What `serve` loads before it binds a port: the checkpoint, its tokenizer and sentence splitter,
and the engine over them. Apart from the command line (gpthf.serving.server) and the routes
(gpthf.serving.app), which both need it, so neither imports the other; the serving benchmark's
in-process mode loads through it too, so both of its measurements serve the same engine.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpthf.errors import CheckpointError, ConfigError, GpthfError

if TYPE_CHECKING:
    from gpthf.serving.engine import RequestSettings

WARM_UP_PROMPT = "Hello"  # one greedy token of it is the warm-up request, and the smallest one that must fit


def warm_up_settings() -> RequestSettings:
    """Imported when called: the engine pulls in torch, which `--help` need not wait for."""
    from gpthf.serving.engine import RequestSettings

    return RequestSettings(max_tokens=1, temperature=0.0)


@dataclass
class Served:
    """What the app serves: the engine and how text becomes its tokens."""

    engine: Any
    tokenizer: Any
    splitter: Any
    max_sentence_len: int
    name: str
    arch: str
    context: dict[str, int | None]
    pack: bool = True  # multiply from weights packed for the CPU's kernels (rounding only)


def load(args: argparse.Namespace) -> Served:
    """The checkpoint, tokenizer, sentence splitter and engine, loaded as generate.py loads them."""
    from gpthf.data.splitter import build_splitter
    from gpthf.generation import ContextLimit
    from gpthf.generation.prompts import encode_prompt
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.serving.engine import Engine
    from gpthf.training.checkpoint import (
        load_checkpoint_tokenizer,
        resolve_checkpoint,
    )
    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")
    if args.compile:
        from gpthf.generation.compiled import check_compiler

        check_compiler(device)
    checkpoint = resolve_checkpoint(args.ckpt)
    try:
        model, meta, checkpoint = load_model_from_checkpoint(checkpoint, device, dtype=args.dtype)
        tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
        limit = ContextLimit(**meta.context)
        max_sentence_len = meta.data["max_sentence_len"]
        splitter = build_splitter(meta.data["language"])
    except GpthfError:
        raise
    except Exception as err:  # a damaged file raises whatever its reader raises
        raise CheckpointError(
            f"checkpoint {checkpoint} does not load ({type(err).__name__}: {err})"
        ) from None
    given = {
        "max_batch": args.max_batch,
        "max_state_bytes": args.max_state_memory,
        "max_queue": args.max_queue,
    }
    engine = Engine(
        model,
        limit=limit,
        max_sentence_len=max_sentence_len,
        compile=args.compile,
        **{k: v for k, v in given.items() if v is not None},
    )
    smallest = engine.state_bytes(
        encode_prompt(WARM_UP_PROMPT, tokenizer, splitter, max_sentence_len), warm_up_settings()
    )
    if engine.max_state_bytes is not None and smallest > engine.max_state_bytes:
        raise ConfigError(  # else the server would start and answer every request with an error
            f"--max-state-memory {engine.max_state_bytes:,} bytes holds no request: a one-token reply "
            f"to a short prompt needs {smallest:,}; give more"
        )
    return Served(
        engine=engine,
        tokenizer=tokenizer,
        splitter=splitter,
        max_sentence_len=max_sentence_len,
        name=args.model_name or run_name(checkpoint),
        arch=meta.arch["model"],
        context={"tokens": limit.tokens, "sentences": limit.sentences},
        pack=not args.no_pack,
    )


def run_name(checkpoint: Path) -> str:
    """The run's `name` as its config.yaml records it (`gpthf-kjv`: what `outputs/gpthf-kjv` and the
    README's client examples call it), else the run folder's name (RUN/checkpoints/NAME), or the
    checkpoint folder's for a loose one."""
    import yaml  # omegaconf's, so always there

    from gpthf.training.run_dir import CONFIG_FILE

    checkpoint = Path(checkpoint).resolve()
    if checkpoint.parent.name != "checkpoints":
        return checkpoint.name
    run = checkpoint.parent.parent
    try:
        name = yaml.safe_load((run / CONFIG_FILE).read_text()).get("name")
    except (OSError, AttributeError, yaml.YAMLError):  # no config, or not a mapping
        name = None
    return name if isinstance(name, str) and name.strip() else run.name
