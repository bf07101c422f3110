"""Checkpoints: a folder that is either complete or absent.

    <run>/checkpoints/step-00001200/   model.safetensors  weights (loadable without hydra or gpthf's trainer)
                                       config.json        arch, vocab size, data config, step, tokens
                                       tokenizer.json     the tokenizer the model was trained with
                                       train_state.pt     optimizer, data position, RNG, elapsed budget
    <run>/checkpoints/final/           the same, written when the budget is spent

Every file is written and fsynced inside a hidden temporary folder that is renamed into place at the
end, so a kill at any moment leaves either the new checkpoint whole or only the previous ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpthf import __version__
from gpthf.atomic import WriteFailed, move_into_place, restore_set_aside, write_failure, writing
from gpthf.errors import CheckpointError, DataError
from gpthf.training.checkpoint_checks import check_finite, check_train_state, meta_problem

CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
FINAL = "final"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint's config.json says about its model, written by `Trainer.save` and read by
    `read_meta`. Fields absent from an older checkpoint's file take their defaults."""

    arch: dict  # the arch config: what `build_model` builds
    vocab_size: int
    data: dict  # the data config the model was trained on (language, seq_len, max_sentence_len, ...)
    step: int | None = None
    tokens: int | None = None  # real tokens trained on
    context: dict = field(default_factory=dict)  # `ContextLimit`'s fields: what the model saw at most
    data_cache: str | None = None  # the data cache's folder name: what a resume must find again
    init_from: str | None = None

    def to_json(self) -> dict:
        """config.json's content: the format first, then the fields in their order."""
        return {"format": CHECKPOINT_FORMAT, "gpthf_version": __version__, **asdict(self)}


def staging_folder(target: Path) -> Path:
    """Where `target` is assembled before its rename; the same name on every rank of a run."""
    return target.parent / f".{target.name}.tmp"


class CheckpointWriteFailed(CheckpointError, WriteFailed):
    """A checkpoint that could not be written (a full disk): its staging folder is removed and the
    checkpoints before it are intact."""


