import pytest
import torch

from gpthf.attention import backend_unavailable_reason, get_backend
from gpthf.errors import ConfigError
from tests.models.helpers import random_batch, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="flex/flash backends need a CUDA GPU")


def test_unknown_backend_names_the_choices():
    with pytest.raises(ConfigError, match="choose one of: sdpa, flex, flash"):
        get_backend("fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
@pytest.mark.parametrize("name", ["flex", "flash"])
def test_gpu_backends_refuse_to_run_on_cpu_with_an_alternative(name):
    with pytest.raises(ConfigError, match="impl.attention=sdpa"):
        get_backend(name)
    assert "sdpa" in backend_unavailable_reason(name)


def _logits_and_grads(model, input_ids, sentence_ids, dtype):
    model.zero_grad()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(input_ids, sentence_ids)
    logits.float().square().mean().backward()
    return logits.float(), [p.grad.float().clone() for p in model.parameters()]


@cuda
@pytest.mark.parametrize(
    "name, dtype", [("flex", torch.float32), ("flex", torch.bfloat16), ("flash", torch.bfloat16)]
)
@pytest.mark.parametrize("model_name", ["gpthf", "gpt"])
def test_backend_matches_sdpa(name, dtype, model_name):
    if backend_unavailable_reason(name):
        pytest.skip(backend_unavailable_reason(name))
    model = tiny_model(model_name).cuda()
    input_ids, sentence_ids = (t.cuda() for t in random_batch(2, 128, seed=7, max_sentence_len=20))
    expected, expected_grads = _logits_and_grads(model, input_ids, sentence_ids, dtype)
    model.set_attention_backend(name)
    got, got_grads = _logits_and_grads(model, input_ids, sentence_ids, dtype)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=tol, rtol=tol * 10)
