"""Generation on a CUDA GPU: every model kind continues prompts as on the CPU, the compiled step
runs as CUDA graphs (none skipped, none recorded again for a later generation) with eager's tokens
in bf16, and a decode step makes the host wait for the GPU at most once."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from gpthf.generation import GenerationSettings, SamplingSettings, generate
from tests.generation.test_equivalence import mixed_prompts
from tests.models.helpers import tiny_model, trained_tiny_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda", 0)
KINDS = ["gpthf", "gpt", "linear", "t2r", "lstm", "block_recurrent"]
GREEDY = SamplingSettings(temperature=0)
# Graphs of one batch size's compiled step (Block-Recurrent's: with and without a block's end).
GRAPHS = {"gpthf": 1, "gpt": 1, "linear": 1, "lstm": 1, "block_recurrent": 2}


def assert_same_greedy_tokens(reference, other, tie: float) -> None:
    """Both generations chose the same tokens, but where the reference's two best logits lie within
    `tie` of each other: there either device's rounding may pick either, and the row is compared up
    to that step only. Rows start together (no refills), so step i holds every row's i-th token."""
    compared = 0
    for row, (want, got) in enumerate(zip(reference.tokens, other.tokens)):
        for step, (a, b) in enumerate(zip(want, got)):
            if a != b:
                best = reference.step_logits[step][row].topk(2).values
                assert best[0] - best[1] <= tie, f"row {row} differs at step {step} without a tie"
                break
            compared += 1
        else:
            assert len(want) == len(got), f"row {row} stops at another step"
    assert compared >= len(reference.tokens) * 10, "too few tokens compared to mean anything"


@pytest.fixture
def fp32_matmuls(monkeypatch):
    """Full fp32 products: TF32 (which a training run may switch on) rounds to 10 bits; cuDNN's
    setting covers the LSTM."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_generates_on_cuda_as_on_the_cpu(kind, fp32_matmuls):
    model = tiny_model(kind, seed=3)
    settings = GenerationSettings(max_new_tokens=30, max_sentence_len=8, sampling=GREEDY, record_logits=True)
    on_cpu = generate(model, mixed_prompts(5), settings)
    on_cuda = generate(model.to(CUDA), mixed_prompts(5), settings)
    assert_same_greedy_tokens(on_cpu, on_cuda, tie=1e-3)


@pytest.mark.parametrize("kind", GRAPHS)
def test_compiled_decode_runs_as_cuda_graphs_with_eager_tokens_in_bf16(kind):
    model = trained_tiny_model(kind).to(CUDA, torch.bfloat16)
    prompts = mixed_prompts(5)
    settings = GenerationSettings(max_new_tokens=40, max_sentence_len=8, sampling=GREEDY, record_logits=True)
    torch._dynamo.reset()
    counters.clear()
    eager = generate(model, prompts, settings)
    compiled = generate(model, prompts, settings, compile=True)
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert dict(counters["graph_break"]) == {}
    # What each recording copies in at every replay: the step's token and active rows, never the
    # state (static buffers), and no state tensor moved: one recording per graph.
    recorded = counters["inductor"]["cudagraph_recorded_non_static_inputs"]
    assert 0 < recorded <= 2 * GRAPHS[kind]
    assert_same_greedy_tokens(eager, compiled, tie=0.25)  # two bf16 steps of logits in [16, 32)

    again = generate(model, prompts, settings, compile=True)
    assert again.tokens == compiled.tokens
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] == recorded, (
        "a later generation of the same shapes replays the recorded graphs in the same buffers"
    )
    generate(model, prompts, settings, compile=True, slots=2)  # continuous batching: rows moved in
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] <= 2 * recorded, (
        "one recording per graph of the new batch size, refills or not"
    )


def gpu_waits_per_step(model, prompts, sampling: SamplingSettings, monkeypatch, compile: bool) -> float:
    """Synchronizing CUDA calls per decode step: those of a 40-token generation less those of a
    20-token one (prefill's cancel out), over the steps between them."""
    generation = sys.modules["gpthf.generation.slots"]  # the engine's step, which `generate` drives
    sample = generation.sample
    steps: list[int] = []
    monkeypatch.setattr(generation, "sample", lambda *a, **k: steps.append(1) or sample(*a, **k))

    def waits(new_tokens: int) -> tuple[int, int]:
        settings = GenerationSettings(max_new_tokens=new_tokens, sampling=sampling, seed=1)
        steps.clear()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                generate(model, prompts, settings, compile=compile)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught), len(steps)

    waits(20)  # compiles and records first
    (short, short_steps), (long, long_steps) = waits(20), waits(40)
    assert long_steps > short_steps >= 5
    return (long - short) / (long_steps - short_steps)


@pytest.mark.parametrize("sampling", ["greedy", "sampled"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_decode_step_waits_for_the_gpu_once(kind, sampling, monkeypatch):
    model = tiny_model(kind, seed=3).to(CUDA)
    settings = GREEDY if sampling == "greedy" else SamplingSettings(temperature=1.0, top_k=20, top_p=0.9)
    assert gpu_waits_per_step(model, mixed_prompts(3), settings, monkeypatch, compile=False) <= 1


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_a_compiled_decode_step_waits_for_the_gpu_once(kind, monkeypatch):
    model = tiny_model(kind, seed=3).to(CUDA, torch.bfloat16)
    assert gpu_waits_per_step(model, mixed_prompts(3), GREEDY, monkeypatch, compile=True) <= 1
