"""The heart of generation: cached decoding is the same function as recomputing everything."""

from __future__ import annotations

import pytest
import torch

from gpthf.attention.sentences import sentence_end_positions  # noqa: F401  (documents what the cache mirrors)
from gpthf.data.special_tokens import EOS_ID
from gpthf.generation import GenerationError, GenerationSettings, SamplingSettings, generate
from gpthf.generation.strategies import sentence_ids_for
from gpthf.models import SPECS
from tests.models.helpers import synthetic_rows, trained_tiny_model

GREEDY = SamplingSettings(temperature=0)


@pytest.fixture(scope="module", params=list(SPECS))
def model(request):
    return trained_tiny_model(request.param)


def ragged_prompts() -> list[list[int]]:
    ids, _ = synthetic_rows(4, 48, seed=999)
    prompts = [ids[0, :48].tolist(), ids[1, :17].tolist(), ids[2, :5].tolist(), ids[3, :30].tolist()]
    prompts[3] = prompts[3][: prompts[3].index(EOS_ID) + 1]  # one prompt ends exactly on a finished sentence
    return prompts


def assert_same_generation(model, prompts, settings):
    full = generate(model, prompts, settings, strategy="full")
    cached = generate(model, prompts, settings, strategy="cached")
    assert cached.tokens == full.tokens
    assert cached.finish_reasons == full.finish_reasons
    assert len(full.step_logits) == len(cached.step_logits) > 0
    for step, (a, b) in enumerate(zip(full.step_logits, cached.step_logits)):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0, msg=f"logits differ at step {step}")
    return full


def test_greedy_cached_equals_full_over_many_sentences(model):
    prompt = ragged_prompts()[0]
    result = assert_same_generation(
        model, [prompt], GenerationSettings(max_new_tokens=220, sampling=GREEDY, record_logits=True)
    )
    generated = result.tokens[0]
    assert len(generated) == 220
    assert generated.count(EOS_ID) >= 10, "the test must cross many sentence boundaries"
    assert len(set(generated)) >= 3, "and produce more than one repeated token"


def test_batched_ragged_prompts_match_full(model):
    settings = GenerationSettings(max_new_tokens=120, sampling=GREEDY, record_logits=True, max_sentence_len=6)
    result = assert_same_generation(model, ragged_prompts(), settings)
    assert all(len(t) == 120 for t in result.tokens)


def test_batched_rows_equal_their_single_row_runs(model):
    settings = GenerationSettings(max_new_tokens=60, sampling=GREEDY)
    prompts = ragged_prompts()
    batched = generate(model, prompts, settings).tokens
    assert batched == [generate(model, [p], settings).tokens[0] for p in prompts]


def test_seeded_sampling_is_reproducible_and_the_seed_matters(model):
    prompts = ragged_prompts()
    settings = GenerationSettings(
        max_new_tokens=50, sampling=SamplingSettings(temperature=1.0, top_k=20, top_p=0.9), seed=7
    )
    assert generate(model, prompts, settings).tokens == generate(model, prompts, settings).tokens
    other = GenerationSettings(max_new_tokens=50, sampling=settings.sampling, seed=8)
    assert generate(model, prompts, settings).tokens != generate(model, prompts, other).tokens


def test_a_prompts_samples_do_not_depend_on_its_slot_or_neighbours(model):
    """Each prompt draws from its own stream (seed, key): so another batch size, continuous
    batching, or a job resumed after its first prompts draws the same text."""
    prompts = mixed_prompts()
    settings = GenerationSettings(
        max_new_tokens=30, max_sentences=2, max_sentence_len=8, seed=11,
        sampling=SamplingSettings(temperature=1.0, top_k=40),
    )  # fmt: skip
    together = generate(model, prompts, settings).tokens
    assert generate(model, prompts, settings, slots=3).tokens == together
    assert generate(model, prompts[4:], settings, sampling_keys=range(4, len(prompts))).tokens == together[4:]
    alone = [generate(model, [p], settings, sampling_keys=[i]).tokens[0] for i, p in enumerate(prompts)]
    assert alone == together
    assert generate(model, prompts[4:], settings).tokens != together[4:], "the key seeds the stream"
    with pytest.raises(GenerationError, match="2 sampling_keys for 9 prompts"):
        generate(model, prompts, settings, sampling_keys=[0, 1])


