"""What a checkpoint must hold to be loaded, checked once on load: its config.json (types and ranges
of what loaders read from it), finite weights, and a training state whose structure and numbers a
resumed run can use. A damaged file is one error naming the entry, never a traceback or a NaN loss
much later, and never "the last good checkpoint"."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import torch

from gpthf.errors import CheckpointError


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _whole_number_problem(key: str, value, valid) -> str | None:
    """Why `value` is no whole number within `valid` (a config Range), or None."""
    if type(value) is not int:
        return f"{key}={json.dumps(value)} is not a whole number"
    if not valid.contains(value):
        above = valid.too_high and valid.high is not None and value > valid.high
        why = f"; {valid.too_high(value)}" if above else ""
        return f"{key}={value}, out of the range training allows ({valid.describe(key)}{why})"
    return None


def meta_problem(meta) -> str | None:
    """What is wrong with config.json's shape, or None. The ranges are the training config's own
    (`NUMBER_RANGES`): the tokens per row (what evaluation packs rows of and generation allows a GPT as
    context) are refused before rows of a huge length are built."""
    from gpthf.config import NUMBER_RANGES, Range
    from gpthf.generation import ContextLimit

    if not isinstance(meta, dict):
        return f"it holds {_json_type(meta)}, not an object"
    if not isinstance(meta["arch"], dict):
        return f"arch is {_json_type(meta['arch'])}, not an object"
    data = meta.get("data")
    if not isinstance(data, dict):
        return "data is missing" if data is None else f"data is {_json_type(data)}, not an object"
    for key in ("language", "seq_len", "max_sentence_len"):
        if key not in data:
            return f"data.{key} is missing"
    if not isinstance(data["language"], str) or not data["language"]:
        return f'data.language={json.dumps(data["language"])} is not a language name (e.g. "english")'
    for key in ("seq_len", "max_sentence_len"):
        problem = _whole_number_problem(f"data.{key}", data[key], NUMBER_RANGES[f"data.{key}"])
        if problem:
            return problem
    if data["max_sentence_len"] > data["seq_len"]:
        return f"data.max_sentence_len={data['max_sentence_len']} is above data.seq_len={data['seq_len']}"
    context = meta.get("context", {})
    if not isinstance(context, dict):
        return f"context is {_json_type(context)}, not an object"
    valid_keys = [f.name for f in fields(ContextLimit)]
    unknown = sorted(set(context) - set(valid_keys))
    if unknown:
        return f"context has unknown key(s) {', '.join(unknown)} (valid: {', '.join(valid_keys)})"
    ranges = {  # a row holds at most one sentence per token
        "tokens": NUMBER_RANGES["data.seq_len"], "sentences": Range(1, data["seq_len"]),
    }  # fmt: skip
    for key, value in context.items():
        problem = _whole_number_problem(f"context.{key}", value, ranges[key])
        if problem:
            return problem
    return None


def _leaves(state, kind: type, key: str = "") -> Iterator[tuple[str, object]]:
    """Every value of type `kind` (tensors, plain floats) in nested dicts, lists and tuples, with its
    key path ("optimizer.state.3.exp_avg_sq")."""
    if isinstance(state, kind):
        yield key, state
    elif isinstance(state, dict):
        for name, value in state.items():
            yield from _leaves(value, kind, f"{key}.{name}" if key else str(name))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _leaves(value, kind, f"{key}.{i}" if key else str(i))


# How check_finite names what it refuses, by what the file holds.
_DAMAGED = {
    "weights": "checkpoint weights {} are damaged: tensor",
    "training state": "training state {} is damaged: entry",
}


def check_finite(state, file: Path, holds: str) -> None:
    """Refuse a checkpoint file (model.safetensors, train_state.pt) whose floating tensors, anywhere
    in `state`, hold NaN or inf. Training never saves them (a non-finite loss stops it without
    saving), so they mean a damaged file; loaded, weights would decode nothing or fail deep in
    sampling, and a resumed run would train on from them (or from a NaN optimizer moment) into NaN.
    One pass over each tensor, at load."""
    for name, tensor in _leaves(state, torch.Tensor):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            raise CheckpointError(
                f"{_DAMAGED[holds].format(file)} {name!r} holds {nan:,} NaN and {inf:,} infinite values; "
                f"use another checkpoint (to resume the run from an earlier one, delete {file.parent})"
            )


def _train_state_problem(state) -> str | None:
    """What is wrong with train_state.pt's structure or numbers, or None: every entry resume reads,
    of the type and in the range the run that saved it could have written."""
    from gpthf.config import NUMBER_RANGES, Range

    def number(key: str, value, valid: Range, whole: bool) -> str | None:
        kinds = (int,) if whole else (int, float)
        if type(value) not in kinds:
            return f"entry {key!r} is {value!r}, not a {'whole ' if whole else ''}number"
        if not valid.contains(value):
            return f"entry {key!r} is {value!r}, outside {valid.describe(key)}"
        return None

    def entries(key: str, value, names: tuple[str, ...]) -> str | None:
        if not isinstance(value, dict):
            return f"entry {key!r} is missing" if value is None else f"entry {key!r} is not a dict"
        missing, unknown = [n for n in names if n not in value], sorted(set(value) - set(names), key=str)
        if missing:
            return f"entry {key!r} lacks {', '.join(missing)}"
        return f"entry {key!r} has unknown entries {unknown}" if unknown else None

    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    for key, value in _leaves(state, float):
        if not math.isfinite(value):
            return f"entry {key!r} is {value}"
    progress, order = state.get("progress"), state.get("data_order")
    problem = entries("progress", progress, ("step", "tokens", "elapsed_s")) or entries(
        "data_order", order, ("epoch", "offset", "n_rows", "seed")
    )
    if problem:
        return problem
    checks = [
        ("progress.step", progress["step"], Range(0), True),
        ("progress.tokens", progress["tokens"], Range(0), True),
        ("progress.elapsed_s", progress["elapsed_s"], Range(0), False),
        ("data_order.n_rows", order["n_rows"], Range(1), True),
        ("data_order.epoch", order["epoch"], Range(0), True),
        ("data_order.seed", order["seed"], NUMBER_RANGES["train.seed"], True),
    ]
    if type(order["n_rows"]) is int:  # a position inside the data set
        checks.append(("data_order.offset", order["offset"], Range(0, order["n_rows"], high_open=True), True))
    if "optimizer" not in state:
        return "entry 'optimizer' is missing"
    optimizer = state["optimizer"]
    if optimizer is not None:  # None: DeepSpeed keeps it in the checkpoint's deepspeed/ folder
        groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            return "entry 'optimizer.param_groups' is missing or not a list of dicts"
        for i, group in enumerate(groups):
            key = f"optimizer.param_groups.{i}"
            betas = group.get("betas")
            if not isinstance(betas, (list, tuple)) or len(betas) != 2:
                return f"entry '{key}.betas' is {betas!r}, not a pair of numbers"
            checks += [
                (f"{key}.lr", group.get("lr"), Range(0, 1), False),  # the schedule's, at most train.lr
                (f"{key}.eps", group.get("eps"), Range(0, low_open=True), False),
                (
                    f"{key}.weight_decay",
                    group.get("weight_decay"),
                    NUMBER_RANGES["train.weight_decay"],
                    False,
                ),
                *[
                    (f"{key}.betas.{j}", beta, NUMBER_RANGES["train.beta1"], False)
                    for j, beta in enumerate(betas)
                ],
            ]
    rng = state.get("rng")
    if (
        not isinstance(rng, list)
        or not rng
        or not all(isinstance(r, dict) and {"torch", "python", "numpy"} <= set(r) for r in rng)
    ):
        return "entry 'rng' is missing or not a list of generator states"
    for key, value, valid, whole in checks:
        problem = number(key, value, valid, whole)
        if problem:
            return problem
    return None


def check_train_state(state, file: Path) -> None:
    """Refuse a train_state.pt whose entries are missing, of another type or out of range (a negative
    step, a NaN epsilon, a data position past the data set): resumed, they would be a traceback, a NaN
    run, or a data order that never ends. One walk over the plain values, beside `check_finite`'s
    over the tensors."""
    problem = _train_state_problem(state)
    if problem:
        raise CheckpointError(
            f"training state {file} is damaged: {problem}; use another checkpoint (to resume the run from "
            f"an earlier one, delete {file.parent})"
        )
