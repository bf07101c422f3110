"""The CUDA attention backends against sdpa, forward and backward, and a compiled GPTHF training step.

Kernels are compared the way kernel libraries test themselves: against an fp32 reference computed
from the same inputs, a backend in bf16 may be off by at most twice what sdpa in bf16 is off (plus a
little), and in fp32 by a small absolute amount. Heads are at least 16 wide: the CUDA flex kernel
refuses narrower ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpthf.attention.backends import backend_unavailable_reason, get_backend
from gpthf.attention.sentences import SentenceBounds, block_causal_mask
from gpthf.precision import fp32_matmuls, gpu_computes_bf16
from tests.models.helpers import BACKEND_HEAD_DIM, random_batch, tiny_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Each backend with the formats it runs (flash-attn: bf16/fp16 only).
BACKEND_DTYPES = [("flex", torch.float32), ("flex", torch.bfloat16), ("flash", torch.bfloat16)]
FP32_TOL = 1e-4  # an fp32 kernel vs sdpa's fp32 math, relative to the largest value: summation order only
BF16_SLACK = 2e-3  # added to twice sdpa's own bf16 error


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """fp32 comparisons need fp32 products: TF32 (a process-wide switch a run may have left on)
    would round their inputs like bf16."""
    with fp32_matmuls(torch.device("cuda"), tf32=False):
        yield


def _backend_or_skip(name: str, dtype: torch.dtype):
    if dtype == torch.bfloat16 and not gpu_computes_bf16():
        pytest.skip("this GPU has no bf16")
    reason = backend_unavailable_reason(name)
    if reason:
        pytest.skip(reason)
    return get_backend(name)


def _output_and_grads(attend, q, k, v, upstream):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attend(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), upstream.to(out.dtype))
    return [t.float() for t in (out, *grads)]


def _assert_within_tolerance(got, low_precision_sdpa, reference, dtype, what):
    for name, g, s, r in zip(("out", "dq", "dk", "dv"), got, low_precision_sdpa, reference):
        error = (g - r).abs().max().item()
        if dtype == torch.float32:
            allowed = FP32_TOL * max(1.0, r.abs().max().item())
        else:
            allowed = 2 * (s - r).abs().max().item() + BF16_SLACK
        assert error <= allowed, f"{what} {name}: off by {error:.2e} from fp32 sdpa, allowed {allowed:.2e}"


def _patterns(backend, sentence_ids):
    """(name, the backend's attend, sdpa's attend) for the GPT and the GPTHF encoder patterns."""
    mask = block_causal_mask(sentence_ids)
    sdpa_causal = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    sdpa_sentences = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    bounds = SentenceBounds.of(sentence_ids)
    return [
        ("causal", backend.causal, sdpa_causal),
        ("within_sentences", backend.within_sentences(sentence_ids), sdpa_sentences),
        ("within_sentences+bounds", backend.within_sentences(sentence_ids, bounds), sdpa_sentences),
    ]


@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("name, dtype", BACKEND_DTYPES)
def test_backend_kernels_match_sdpa_forward_and_backward(name, dtype, head_dim):
    backend = _backend_or_skip(name, dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    _, sentence_ids = random_batch(2, 384, seed=1, max_sentence_len=40)
    sentence_ids = sentence_ids.cuda()
    q, k, v, upstream = (torch.randn(2, 4, 384, head_dim, device="cuda", generator=gen) for _ in range(4))
    low = [t.to(dtype) for t in (q, k, v)]
    reference_inputs = [t.float() for t in low]  # the fp32 reference sees the same rounded inputs
    for pattern, attend, sdpa in _patterns(backend, sentence_ids):
        reference = _output_and_grads(sdpa, *reference_inputs, upstream)
        sdpa_low = _output_and_grads(sdpa, *low, upstream)
        got = _output_and_grads(attend, *low, upstream)
        _assert_within_tolerance(got, sdpa_low, reference, dtype, f"{name} {pattern} hd={head_dim}")


def _logits_and_grads(model, input_ids, sentence_ids, bounds, dtype):
    model.zero_grad()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(input_ids, sentence_ids, bounds)
    logits.float().square().mean().backward()
    return logits.float(), [p.grad.float().clone() for p in model.parameters()]


@pytest.mark.parametrize("name, dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("model_name", ["gpthf", "gpt"])
def test_model_forward_and_backward_with_each_backend_match_sdpa(name, dtype, model_name):
    _backend_or_skip(name, dtype)
    model = tiny_model(model_name, head_dim=BACKEND_HEAD_DIM).cuda()
    input_ids, sentence_ids = (t.cuda() for t in random_batch(2, 128, seed=7, max_sentence_len=20))
    bounds = SentenceBounds.of(sentence_ids)
    expected, expected_grads = _logits_and_grads(model, input_ids, sentence_ids, None, dtype)
    model.set_attention_backend(name)
    for given in (None, bounds):
        got, got_grads = _logits_and_grads(model, input_ids, sentence_ids, given, dtype)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
        for g, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(g, e, atol=tol, rtol=tol * 10)


@pytest.mark.parametrize("name", ["sdpa", "flex", "flash"])
def test_compiled_gpthf_training_step_with_bounds_has_no_graph_break_or_recompile(name):
    """What `impl.compile=true` runs: the loss compiled by inductor, bf16 autocast, an optimizer
    step. With bounds, a second batch of other sentences compiles nothing more."""
    _backend_or_skip(name, torch.bfloat16)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    model = tiny_model("gpthf", head_dim=BACKEND_HEAD_DIM).cuda().train()
    model.set_attention_backend(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_loss = torch.compile(model.loss)
    bounds = SentenceBounds(sentences=128, sentence_len=20)
    for seed in (1, 2):
        input_ids, sentence_ids = (t.cuda() for t in random_batch(4, 128, seed=seed, max_sentence_len=20))
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_loss(input_ids, sentence_ids, bounds)
            with torch.no_grad():
                eager = model.loss(input_ids, sentence_ids)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss.detach().float(), eager.float(), atol=3e-2, rtol=3e-2)
        if seed == 1:
            graphs = counters["stats"]["unique_graphs"]
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == graphs, "the second batch recompiled"
    torch._dynamo.reset()