def test_full_logits_equal_the_training_forward(model):
    ids, _ = synthetic_rows(1, 40, seed=5)
    prompt = ids[0].tolist()
    settings = GenerationSettings(max_new_tokens=15, sampling=GREEDY, record_logits=True)
    result = generate(model, [prompt], settings, strategy="full")
    sequence = torch.tensor([prompt + result.tokens[0]])
    with torch.no_grad():
        forward = model(sequence, sentence_ids_for(sequence, torch.tensor([sequence.shape[1]])))
    for step, logits in enumerate(result.step_logits):
        torch.testing.assert_close(logits[0], forward[0, len(prompt) - 1 + step], atol=1e-5, rtol=0)


def test_stop_conditions(model):
    prompts = ragged_prompts()
    result = generate(
        model, prompts, GenerationSettings(max_new_tokens=200, sampling=GREEDY, max_sentences=2)
    )
    assert all(reason == "max_sentences" for reason in result.finish_reasons)
    assert all(tokens.count(EOS_ID) == 2 and tokens[-1] == EOS_ID for tokens in result.tokens)
    empty = generate(model, prompts, GenerationSettings(max_new_tokens=0))
    assert empty.tokens == [[], [], [], []]


def test_gpthf_state_is_far_smaller_than_the_gpt_cache():
    gpthf, gpt = trained_tiny_model("gpthf", steps=1), trained_tiny_model("gpt", steps=1)
    prompts = [synthetic_rows(1, 400, seed=3)[0][0].tolist()]
    settings = GenerationSettings(max_new_tokens=1)
    gpthf_bytes = generate(gpthf, prompts, settings).state_bytes
    gpt_bytes = generate(gpt, prompts, settings).state_bytes
    assert gpthf_bytes * 5 < gpt_bytes


def mixed_prompts(count: int = 9) -> list[list[int]]:
    ids, _ = synthetic_rows(count, 48, seed=321)
    return [ids[i, : 3 + (i * 11) % 45].tolist() for i in range(count)]


def test_continuous_batching_matches_every_prompt_alone(model):
    """More prompts than slots: finished rows hand their slot to the next prompt mid-flight."""
    prompts = mixed_prompts()
    settings = GenerationSettings(max_new_tokens=40, max_sentences=2, max_sentence_len=8, sampling=GREEDY)
    finished: list[int] = []
    streamed: dict[int, list[int]] = {}
    cached = generate(
        model,
        prompts,
        settings,
        slots=3,
        on_finish=lambda p, tokens, reason: finished.append((p, tokens, reason)),
        on_token=lambda p, t: streamed.setdefault(p, []).append(t),
    )
    alone = [generate(model, [p], settings) for p in prompts]
    assert cached.tokens == [r.tokens[0] for r in alone]
    assert cached.finish_reasons == [r.finish_reasons[0] for r in alone]
    assert generate(model, prompts, settings, strategy="full", slots=3).tokens == cached.tokens
    order = [p for p, _, _ in finished]
    assert sorted(order) == list(range(len(prompts))) and order != sorted(order)
    assert sorted(finished) == list(zip(range(len(prompts)), cached.tokens, cached.finish_reasons))
    quiet = generate(model, prompts, settings, slots=3, keep_results=False)
    assert quiet.tokens == [] and quiet.finish_reasons == [], "keep_results=False keeps nothing"
    assert streamed == dict(enumerate(cached.tokens))
    assert len({len(t) for t in cached.tokens}) >= 3, "rows must finish at different steps"