def write_atomically(target: Path, write: Callable[[Path], None], staged: bool = False) -> Path:
    """Run `write(staging)`, then rename the staging folder to `target` (replacing an older one).

    `staged=True`: the staging folder already exists and holds files other ranks wrote into it.
    A failed write (a full disk) removes the staging folder and raises `CheckpointWriteFailed`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_folder(target)
    try:
        if not staged:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        write(tmp)
        move_into_place(tmp, target)
    except (OSError, WriteFailed) as err:
        shutil.rmtree(tmp, ignore_errors=True)  # gives the space back; a reader never looks there
        failed = err if isinstance(err, WriteFailed) else write_failure(err, tmp, "")
        file = Path(failed.what)
        reason = f"{file.name}: {failed.reason}" if file.parent == tmp else failed.reason
        raise CheckpointWriteFailed(
            f"checkpoint {target}", reason, failed.todo, "earlier checkpoints are intact"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# What torch (`PytorchStreamWriter`) and safetensors ("... (os error 28)") say when the file system
# refused a write; any other RuntimeError or SafetensorError inside a checkpoint write is a bug.
_FAILED_WRITE = re.compile(r"unexpected pos|PytorchStreamWriter failed|file write failed|os error \d+")


def _as_os_error(err: Exception) -> OSError | None:
    """A library's report of a failed write (torch's RuntimeError, safetensors' SafetensorError) as
    the `OSError` it stands for, so that it is told like any other failed write; None when `err` is
    not a failed write (a pickling error, a bug), which must keep its traceback."""
    text = " ".join(str(err).split())
    if not _FAILED_WRITE.search(text):
        return None
    code = re.search(r"os error (\d+)", text)  # safetensors: "... File too large (os error 27)"
    if code:
        return OSError(int(code[1]), os.strerror(int(code[1])))
    detail = text.rpartition("] . ")[2]  # torch: "[enforce fail at FILE:LINE] . unexpected pos ..."
    return OSError(f"the write stopped short: {detail}")


def _copy_tokenizer(source: Path, path: Path) -> None:
    """The data cache's tokenizer.json into the checkpoint. Failing to read it is not the checkpoint
    disk's fault: the data cache went away (or was damaged) while the run was going."""
    try:
        content = Path(source).read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise DataError(
            f"the data cache's tokenizer {source} is missing or unreadable ({reason}): the data cache was "
            f"removed or changed during the run, so no checkpoint could be written (earlier checkpoints are "
            f"intact); restore the data cache or let the next run rebuild it from the same data config, then "
            f"resume with resume=true"
        ) from None
    path.write_bytes(content)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter once (the tied head is the embedding), as plain contiguous CPU tensors."""
    return {name: param.detach().cpu().contiguous() for name, param in model.named_parameters()}


def save_checkpoint(
    target: Path,
    model: torch.nn.Module,
    meta: CheckpointMeta,
    tokenizer_file: Path,
    train_state: dict | None = None,
    staged: bool = False,
) -> Path:
    """Write a complete checkpoint folder at `target`, `meta` as its config.json."""
    weights = _weights(model)
    config = json.dumps(meta.to_json(), indent=2)
    files: dict[str, Callable[[Path], object]] = {
        WEIGHTS_FILE: lambda path: save_file(weights, str(path)),
        CONFIG_FILE: lambda path: path.write_text(config),
        "tokenizer.json": lambda path: _copy_tokenizer(tokenizer_file, path),
    }
    if train_state is not None:
        files[STATE_FILE] = lambda path: torch.save(train_state, path)

    def write(folder: Path) -> None:
        for name, write_file in files.items():
            with writing(folder / name):
                try:
                    write_file(folder / name)
                except (SafetensorError, RuntimeError) as err:  # safetensors' and torch's failed writes
                    os_error = _as_os_error(err)
                    if os_error is None:
                        raise
                    raise os_error from None

    return write_atomically(Path(target), write, staged)


def recover_interrupted_writes(run_dir: Path) -> None:
    """Undo what a process killed inside `write_atomically` left: staging folders are dropped, and a
    checkpoint moved aside for its replacement is put back when the replacement never arrived."""
    checkpoints = Path(run_dir) / "checkpoints"
    restore_set_aside(checkpoints)
    for staging in checkpoints.glob(".*.tmp"):
        shutil.rmtree(staging, ignore_errors=True)


def _step_folders(checkpoints: Path) -> list[Path]:
    return sorted(p for p in checkpoints.glob("step-*") if p.is_dir() and (p / CONFIG_FILE).is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run: `final` if written, else the highest step."""
    checkpoints = Path(run_dir) / "checkpoints"
    if (checkpoints / FINAL / CONFIG_FILE).is_file():
        return checkpoints / FINAL
    steps = _step_folders(checkpoints)
    return steps[-1] if steps else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in _step_folders(Path(run_dir) / "checkpoints")[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, a run folder (its newest checkpoint) or a folder of runs (the newest run's)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file():  # a file of a checkpoint (model.safetensors, config.json): its folder
        if (path.parent / CONFIG_FILE).is_file():
            return path.parent
        raise CheckpointError(f"{path} is a file; give a checkpoint folder (the one holding {CONFIG_FILE})")
    if (path / CONFIG_FILE).is_file():
        return path
    for run_dir in [path] + sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        found = latest_checkpoint(run_dir)
        if found is not None:
            return found
    raise CheckpointError(f"{path} holds no complete checkpoint (expected {CONFIG_FILE} and {WEIGHTS_FILE})")


def weights_fingerprint(checkpoint: Path) -> str:
    """What tells two versions of the weights at one path apart without reading them: the training
    step and tokens they were saved at, and the weights file's size and modification time (a
    checkpoint is written whole and renamed into place, so any rewrite changes the time). A batch job
    resumed after its checkpoint was rewritten (a resumed training run's new `final`) is refused
    rather than mixing two models' results."""
    meta = read_meta(checkpoint)
    try:
        weights = (checkpoint / WEIGHTS_FILE).stat()
    except OSError as err:
        raise CheckpointError(f"checkpoint {checkpoint} has no readable {WEIGHTS_FILE} ({err})") from None
    return (
        f"step {meta.step}, {meta.tokens} tokens, {WEIGHTS_FILE} of {weights.st_size} bytes "
        f"modified {weights.st_mtime_ns}"
    )


EXPORTED_META_KEY = "gpthf"  # config.json entry of an exported folder holding our own config.json


def read_meta(checkpoint: Path) -> CheckpointMeta:
    """config.json, checked once for every reader (generation, evaluation, the lm-eval adapter, resume):
    a file edited or damaged into another shape is one error here, never a KeyError deep in a script."""
    try:
        raw = json.loads((checkpoint / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {checkpoint} has an unreadable {CONFIG_FILE} ({err})") from None
    if isinstance(raw, dict) and "format" not in raw and isinstance(raw.get(EXPORTED_META_KEY), dict):
        raw = raw[EXPORTED_META_KEY]  # a `python -m gpthf export` folder keeps the checkpoint's own here
    return parse_meta(raw, checkpoint)


def parse_meta(raw: dict, where: Path) -> CheckpointMeta:
    """A config.json's content, already read (from a checkpoint folder or stored elsewhere, such as an
    exported model's), checked as `read_meta` checks it; `where` is the folder the errors name."""
    if isinstance(raw, dict) and (
        raw.get("format") != CHECKPOINT_FORMAT or "arch" not in raw or "vocab_size" not in raw
    ):
        raise CheckpointError(
            f"{where / CONFIG_FILE} is not a gpthf checkpoint config (format {CHECKPOINT_FORMAT})"
        )
    problem = meta_problem(raw)
    if problem:
        raise CheckpointError(
            f"checkpoint {where}: {CONFIG_FILE} is damaged: {problem}; use another checkpoint"
        )
    return CheckpointMeta(**{f.name: raw[f.name] for f in fields(CheckpointMeta) if f.name in raw})


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    try:
        weights = load_file(str(checkpoint / WEIGHTS_FILE))
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        raise CheckpointError(
            f"checkpoint weights {checkpoint / WEIGHTS_FILE} are unreadable ({err})"
        ) from None
    expected = dict(model.named_parameters())
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    other_shape = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or other_shape:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit this model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}, other shapes {other_shape[:3]})"
        )
    check_finite(weights, checkpoint / WEIGHTS_FILE, "weights")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(weights[name])


def load_train_state(checkpoint: Path) -> dict:
    """The optimizer, data-order, progress and RNG state, read with `weights_only=True`: a crafted
    train_state.pt cannot run code on `resume=true` (only tensors, numbers, strings and containers load)."""
    import pickle

    try:
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"training state {checkpoint / STATE_FILE} holds objects other than tensors and numbers (written "
                f"by an older gpthf, or crafted) and is not loaded; start a new run, e.g. with init_from={checkpoint}"
            ) from None
        raise CheckpointError(f"training state {checkpoint / STATE_FILE} is unreadable ({err})") from None
    except Exception as err:  # zip errors of a damaged file
        raise CheckpointError(f"training state {checkpoint / STATE_FILE} is unreadable ({err})") from None
    check_finite(state, checkpoint / STATE_FILE, "training state")
    check_train_state(state, checkpoint / STATE_FILE)
    return state


