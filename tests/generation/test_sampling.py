"""Sampling by inverse CDF from per-prompt streams: the right frequencies, never a token of
probability 0, and a stream that depends on (seed, key) alone."""

from __future__ import annotations

import pytest
import torch

from gpthf.generation.sampling import PromptStreams, SamplingSettings, inverse_cdf, sample

EDGES = [  # (probabilities, uniform draw, token)
    ([0.0, 0.5, 0.0, 0.5, 0.0], 0.0, 1),  # a draw of exactly 0 skips leading zero-probability tokens
    ([0.0, 0.5, 0.0, 0.5, 0.0], 0.5, 3),  # a draw on a boundary skips the zero between
    ([0.0, 0.5, 0.0, 0.5, 0.0], 1.0 - 2**-24, 3),  # the largest draw skips trailing zeros
    ([0.25, 0.25, 0.25, 0.25], 0.2499, 0),
    ([0.25, 0.25, 0.25, 0.25], 0.7501, 3),
    ([1.0], 0.9, 0),
]


@pytest.mark.parametrize("probs, draw, token", EDGES)
def test_inverse_cdf_edges(probs, draw, token):
    assert inverse_cdf(torch.tensor([probs]), torch.tensor([draw])).tolist() == [token]


def test_inverse_cdf_draws_each_token_as_often_as_its_probability():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    draws = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    tokens = inverse_cdf(probs.expand(len(draws), -1), draws)
    share = torch.bincount(tokens, minlength=4).float() / len(draws)
    assert share[1] == 0 and torch.allclose(share, probs, atol=0.01)


def test_sample_keeps_top_k_and_greedy():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).expand(500, -1)
    top2 = sample(logits, SamplingSettings(temperature=1.0, top_k=2), torch.rand(500))
    assert set(top2.tolist()) == {1, 2}
    assert sample(logits, SamplingSettings(temperature=0)).tolist() == [1] * 500


def test_a_prompts_stream_depends_on_seed_and_key_alone():
    def draws(seed: int, keys: list[int], steps: int = 3) -> torch.Tensor:
        streams = PromptStreams(seed, len(keys), torch.device("cpu"))
        for row, key in enumerate(keys):
            streams.assign(row, key)
        return torch.stack([streams.uniforms() for _ in range(steps)], dim=1)  # (rows, steps)

    both = draws(7, [3, 4])
    assert torch.equal(draws(7, [4, 3]), both.flip(0)), "the slot does not matter"
    assert torch.equal(draws(7, [4])[0], both[1]), "nor the prompts beside it"
    assert not torch.equal(draws(8, [3])[0], both[0]), "the seed does"
    assert not torch.equal(both[0], both[1]), "and the key"


def test_per_row_settings_give_each_row_the_token_of_its_settings_batch_wide():
    """A batch of mixed rows (greedy, temperature, top-k, top-p, both, none) samples for each row the
    token the batch-wide path gives that row's settings with the same draw: bit for bit, so a request's
    text does not depend on the rows beside it."""
    from gpthf.generation.sampling import RowSampling

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 97, generator=generator) * 3
    logits[5, :10] = logits[5, 10]  # ties
    draws = torch.rand(64, generator=generator)
    kinds = [
        SamplingSettings(temperature=0, top_k=5),
        SamplingSettings(temperature=1.0, top_k=None),
        SamplingSettings(temperature=0.7, top_k=20),
        SamplingSettings(temperature=1.3, top_k=None, top_p=0.9),
        SamplingSettings(temperature=0.8, top_k=50, top_p=0.5),
        SamplingSettings(temperature=1.0, top_k=97, top_p=1.0),
        SamplingSettings(temperature=0.5, top_k=500),
        SamplingSettings(temperature=2.0, top_k=1),
    ]
    rows = [kinds[(i * 5) % len(kinds)] for i in range(64)]
    mixed = sample(logits, RowSampling.of(rows), draws)
    alone = torch.cat([sample(logits[i : i + 1], rows[i], draws[i : i + 1]) for i in range(64)])
    assert torch.equal(mixed, alone)
    for kind in kinds:  # the whole batch on one setting: either path, the same tokens
        assert torch.equal(sample(logits, RowSampling.of([kind] * 64), draws), sample(logits, kind, draws))
    assert len(set(mixed.tolist())) > 10
