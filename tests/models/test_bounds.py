"""`SentenceBounds`: a forward sized from host-side bounds reads nothing back from the device, so a
compiled training step has no graph break and compiles once for the whole run; and it computes
exactly what the forward without bounds computes."""

import pytest
import torch

from gpthf.attention.backends import ENCODER_QUERY_CHUNK
from gpthf.attention.sentences import SentenceBounds
from tests.models.helpers import KIND_FIELDS, HostSyncs, random_batch, tiny_model


def _loose(sentence_ids: torch.Tensor, extra: int = 3) -> SentenceBounds:
    """Bounds above the batch's own, as the trainer's (from the whole split) are."""
    tight = SentenceBounds.of(sentence_ids)
    return SentenceBounds(tight.sentences + extra, tight.sentence_len + extra)


class CountingBackend:
    """A torch.compile backend that counts the graphs it is handed (one per compile or recompile)."""

    def __init__(self) -> None:
        self.graphs = 0
        self._aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return self._aot_eager(graph_module, example_inputs)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


@pytest.mark.parametrize("length", [40, ENCODER_QUERY_CHUNK + 45])
def test_gpthf_logits_with_bounds_equal_those_without(length):
    """Extra body slots and a longer encoder reach are never attended: same logits (short rows are
    one encoder window; long ones are windowed, with the reach taken from the bounds)."""
    model = tiny_model("gpthf")
    input_ids, sentence_ids = random_batch(2, length, seed=3, max_sentence_len=30)
    with torch.no_grad():
        expected = model(input_ids, sentence_ids)
        for bounds in (SentenceBounds.of(sentence_ids), _loose(sentence_ids, extra=40)):
            torch.testing.assert_close(model(input_ids, sentence_ids, bounds), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("length", [40, ENCODER_QUERY_CHUNK + 45])
def test_gpthf_forward_with_bounds_reads_nothing_back_from_the_device(length):
    model = tiny_model("gpthf")
    input_ids, sentence_ids = random_batch(2, length, seed=3, max_sentence_len=30)
    bounds = _loose(sentence_ids)
    with torch.no_grad():
        with HostSyncs() as without_bounds:
            model(input_ids, sentence_ids)
        with HostSyncs() as with_bounds:
            model(input_ids, sentence_ids, bounds)
    assert without_bounds.calls, "the counter must see the eager path's read-back"
    assert with_bounds.calls == []


@pytest.mark.parametrize("model_name", list(KIND_FIELDS))
def test_every_model_kind_takes_bounds_and_ignores_what_it_does_not_need(model_name):
    model = tiny_model(model_name)
    input_ids, sentence_ids = random_batch(2, 24, seed=4)
    bounds = _loose(sentence_ids)
    with torch.no_grad(), HostSyncs() as syncs:
        logits = model(input_ids, sentence_ids, bounds=bounds)
        features = model.features(input_ids, sentence_ids, bounds=bounds)
        loss = model.loss(input_ids, sentence_ids, bounds=bounds)
    assert syncs.calls == []
    with torch.no_grad():
        torch.testing.assert_close(logits, model(input_ids, sentence_ids), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(features, model.features(input_ids, sentence_ids), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(loss, model.loss(input_ids, sentence_ids), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("model_name", ["gpthf", "gpt"])
def test_compiled_training_step_with_bounds_has_no_graph_break_and_compiles_once(model_name, fresh_dynamo):
    """fullgraph=True raises on any graph break; a second batch of another sentence structure (same
    shape, same bounds) reuses the graphs: one forward and one backward graph for the run."""
    model = tiny_model(model_name).train()
    backend = CountingBackend()
    step_loss = torch.compile(model.loss, backend=backend, fullgraph=True)
    bounds = SentenceBounds(sentences=40, sentence_len=12)
    for seed in (1, 2):
        input_ids, sentence_ids = random_batch(2, 48, seed=seed, max_sentence_len=12)
        model.zero_grad()
        loss = step_loss(input_ids, sentence_ids, bounds)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        expected = model.loss(input_ids, sentence_ids)
        expected.backward()
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        for got, want in zip(grads, (p.grad for p in model.parameters())):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert backend.graphs == 1, "the second batch recompiled"
    assert not fresh_dynamo["graph_break"]


def test_bounds_must_be_positive_and_of_gives_the_batch_maxima():
    with pytest.raises(ValueError, match="sentences >= 1"):
        SentenceBounds(0, 5)
    sentence_ids = torch.tensor([[0, 0, 0, 1, 2, 2], [0, 1, 1, 1, 1, 1]])
    assert SentenceBounds.of(sentence_ids) == SentenceBounds(sentences=3, sentence_len=5)
    assert SentenceBounds.of(torch.zeros(0, 0, dtype=torch.long)) == SentenceBounds(1, 1)
