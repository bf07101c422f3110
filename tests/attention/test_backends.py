import pytest
import torch

from gpthf.attention import backend_unavailable_reason, get_backend
from gpthf.errors import ConfigError
from tests.models.helpers import BACKEND_HEAD_DIM, random_batch, tiny_model


def test_unknown_backend_names_the_choices():
    with pytest.raises(ConfigError, match="choose one of: sdpa, flex, flash"):
        get_backend("fast")


@pytest.mark.parametrize("name", ["flex", "flash"])
def test_gpu_backends_refuse_to_run_on_cpu_with_an_alternative(name):  # the GPU is hidden from CPU tests
    with pytest.raises(ConfigError, match="impl.attention=sdpa"):
        get_backend(name)
    assert "sdpa" in backend_unavailable_reason(name)


# flex and flash against sdpa on a GPU (forward, backward, both patterns, both models, compiled):
# tests/cuda/test_cuda_attention.py.


@pytest.mark.parametrize("model_name", ["gpthf", "gpt"])
def test_flex_forward_on_cpu_matches_sdpa_without_a_dense_mask_or_a_recompile_per_batch(
    model_name, monkeypatch
):
    """FlexAttention's forward runs on CPU too (its backward does not, so `get_backend` refuses it
    there and the backend is set by hand). Its block masks come from the compiled builder: the
    dense (B, 1, T, T) mask of eager `create_block_mask` is never built, and a new batch of the
    same shape reuses the compiled code."""
    from torch.nn.attention import flex_attention as flex_module

    from gpthf.attention.backends import FlexBackend

    torch._dynamo.reset()
    eager_dense_masks = []
    real_create_mask = flex_module.create_mask

    def spying_create_mask(*args, **kwargs):
        if not torch.compiler.is_compiling():
            eager_dense_masks.append(args[1:])
        return real_create_mask(*args, **kwargs)

    monkeypatch.setattr(flex_module, "create_mask", spying_create_mask)
    model = tiny_model(model_name, head_dim=BACKEND_HEAD_DIM)
    flex_model = tiny_model(model_name, head_dim=BACKEND_HEAD_DIM)
    flex_model.attention = FlexBackend()
    counters = torch._dynamo.utils.counters
    with torch.no_grad():
        for seed in (7, 8):
            input_ids, sentence_ids = random_batch(2, 128, seed=seed, max_sentence_len=20)
            torch.testing.assert_close(
                flex_model(input_ids, sentence_ids), model(input_ids, sentence_ids), atol=1e-5, rtol=1e-5
            )
            if seed == 7:
                graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs, "the second batch recompiled"
    assert eager_dense_masks == []
    torch._dynamo.reset()


def test_flex_inside_a_compiled_gpthf_forward_with_bounds_is_one_graph_for_every_batch():
    """The block-mask builder and the kernel inline into the model's graph (no graph break), and a
    batch of other sentences reuses it: what a compiled training step with flex does on a GPU."""
    from gpthf.attention.backends import FlexBackend
    from gpthf.attention.sentences import SentenceBounds

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    reference = tiny_model("gpthf", head_dim=BACKEND_HEAD_DIM)
    model = tiny_model("gpthf", head_dim=BACKEND_HEAD_DIM)
    model.attention = FlexBackend()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    bounds = SentenceBounds(sentences=128, sentence_len=20)
    with torch.no_grad():
        for seed in (1, 2):
            input_ids, sentence_ids = random_batch(2, 128, seed=seed, max_sentence_len=20)
            torch.testing.assert_close(
                compiled(input_ids, sentence_ids, bounds),
                reference(input_ids, sentence_ids),
                atol=1e-5,
                rtol=1e-5,
            )
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    torch._dynamo.reset()
