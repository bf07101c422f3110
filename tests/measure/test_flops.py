"""Analytical FLOPs against torch's FlopCounterMode on real decode forwards (within 5 %)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gpthf.generation.strategies import get_strategy
from gpthf.measure import flops
from gpthf.models.block_recurrent import block_recurrent_token_flops
from gpthf.models.gpt import gpt_token_flops
from gpthf.models.gpthf import gpthf_token_flops
from tests.models.helpers import VOCAB, synthetic_rows, tiny_model


def counted_decode_flops(model, prompt: torch.Tensor) -> tuple[int, torch.Tensor]:
    """FLOPs torch counts for one cached decode step after `prompt`, and the prompt's structure."""
    runner = get_strategy(model, "cached")
    with torch.inference_mode():
        _, state = runner.prefill(model, prompt, torch.tensor([prompt.shape[1]]))
        counter = FlopCounterMode(display=False)
        # The math backend spells attention as matmuls the counter sees (CPU's fused kernel it skips).
        with counter, sdpa_kernel(SDPBackend.MATH):
            runner.decode(model, state, torch.tensor([10]), torch.tensor([True]))
    return counter.get_total_flops(), state


@pytest.mark.parametrize("context", [16, 60, 200])
def test_gpt_decode_flops_match_the_counter(context):
    model = tiny_model("gpt", d_model=64, mlp_hidden=128)
    prompt, _ = synthetic_rows(1, context, seed=1)
    counted, _ = counted_decode_flops(model, prompt)
    expected = gpt_token_flops(model.arch, VOCAB, context + 1)
    assert counted == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("context", [16, 60, 200])
def test_gpthf_decode_flops_match_the_counter(context):
    model = tiny_model("gpthf", d_model=64, mlp_hidden=128)
    prompt, _ = synthetic_rows(1, context, seed=1)
    counted, state = counted_decode_flops(model, prompt)
    in_sentence, finished = int(state.encoder.lengths[0]), int(state.body.lengths[0])
    expected = gpthf_token_flops(model.arch, VOCAB, in_sentence + 1, finished + 1)
    assert counted == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("kind", ["linear", "t2r", "lstm"])
@pytest.mark.parametrize("context", [16, 200])
def test_recurrent_decode_flops_match_the_counter_and_ignore_context(kind, context):
    model = tiny_model(kind, d_model=64, mlp_hidden=128)
    prompt, _ = synthetic_rows(1, context, seed=1)
    counted, _ = counted_decode_flops(model, prompt)
    if kind == "lstm":  # the counter does not see inside torch's fused LSTM: each weight is one multiply-add
        counted += 2 * sum(
            p.numel() for name, p in model.lstm.named_parameters() if name.startswith("weight")
        )
    assert counted == pytest.approx(flops.decode_flops(model.arch, VOCAB, context, 25), rel=0.05)
    assert flops.decode_flops(model.arch, VOCAB, context, 25) == flops.decode_flops(
        model.arch, VOCAB, 4096, 25
    )


@pytest.mark.parametrize("context", [5, 37])
def test_block_recurrent_decode_flops_match_the_counter(context):
    """A step that completes no block: the window attention and the state reads, no state update."""
    model = tiny_model("block_recurrent", d_model=64, mlp_hidden=128)
    prompt, _ = synthetic_rows(1, context, seed=1)
    counted, state = counted_decode_flops(model, prompt)
    assert int(state.lengths[0]) % model.arch.block_len != 0, "the counted step completed no block"
    window = (
        context % model.arch.block_len + 1 + (model.arch.block_len if context >= model.arch.block_len else 0)
    )
    expected = block_recurrent_token_flops(model.arch, VOCAB, window, state_update_share=0)
    assert counted == pytest.approx(expected, rel=0.05)


def test_gpthf_needs_fewer_flops_than_gpt_at_long_context_and_equal_at_none():
    gpthf, gpt = tiny_model("gpthf", d_model=64).arch, tiny_model("gpt", d_model=64).arch
    assert flops.decode_flops(gpthf, VOCAB, 4096, 25) < 0.2 * flops.decode_flops(gpt, VOCAB, 4096, 25)
    same = gpthf_token_flops(gpthf, VOCAB, 1, 1) == gpt_token_flops(gpt, VOCAB, 1)
    assert same, "with no context both models do the same work per token"
