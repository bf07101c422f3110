"""The compiled decode step (gpthf.generation.compiled) as a CUDA graph needs it: traced whole, once
per batch size, over state tensors at static addresses that the step writes in place only.

Traced as backend="aot_eager" traces (dynamo and AOT autograd, no code generation): what dynamo
and AOT autograd see is what inductor gets, in seconds and without a compiler. The CUDA graphs
themselves are checked in tests/cuda/test_cuda_generation.py.
"""

from __future__ import annotations

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.utils import counters, get_static_address_type
from torch._functorch.aot_autograd import aot_module_simplified

from gpthf.data.special_tokens import EOS_ID
from gpthf.generation import GenerationSettings, SamplingSettings, compiled, generate
from gpthf.generation.cache import KVCache
from gpthf.generation.generate import horizon
from gpthf.generation.rows import leaves, put_rows
from gpthf.generation.strategies import get_strategy, pad_rows
from tests.generation.test_equivalence import mixed_prompts
from tests.models.helpers import tiny_model

GREEDY = SamplingSettings(temperature=0)
SETTINGS = GenerationSettings(max_new_tokens=20, max_sentence_len=8, sampling=GREEDY)
# Block-Recurrent's step has two graphs: with and without a block's end (the recurrent state update
# costs a layer over its state vectors, so it runs only where a row ends a block).
GRAPHS_PER_BATCH = {"gpthf": 1, "gpt": 1, "linear": 1, "lstm": 1, "block_recurrent": 2}


class WrittenInputs:
    """An aot_eager backend that records, for every graph it compiles, the inputs the graph writes
    and that are not static inputs: CUDA graph trees skip such a graph ("skipping cudagraphs due to
    mutated inputs"), as they cannot trust those inputs to stay at their address. And how many
    inputs are not static: those a CUDA graph copies into its own memory at every replay."""

    def __init__(self) -> None:
        self.unstatic: list[set[int]] = []  # one per compiled graph
        self.copied: list[int] = []

    def __call__(self, graph, example_inputs):
        def forward(traced, inputs):
            meta = torch._guards.TracingContext.get().fw_metadata
            written = {
                i for i, info in enumerate(meta.input_info) if info.mutates_data or info.mutates_metadata
            }
            self.unstatic.append(written - set(meta.static_input_indices))
            self.copied.append(len(inputs) - len(meta.static_input_indices))
            return make_boxed_func(traced.forward)

        return aot_module_simplified(graph, example_inputs, fw_compiler=forward)


@pytest.fixture
def aot_eager(monkeypatch) -> WrittenInputs:
    """Compiled steps traced as aot_eager, from a clean dynamo cache and clean counters."""
    backend = WrittenInputs()
    monkeypatch.setattr(compiled, "BACKEND", backend)
    torch._dynamo.reset()
    counters.clear()
    yield backend
    torch._dynamo.reset()


# The two kinds with growing caches in the default run; the fixed-state kinds (tens of seconds of
# tracing on 2 cores) with `-m slow`. Their in-place writes are checked by the test after this one.
SLOW_TO_TRACE = ("linear", "lstm", "block_recurrent")


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_TO_TRACE else k for k in GRAPHS_PER_BATCH]
)
def test_compiled_step_is_one_graph_compiled_once_per_batch_size(kind, aot_eager):
    """No graph break (a break, or dynamo giving up on the step, leaves more graphs or falls back to
    eager), no recompilation over many steps, refills of continuous batching included, and no
    graph that writes an input not marked static."""
    model = tiny_model(kind, seed=3)
    prompts = mixed_prompts(5)
    eager = generate(model, prompts, SETTINGS, slots=2)
    assert sum(len(tokens) for tokens in eager.tokens) == 100, "many steps, with refills"
    first = generate(model, prompts, SETTINGS, slots=2, compile=True)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == GRAPHS_PER_BATCH[kind]
    again = generate(model, prompts, SETTINGS, slots=2, compile=True)
    wider = generate(model, prompts, SETTINGS, slots=3, compile=True)
    assert counters["stats"]["unique_graphs"] == 2 * GRAPHS_PER_BATCH[kind], "one more per batch size"
    assert dict(counters["graph_break"]) == {}
    assert first.tokens == again.tokens == wider.tokens == eager.tokens
    assert len(aot_eager.unstatic) == 2 * GRAPHS_PER_BATCH[kind]
    assert all(unstatic == set() for unstatic in aot_eager.unstatic)
    assert aot_eager.copied == [2] * len(aot_eager.copied), "the token and the active rows alone"


