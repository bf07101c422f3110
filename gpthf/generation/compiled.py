"""`--compile`: the per-token decode step as one compiled graph, gpt-fast's recipe on our strategies.

A compiled step needs the same shapes at every step. The eager cached strategies attend over each
row's filled window, which grows by one entry a step; here the caches are allocated once, at the
largest size this generation can reach (`Horizon`), and every step attends over the whole buffer
with the entries beyond a row's length masked out, which gives exactly the same result (a masked key
has weight zero) at the price of reading the unfilled part. With no Python-visible sizes left in the
step, `torch.compile` traces it once per batch size (on CUDA with CUDA graphs, `reduce-overhead`; on
CPU with the weights frozen into the graph, which is only right because inference never changes them).

A CUDA graph replays fixed addresses, and CUDA graph trees skip a graph that writes an input they
cannot trust to stay put ("skipping cudagraphs due to mutated inputs"). So, as gpt-fast does with
its cache buffers, every tensor of the batch's state is marked with
`torch._dynamo.mark_static_address` once its capacity is fixed, the step writes those tensors only in
place (the strategies never rebind a state's tensor), nothing grows on this path (`KVCache.reserve`
and `put_rows` refuse), and the logits are cloned out of the graph's memory before the next replay
overwrites it. The buffers of one generation's state are kept and handed to the next generation's
state of the same layout (`give_static_buffers`), so a graph recorded once replays for every later
call instead of being recorded again over new addresses; cost: the last such state stays allocated.
On CPU (no CUDA graphs, weights frozen) nothing is marked: freezing would bake marked tensors in.

Models whose state never grows (linear attention, LSTM, Block-Recurrent) compile their step as is:
the LSTM's written as its equations (`recurrent.lstm_step`), Block-Recurrent's as two graphs, with
and without a block's end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import weakref
from dataclasses import dataclass

import torch

from gpthf.errors import ConfigError
from gpthf.generation.rows import has_static_address, leaves, move_into

BACKEND = "inductor"  # what torch.compile builds the step with; tests trace it with "aot_eager"


@dataclass(frozen=True)
class Horizon:
    """The most a generation can need: what the static caches are sized for."""

    tokens: int  # longest prompt + new tokens: a GPT's KV entries
    sentence_tokens: int  # tokens of a sentence in progress: GPTHF's encoder entries
    sentences: int  # finished sentences: GPTHF's body entries


def check_compiler(device: torch.device) -> None:
    """One error naming the fix when `torch.compile` cannot build kernels on `device`."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError("--compile on CUDA needs triton (pip install triton); or leave out --compile")
        return
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise ConfigError(
            f"--compile on CPU needs a C++ compiler ({compiler} not found: apt-get install g++, or set CXX); "
            "or leave out --compile"
        )


RECOMPILE_LIMIT = 64
_COMPILED: dict[tuple[type, str, str], object] = {}  # one step per strategy class, device type, backend
# Per strategy class: (the compiled strategy decoding in it, the last state given static buffers).
_KEPT: dict[type, tuple[weakref.ref, object]] = {}
_WEIGHTS_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> weights_state


def weights_state(model: torch.nn.Module) -> tuple:
    """Changes when a weight of `model` is written in place (the sum of versions; None for weights
    made in inference mode, which keep none and cannot be written) or replaced (`.to()`, new
    storage): when copies made of them (frozen into a compiled step, packed) are stale."""
    try:
        version = sum(p._version for p in model.parameters())
    except RuntimeError:
        version = None
    return version, tuple(p.data_ptr() for p in model.parameters())


def forget_stale_compilations(model: torch.nn.Module) -> None:
    """A CPU step compiled with frozen weights holds copies of them, and its guards cannot see a
    change in place (a training step, `load_state_dict`): after one, everything compiled is dropped
    and compiled again, instead of decoding with the old weights."""
    state = weights_state(model)
    seen = _WEIGHTS_SEEN.get(model)
    if seen is not None and state != seen:
        torch._dynamo.reset()
    _WEIGHTS_SEEN[model] = state


def uses_cudagraphs(device: torch.device) -> bool:
    return device.type == "cuda" and BACKEND == "inductor"


