"""Prompts packed by sentence for GPTHF's prefill: every real token lands once, sentences stay whole
and apart, and no packed row holds more padding than its tail."""

from __future__ import annotations

import pytest
import torch

from gpthf.attention.sentences import positions_in_sentence
from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID
from gpthf.generation import GenerationSettings, SamplingSettings, generate, sentence_rows
from gpthf.generation.sentence_rows import pack_sentences
from gpthf.generation.strategies import GPTHFCachedStrategy, pad_rows, sentence_ids_for
from tests.models.helpers import trained_tiny_model

E, D = EOS_ID, EOD_ID


@pytest.fixture(scope="module")
def model():
    return trained_tiny_model("gpthf")


PROMPT_TABLES = {
    "one token": [[7]],
    "ends on its <eos>": [[5, 6, E, 8, 9, E]],
    "no sentence finished": [[5, 6, 7, 8]],
    "ragged batch": [[5, 6, E, 8], [9], [10, 11, 12, E, 13, E, 14, 15, 16], [17, E]],
    "document end": [[5, E, D, 6, 7]],
    "a sentence longer than a packed row": [[5] * 300 + [E, 6, 7], [8, 9]],
    "many short prompts": [[20 + i, E, 30 + i] for i in range(40)],
}


@pytest.mark.parametrize("case", PROMPT_TABLES)
def test_every_real_token_lands_once_with_its_sentence_whole(case):
    prompts = PROMPT_TABLES[case]
    tokens, lengths = pad_rows(prompts)
    packed = pack_sentences(tokens, lengths)
    rows, capacity = packed.tokens.shape
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    where = packed.flat_index[real]
    assert len(set(where.tolist())) == int(lengths.sum())  # each real token has a place of its own
    assert torch.equal(packed.tokens.reshape(-1)[where], tokens[real])
    assert int((packed.tokens != PAD_ID).sum()) == int(lengths.sum())  # nothing else was packed
    # Each prompt sentence is one packed sentence, counted from its first token, as in the prompt.
    prompt_positions = positions_in_sentence(sentence_ids_for(tokens, lengths))[real]
    packed_positions = positions_in_sentence(packed.sentence_ids).reshape(-1)[where]
    assert torch.equal(packed_positions, prompt_positions)
    prompt_ids = sentence_ids_for(tokens, lengths)
    for b in range(len(prompts)):  # tokens of one prompt sentence share a packed id and row
        for sentence in prompt_ids[b, : lengths[b]].unique():
            places = packed.flat_index[b, : lengths[b]][prompt_ids[b, : lengths[b]] == sentence]
            assert len({int(p) // capacity for p in places}) == 1
            assert len(set(packed.sentence_ids.reshape(-1)[places].tolist())) == 1
    # Padding sits at the end of a row under an id of its own.
    for row in range(rows):
        pad = packed.tokens[row] == PAD_ID
        if pad.any():
            first = int(pad.nonzero()[0])
            assert pad[first:].all()
            assert packed.sentence_ids[row, first] > packed.sentence_ids[row, first - 1]


def test_rows_are_short_whatever_the_prompts_length():
    """Long prompts pack into rows of about PACK_ROW_TOKENS, so the encoder's attention does not grow
    with the prompt's square; one short prompt is one row of its own length."""
    long = ([5] * 20 + [E]) * 40  # 840 tokens, 40 sentences
    packed = pack_sentences(*pad_rows([long, long[:100]]))
    assert packed.tokens.shape[1] == sentence_rows.PACK_ROW_TOKENS
    assert packed.tokens.numel() < 1.1 * (len(long) + 100)
    assert pack_sentences(*pad_rows([[5, 6, 7]])).tokens.shape == (1, 3)


def test_continuous_batching_prefills_waiting_prompts_in_batches(model, monkeypatch):
    """GPTHF prefills the next batch of waiting prompts ahead of its free slots (one call per batch,
    not per refill), and the tokens stay those of every prompt alone."""
    calls = []
    prefill = GPTHFCachedStrategy.prefill

    def counting(self, model, tokens, lengths):
        calls.append(tokens.shape[0])
        return prefill(self, model, tokens, lengths)

    monkeypatch.setattr(GPTHFCachedStrategy, "prefill", counting)
    prompts = [[5 + i, 6, E, 7 + i] * (1 + i % 3) for i in range(12)]
    settings = GenerationSettings(
        max_new_tokens=30, max_sentences=1, sampling=SamplingSettings(temperature=0)
    )
    together = generate(model, prompts, settings, slots=4)
    assert calls[0] == 4 and sum(calls) == 12 and len(calls) <= 4  # 4 + 4 + 4, not 4 + 1 + 1 + ...
    calls.clear()
    alone = [generate(model, [p], settings).tokens[0] for p in prompts]
    assert together.tokens == alone


@pytest.mark.parametrize(
    "prompts", [[[E]], [[D]], [[E, E, E]], [[E], [5, 6, 7], [D, 9]], [[PAD_ID, 5, E, PAD_ID]]], ids=str
)
def test_prefill_of_edge_prompts_equals_the_full_recompute(model, prompts):
    """Prompts that are only sentence ends, or hold <pad> as a token, prefill to the same logits and
    continue with the same tokens as recomputing everything."""
    settings = GenerationSettings(
        max_new_tokens=12, sampling=SamplingSettings(temperature=0), record_logits=True
    )
    full = generate(model, prompts, settings, strategy="full")
    cached = generate(model, prompts, settings)
    assert cached.tokens == full.tokens
    for a, b in zip(full.step_logits, cached.step_logits):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_horizon_reads_prompts_in_chunks_and_finds_the_largest_of_each_kind(monkeypatch):
    """A batch job's horizon pads HORIZON_CHUNK prompts at a time; the maxima are those of all prompts,
    whichever chunk holds them (the longest prompt, the longest open sentence, the most sentences)."""
    import importlib
    from array import array

    generation = importlib.import_module("gpthf.generation.generate")  # the module, not the function

    monkeypatch.setattr(generation, "HORIZON_CHUNK", 2)
    # chunks of two: the longest prompt and the most sentences in the second, the longest open sentence in the third
    prompts = [[5, E, 6], [7] * 4, [8, E, 9, E, 10, E, 11, E], [12, E, 13], array("i", [16] * 6)]
    reach = generation.horizon(prompts, GenerationSettings(max_new_tokens=4))
    assert (reach.tokens, reach.sentence_tokens, reach.sentences) == (8 + 4, 6 + 4, 4 + 4)
    capped = generation.horizon(prompts, GenerationSettings(max_new_tokens=4, max_sentence_len=5))
    assert capped.sentence_tokens == 7, "an open sentence longer than the cap still fits, plus one"