def decode_steps(runner, model, state, steps: int) -> None:
    """Teacher-forced steps of 3 rows, each closing a sentence first: within the horizon of SETTINGS."""
    active = torch.ones(3, dtype=torch.bool)
    with torch.inference_mode():
        for step in range(steps):
            runner.decode(model, state, torch.full((3,), EOS_ID if step % 4 == 0 else 7), active)


def decoded_state(kind: str):
    """A compiled strategy after a prefill and a few decode steps, and its state."""
    model = tiny_model(kind, seed=3)
    prompts = mixed_prompts(3)
    runner = get_strategy(model, "cached", compile_for=horizon(prompts, SETTINGS))
    with torch.inference_mode():
        _, state = runner.prefill(model, *pad_rows(prompts))
    decode_steps(runner, model, state, 3)
    return runner, state, model


@pytest.mark.parametrize("kind", GRAPHS_PER_BATCH)
def test_every_state_tensor_is_static_and_written_in_place(kind, aot_eager):
    """What CUDA graph trees need to replay a step that writes its inputs: every tensor it writes
    marked static, and the same tensors (same objects, same memory) step after step."""
    runner, state, model = decoded_state(kind)
    tensors = leaves(state)
    assert tensors and all(get_static_address_type(t) == "unguarded" for t in tensors)
    before = [(id(t), t.data_ptr()) for t in tensors]
    decode_steps(runner, model, state, 10)  # crosses a block's end (8 tokens) for block_recurrent
    assert [(id(t), t.data_ptr()) for t in leaves(state)] == before
    assert dict(counters["graph_break"]) == {}, "a step called on its own, not told what the host knows"


def test_the_next_generation_decodes_in_the_same_buffers(aot_eager):
    """A recorded CUDA graph replays fixed addresses: a later generation of the same shapes moves
    into the buffers of the last one once that one is over, never while it still decodes."""
    runner, state, _ = decoded_state("gpthf")
    first = {t.data_ptr() for t in leaves(state)}
    _, other, _ = decoded_state("gpthf")  # the first still decodes: buffers of its own
    kept = [t.data_ptr() for t in leaves(other)]
    assert not first & set(kept)
    del other, runner, state
    _, later, _ = decoded_state("gpthf")  # every earlier generation is over
    assert [t.data_ptr() for t in leaves(later)] == kept


def test_static_buffers_never_grow():
    cache = KVCache(1, 2, 1, 4, 3, "cpu", torch.float32)
    cache.fix_capacity(5)
    assert cache.capacity == 5 and cache.next_window() == 5
    with pytest.raises(RuntimeError, match="cannot grow to 9"):
        cache.reserve(9)
    torch._dynamo.mark_static_address(cache.k[0], guard=False)
    bigger = KVCache(1, 1, 1, 4, 8, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="cannot grow a static buffer"):
        put_rows(cache, torch.tensor([0]), bigger)


def test_a_fixed_capacity_is_exact():
    """A prefill sized for a longer prompt (more headroom) fits the batch's buffers once fixed."""
    cache = KVCache(1, 1, 1, 4, 70, "cpu", torch.float32)
    cache.fix_capacity(40)
    assert cache.capacity == 40 and cache.k[0].shape[2] == 40
