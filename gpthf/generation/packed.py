"""Linear weights packed for the CPU's matrix kernels while a batch decodes.

A decode step multiplies a few rows (the batch) by every weight matrix of the model. oneDNN, the
kernel library behind torch's CPU matmuls, multiplies fastest from a blocked weight layout of its
own, chosen for the number of rows; handed torch's plain (out, in) weight it rearranges it on every
call. `packed_linears(model, rows)` rearranges each weight once for `rows` and multiplies from that
copy whenever a call has at least `rows` rows: every decode step, and the prefills and refills of
the same generation (measured on this project's CPU: a weight packed for a few rows multiplies a
68-row prompt ~30 % faster than the plain path, and equally well for any row count above it).
Fewer rows, or training (grad enabled), take the plain path. Only shapes where packing measurably wins are packed
(`_pack_if_it_wins`). eval/formats.py measures what it gives against the plain path.

Cost: a second copy of the weights, packed (the tied head's too), made in ~0.1 s for 88M weights,
plus a one-time measurement per shape. The copy is kept with the model for its last row count and
reused by the next block while the weights are unchanged: repeated generations (a batch job, an
evaluation harness) pack once, and a compiled step, which guards on the very modules it traced,
compiles once. The model is handed back unchanged after every block. Results differ from the
plain path only in rounding (the kernels sum in another order). Off the CPU, or without oneDNN's
packed ops, it does nothing.
"""

from __future__ import annotations

import functools
import weakref
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpthf.generation.compiled import weights_state
from gpthf.measure.timing import best_seconds

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def can_pack(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype in PACKABLE_DTYPES and _cpu_packs(weight.dtype)


@functools.cache
def _cpu_packs(dtype: torch.dtype) -> bool:
    """Whether this torch and this CPU pack `dtype` weights: oneDNN's bf16 packing needs AVX-512
    (bw, vl, dq) or AVX-NE-CONVERT and refuses on a plain AVX2 CPU, so it is tried once on a tiny weight."""
    if not (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 1)
    except (RuntimeError, TypeError):
        return False
    return True


class PackedLinear(nn.Module):
    """Stands in for an `nn.Linear` (same parameters, same state-dict names) and multiplies calls
    of at least `rows` rows from a packed copy of its weight (where `can_pack`; otherwise it is the plain one)."""

    def __init__(self, linear: nn.Linear, rows: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.rows = rows
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows) if can_pack(weight) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.packed is not None
            and x.numel() >= self.rows * self.in_features
            and not torch.is_grad_enabled()
        ):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


PROBE_ROUNDS = 3  # timed passes each way, best kept
WIN_MARGIN = 0.95  # packed must take at most this share of the plain path's time to be used
_DECISIONS: dict[tuple, bool] = {}  # (in, out, dtype, rows, threads) -> packing won when measured


def _pack_if_it_wins(linears: list[nn.Linear], rows: int) -> list[PackedLinear] | None:
    """Packed stand-ins for these same-shape linears, or None where the plain path is as fast.

    Which path wins depends on the machine, the format, the shape and the rows (on this project's
    CPU: packed bf16 wins everywhere, packed fp32 loses at 1-2 rows and on weights that stay in
    cache), so it is measured once per process over the model's own weights of that shape: a pass
    of `rows`-row products through all of them each way, the best of `PROBE_ROUNDS`.
    """
    first = linears[0]
    key = (first.in_features, first.out_features, first.weight.dtype, rows, torch.get_num_threads())
    if _DECISIONS.get(key) is False:
        return None
    try:  # private ops of torch: should a version change them, the plain path stays
        packed = [PackedLinear(linear, rows) for linear in linears]
        if key not in _DECISIONS:
            x = torch.randn(rows, first.in_features).to(first.weight.dtype)
            with torch.no_grad():
                plain_s = best_seconds(
                    lambda: [F.linear(x, linear.weight, linear.bias) for linear in linears], PROBE_ROUNDS
                )
                packed_s = best_seconds(lambda: [stand_in(x) for stand_in in packed], PROBE_ROUNDS)
            _DECISIONS[key] = packed_s <= WIN_MARGIN * plain_s
    except (RuntimeError, TypeError):
        _DECISIONS[key] = False
    return packed if _DECISIONS[key] else None


Places = list[tuple[str, str, nn.Module]]  # (parent's path in the model, attribute, stand-in)
# model -> (rows, weights_state, Places). Places name their parents by path: holding the modules
# themselves would hold the model (the head's parent) and keep it alive through its own weak key.
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stand_ins(model: nn.Module, rows: int) -> Places:
    """Where packed stand-ins go in `model` for `rows`-row calls: the kept ones while the weights
    are unchanged, else made again (and kept in their place)."""
    state = weights_state(model)
    kept = _KEPT.get(model)
    if kept is not None and kept[:2] == (rows, state):
        return kept[2]
    _KEPT.pop(model, None)  # the old copy goes before the new one is made
    groups: dict[tuple, list[tuple[str, str, nn.Linear]]] = defaultdict(list)
    for path, parent in model.named_modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and can_pack(child.weight):
                groups[child.in_features, child.out_features, child.weight.dtype].append((path, name, child))
    places: Places = []
    for group in groups.values():
        stand_ins = _pack_if_it_wins([child for _, _, child in group], rows)
        places += [(path, name, stand_in) for (path, name, _), stand_in in zip(group, stand_ins or [])]
    _KEPT[model] = (rows, state, places)
    return places


@contextmanager
def packed_linears(model: nn.Module, rows: int, enabled: bool = True) -> Iterator[int]:
    """Within the block, the packable `nn.Linear`s of `model` whose shape multiplies `rows`-row
    inputs faster packed do so; yields how many were packed (0 where packing does not apply)."""
    places = _stand_ins(model, rows) if enabled and rows >= 1 else []
    swapped = []
    try:
        for path, name, stand_in in places:
            parent = model.get_submodule(path)
            swapped.append((parent, name, getattr(parent, name)))
            setattr(parent, name, stand_in)
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