def rng_state() -> dict:
    """Every generator's state as tensors, numbers and lists: loadable with `weights_only=True`."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """This process's generators as `rng_state` saved them (one rank's entry of train_state.pt's "rng")."""
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        _set_cuda_rng_states(state["cuda"])


def _set_cuda_rng_states(saved: list[torch.Tensor]) -> None:
    """Each GPU's generator as saved, for the GPUs this host shows: a run resumed where fewer are
    visible (CUDA_VISIBLE_DEVICES, a smaller machine) continues instead of failing on the missing ones."""
    count = torch.cuda.device_count()
    for index, generator_state in enumerate(saved[:count]):
        torch.cuda.set_rng_state(generator_state, index)
    if len(saved) != count:
        log.info(
            "the checkpoint holds the RNG states of %d GPU(s), this host shows %d: restored %d",
            len(saved),
            count,
            min(len(saved), count),
        )


def load_checkpoint_tokenizer(checkpoint: Path, meta: CheckpointMeta):
    """The checkpoint's own tokenizer, refused when its vocabulary is not the model's."""
    from gpthf.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    if tokenizer.get_vocab_size() != meta.vocab_size:
        raise CheckpointError(
            f"{checkpoint} holds a tokenizer of {tokenizer.get_vocab_size()} tokens for a model of "
            f"{meta.vocab_size}: its tokenizer.json comes from another run"
        )
    return tokenizer


def check_shapes_before_allocating(meta: CheckpointMeta, checkpoint: Path) -> None:
    """Compare the model config.json describes with the tensors model.safetensors holds, reading only
    the weights file's header and building the model on the meta device: a config.json edited to
    huge sizes is refused before any memory is allocated."""
    from safetensors import safe_open

    from gpthf.models import build_model

    try:
        with torch.device("meta"):
            model = build_model(meta.arch, meta.vocab_size)
            expected = {k: tuple(p.shape) for k, p in model.named_parameters()}  # as `_weights` saves them
    except Exception as err:  # an arch the model code cannot build: sizes of the wrong kind or sign
        raise CheckpointError(f"{checkpoint / CONFIG_FILE} describes no buildable model ({err})") from None
    try:
        with safe_open(str(checkpoint / WEIGHTS_FILE), framework="pt") as weights:
            stored = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
    except Exception as err:  # safetensors raises its own types for a damaged header
        raise CheckpointError(
            f"checkpoint weights {checkpoint / WEIGHTS_FILE} are unreadable ({err})"
        ) from None
    if expected != stored:
        n_expected, n_stored = (sum(math.prod(s) for s in d.values()) for d in (expected, stored))
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit this model: its {CONFIG_FILE} describes {n_expected:,} "
            f"parameters, its {WEIGHTS_FILE} holds {n_stored:,} in other shapes (the files do not belong together)"
        )
