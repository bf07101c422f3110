"""Block-Recurrent Transformer specifics: the window, the state as the only long path, truncation."""

from __future__ import annotations

import pytest
import torch

from gpthf.errors import ConfigError
from gpthf.models.block_recurrent import window_mask
from tests.models.helpers import VOCAB, tiny_model


def test_window_is_own_block_and_the_one_before():
    mask = window_mask(12, 4)
    assert mask[5].tolist() == [True] * 6 + [False] * 6  # block 1: sees block 0 and itself so far
    assert mask[9].tolist() == [False] * 4 + [True] * 6 + [False] * 2  # block 2: blocks 1 and 2, not block 0


def embedding_gradient_of_late_loss(truncate_blocks: int | None) -> torch.Tensor:
    """d(loss on the last block) / d(embeddings of the first block), 8 blocks of 8 tokens, 3 layers."""
    model = tiny_model("block_recurrent", truncate_blocks=truncate_blocks).train()
    ids = torch.randint(4, VOCAB, (1, 64), generator=torch.Generator().manual_seed(0))
    embeddings = model.embed(ids).detach().requires_grad_(True)
    model.embed.forward = lambda _: embeddings  # feed the leaf tensor through the usual path
    logits = model(ids)
    logits[:, 56:].logsumexp(-1).sum().backward()
    return embeddings.grad[0, :8]


def test_only_the_state_carries_information_past_the_windows_and_truncation_cuts_it():
    # Three window layers reach three blocks back: from block 7 to block 4. Block 0 only via the state.
    assert embedding_gradient_of_late_loss(None).abs().sum() > 0
    assert embedding_gradient_of_late_loss(1).abs().sum() == 0


def test_bad_block_recurrent_configs_are_refused():
    with pytest.raises(ConfigError, match="recurrent_layer"):
        tiny_model("block_recurrent", recurrent_layer=3)
    assert tiny_model("block_recurrent", recurrent_layer=None).recurrent_index == 1  # n_layers - 2
    with pytest.raises(ConfigError, match="state_gate"):
        tiny_model("block_recurrent", state_gate="dual")


def test_lstm_gate_variant_runs_and_differs():
    ids = torch.randint(4, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    fixed, lstm = tiny_model("block_recurrent"), tiny_model("block_recurrent", state_gate="lstm")
    assert lstm(ids).shape == fixed(ids).shape == (2, 40, VOCAB)
    assert lstm.num_parameters() > fixed.num_parameters()