def test_taken_rows_decode_like_their_source(model):
    from gpthf.generation.rows import take_rows
    from gpthf.generation.strategies import get_strategy, pad_rows

    runner = get_strategy(model, "cached")
    tokens, lengths = pad_rows(ragged_prompts()[:2])
    with torch.inference_mode():
        logits, state = runner.prefill(model, tokens, lengths)
        tiled = take_rows(state, torch.tensor([1, 1, 0]))
        token = torch.tensor([5, 7])
        step = runner.decode(model, state, token, torch.ones(2, dtype=torch.bool))
        tiled_step = runner.decode(model, tiled, token[[1, 1, 0]], torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(tiled_step, step[[1, 1, 0]], atol=1e-5, rtol=0)
    assert tiled.nbytes() >= state.nbytes()


def test_a_row_range_is_a_view_that_put_rows_copies_in(model):
    from gpthf.generation.rows import _walk, put_rows, row_range, take_rows
    from gpthf.generation.strategies import get_strategy, pad_rows

    def leaves(state) -> list[torch.Tensor]:
        found: list[torch.Tensor] = []
        _walk(state, state, lambda tensor, _, __: found.append(tensor))
        return found

    runner = get_strategy(model, "cached")
    tokens, lengths = pad_rows(ragged_prompts()[:3])
    with torch.inference_mode():
        _, state = runner.prefill(model, tokens, lengths)
        viewed = row_range(state, 1, 3)
        shared = [
            a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            for a, b in zip(leaves(viewed), leaves(state))
        ]
        assert shared and all(shared), "a row range copies nothing"
        target = take_rows(state, torch.tensor([0, 0, 0]))
        target = put_rows(target, torch.tensor([2, 0]), viewed)  # source rows 1, 2 into slots 2, 0
        expected = take_rows(state, torch.tensor([2, 0, 1]))
        token, active = torch.tensor([5, 7, 9]), torch.ones(3, dtype=torch.bool)
        got = runner.decode(model, target, token, active)
        want = runner.decode(model, expected, token, active)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got[0], got[2]), "the slots hold different prompts"


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_compiled_decode_equals_eager(kind):
    """Static caches attended whole (masked beyond each length) give the eager strategy's logits."""
    from torch._dynamo.utils import counters

    from gpthf.errors import ConfigError
    from gpthf.generation.compiled import check_compiler

    try:
        check_compiler(torch.device("cpu"))
    except ConfigError as err:
        pytest.skip(str(err))
    model = trained_tiny_model(kind)
    settings = GenerationSettings(max_new_tokens=50, sampling=GREEDY, record_logits=True, max_sentence_len=8)
    prompts = mixed_prompts(5)
    eager = generate(model, prompts, settings, slots=2)  # continuous batching: rows written into caches
    compiled = generate(model, prompts, settings, compile=True, slots=2)  # one compile (batch 2)
    assert compiled.tokens == eager.tokens == generate(model, prompts, settings).tokens
    assert compiled.finish_reasons == eager.finish_reasons
    assert len(compiled.step_logits) == len(eager.step_logits) > 50
    for a, b in zip(eager.step_logits, compiled.step_logits):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    graphs = counters["stats"]["unique_graphs"]
    again = generate(model, prompts, settings, compile=True, slots=2)  # same shapes: nothing compiled
    assert again.tokens == compiled.tokens and counters["stats"]["unique_graphs"] == graphs

    # On CPU the compiled step holds frozen copies of the weights: a change in place must reach it.
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.5)
    eager, compiled = generate(model, prompts, settings), generate(model, prompts, settings, compile=True)
    assert compiled.tokens == eager.tokens
    for a, b in zip(eager.step_logits, compiled.step_logits):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_compiled_steps_are_dropped_when_the_weights_change(monkeypatch):
    """Frozen copies go stale after a weight is written in place or replaced (new storage, same
    format: what `.to()` or `param.data = ...` do); nothing is dropped while they stay the same."""
    from gpthf.generation import compiled
    from tests.models.helpers import tiny_model

    resets = []
    monkeypatch.setattr(compiled.torch._dynamo, "reset", lambda: resets.append(1))
    model = tiny_model("gpthf")
    compiled.forget_stale_compilations(model)
    compiled.forget_stale_compilations(model)
    assert resets == []
    with torch.no_grad():
        model.norm.weight.mul_(2.0)
    compiled.forget_stale_compilations(model)
    assert len(resets) == 1
    model.norm.weight.data = model.norm.weight.data.clone()
    compiled.forget_stale_compilations(model)
    assert len(resets) == 2
    compiled.forget_stale_compilations(model.requires_grad_(False))  # flags are not weights
    assert len(resets) == 2