def compiled_step(strategy_class: type, device: torch.device):
    """`strategy_class.decode` compiled once per process: a new generation reuses its kernels."""
    key = (strategy_class, device.type, BACKEND)
    if key not in _COMPILED:
        # Every (batch, cache size) is its own graph; past dynamo's default of 8 it would silently
        # fall back to eager, which a benchmark over a grid of shapes reaches.
        config = torch._dynamo.config
        config.recompile_limit = max(getattr(config, "recompile_limit", 8), RECOMPILE_LIMIT)
        mode = "reduce-overhead" if uses_cudagraphs(device) else None
        _COMPILED[key] = torch.compile(strategy_class.decode, dynamic=False, mode=mode, backend=BACKEND)
    return _COMPILED[key]


def _layout(state) -> tuple:
    return type(state), [(t.shape, t.dtype, t.device) for t in leaves(state)]


def give_static_buffers(owner: CompiledStrategy, state) -> None:
    """Make every tensor of `state` one at a fixed address. A state already in them (the batch's,
    refilled) stays as it is. Otherwise it moves into the buffers of the last state of its layout,
    if the generation that used them is over (its strategy object is gone), so the addresses a
    recorded CUDA graph replays stay the same; failing that its own tensors are marked (unguarded:
    a new address costs a new recording, not a recompilation) and kept for the next generation."""
    tensors = leaves(state)
    if all(has_static_address(t) for t in tensors):
        return
    key = type(owner.inner)
    kept = _KEPT.get(key)
    if kept is not None and kept[0]() is None and _layout(kept[1]) == _layout(state):
        move_into(state, kept[1])
    else:
        for tensor in tensors:
            torch._dynamo.mark_static_address(tensor, guard=False)
        _KEPT[key] = (weakref.ref(owner), state)
        return
    _KEPT[key] = (weakref.ref(owner), kept[1])


class CompiledStrategy:
    """Wraps a cached strategy: its prefill as is (then the caches grown to the horizon), its decode
    compiled over static shapes."""

    def __init__(self, inner, horizon: Horizon, device: torch.device):
        if BACKEND == "inductor":
            check_compiler(device)
        self.inner = inner
        self.horizon = horizon
        self.step = compiled_step(type(inner), device)  # unbound: called with the inner strategy
        self.freeze = device.type == "cpu" and BACKEND == "inductor"
        self.cudagraphs = uses_cudagraphs(device)
        # Under freezing, dynamo would bake tensors marked static into the graph as constants: the
        # marks are for CUDA graphs (and for tests tracing with another backend).
        self.static_addresses = not self.freeze
        self.prefills_without_padding = getattr(inner, "prefills_without_padding", False)
        self.checked = None  # the last state decoded: its tensors are at static addresses

    def prefill(self, model, tokens: torch.Tensor, lengths: torch.Tensor):
        forget_stale_compilations(model)
        logits, state = self.inner.prefill(model, tokens, lengths)
        fix_capacity = getattr(state, "fix_capacity", None)
        if fix_capacity is not None:
            fix_capacity(self.horizon)
        return logits, state

    def decode(self, model, state, token: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        if self.static_addresses and state is not self.checked:  # a new state, or the batch's refilled
            give_static_buffers(self, state)
            self.checked = state
        # On CPU the weights are frozen into the graph (constants). `generate` hands the step the
        # linears packed by gpthf.generation.packed (oneDNN's packed kernels), frozen as they are;
        # a linear left plain is packed by inductor itself, which for fp32 picks MKL's packed
        # GEMM: on an AMD EPYC that ran a batch-8 product 2.4x slower than oneDNN's (29 vs 12 ms
        # over 24 768x2048 weights) and a compiled fp32 small step 60 ms against 26 with ours.
        # Compilation happens at a call (the first, and each new shape), so every call runs under
        # the setting; `options=` given to torch.compile did not reach the freezing pass.
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be overwritten
        # allow_rnn: the LSTM's compiled step reads nn.LSTM's weights (recurrent.lstm_step), never
        # calls it, but dynamo refuses to look at an RNN module at all without it.
        with torch._inductor.config.patch(freezing=self.freeze), torch._dynamo.config.patch(allow_rnn=True):
            logits = self.step(self.inner, model, state, token, active)
        return logits.clone() if self.cudagraphs else logits  # out of the graph's memory
