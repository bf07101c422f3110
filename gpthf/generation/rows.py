"""Row surgery on any strategy's state: copy rows out of it, view a range of them, or write another
state's rows into it.

Continuous batching needs the last two: a finished row's slot takes the next prompt, whose state
rows are viewed in the prefill of many waiting prompts (`row_range`) and copied once into the batch
(`put_rows`); a throughput benchmark at a fixed memory budget fills thousands of rows
from one prefill (`take_rows`). Every state is a tree of dataclasses, lists, tuples and tensors whose
batch axis is 0, unless the object says otherwise (`batch_dim`, as the LSTM's (layers, B, hidden)).
Buffers that differ in another axis (a cache's capacity, a token buffer) are grown to the larger
size: what lies beyond a row's length is never read, so stale entries there are harmless.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch

State = TypeVar("State")


def _walk(target: Any, source: Any, leaf, batch_dim: int = 0) -> Any:
    if isinstance(target, torch.Tensor):
        return leaf(target, source, batch_dim)
    if isinstance(target, list | tuple):
        parts = [_walk(t, s, leaf, batch_dim) for t, s in zip(target, source)]
        return type(target)(parts)
    if target is None or isinstance(target, int | float | str | bool):
        return target
    node = copy.copy(target)
    dim = getattr(target, "batch_dim", batch_dim)
    for name, value in vars(target).items():
        setattr(node, name, _walk(value, getattr(source, name), leaf, dim))
    return node


def has_static_address(tensor: torch.Tensor) -> bool:
    """Marked by `torch._dynamo.mark_static_address` (gpthf.generation.compiled); the mark read as
    `torch._dynamo.utils.get_static_address_type` reads it, without importing the compiler."""
    return getattr(tensor, "_dynamo_static_input_type", None) is not None


def leaves(state: Any) -> list[torch.Tensor]:
    """Every tensor of a state, in a fixed order."""
    found: list[torch.Tensor] = []
    _walk(state, state, lambda tensor, _, __: found.append(tensor))
    return found


def move_into(state: Any, buffers: Any) -> None:
    """`state`'s values copied into the tensors of `buffers` (a state of the same layout), and
    `state` made to hold those tensors instead of its own, in place: whoever holds `state` now
    decodes in `buffers`' memory."""

    def moved(value: Any, kept: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return kept.copy_(value)
        if isinstance(value, list):
            value[:] = [moved(v, k) for v, k in zip(value, kept)]
            return value
        if isinstance(value, tuple):
            return tuple(moved(v, k) for v, k in zip(value, kept))
        if value is None or isinstance(value, int | float | str | bool):
            return value
        for name, field in vars(value).items():
            setattr(value, name, moved(field, getattr(kept, name)))
        return value

    moved(state, buffers)


def take_rows(state: State, index: torch.Tensor) -> State:
    """A new state holding rows `index` of `state` (repeats allowed): `state` is left as it was."""

    def leaf(tensor: torch.Tensor, _, dim: int) -> torch.Tensor:
        return tensor.index_select(dim, index.to(tensor.device))

    return _walk(state, state, leaf)


def row_range(state: State, start: int, stop: int) -> State:
    """Rows `start:stop` of `state` as views: nothing is copied until they are written elsewhere."""

    def leaf(tensor: torch.Tensor, _, dim: int) -> torch.Tensor:
        return tensor.narrow(dim, start, stop - start)

    return _walk(state, state, leaf)


def put_rows(state: State, index: torch.Tensor, source: State) -> State:
    """`state` with rows `index` replaced by the rows of `source` (len(index) rows, same strategy).

    Returns the updated state; buffers of `state` are written in place where they are large enough.
    """

    def leaf(tensor: torch.Tensor, other: torch.Tensor, dim: int) -> torch.Tensor:
        shape = [
            a if axis == dim else max(a, b) for axis, (a, b) in enumerate(zip(tensor.shape, other.shape))
        ]
        if list(tensor.shape) != shape:
            if has_static_address(tensor):
                raise RuntimeError(
                    f"cannot grow a static buffer {tuple(tensor.shape)} to {tuple(shape)}: a compiled "
                    "step holds its address (its state's capacity is fixed at the horizon)"
                )
            grown = tensor.new_zeros(shape)
            grown[tuple(slice(0, n) for n in tensor.shape)] = tensor
            tensor = grown
        region = tuple(
            index.to(tensor.device) if axis == dim else slice(0, n) for axis, n in enumerate(other.shape)
        )
        tensor[region] = other.to(tensor.dtype)
        return tensor

    return _walk(state, source, leaf)
