"""Linear attention: the chunked parallel form and the recurrent form are one function."""

from __future__ import annotations

import pytest
import torch

from gpthf.attention.linear import (
    DENOMINATOR_EPS,
    LearnedFeatureMap,
    LinearAttentionState,
    causal_linear_attention,
    elu_feature_map,
)


def reference(q, k, v):
    """Direct definition: y_i = Σ_{j≤i} (q_i·k_j) v_j / Σ_{j≤i} q_i·k_j (ReLU features can make it 0/0)."""
    scores = (q @ k.transpose(-1, -2)).tril()
    return (scores @ v) / (scores.sum(-1, keepdim=True) + DENOMINATOR_EPS)


@pytest.mark.parametrize("length", [1, 63, 64, 150])
@pytest.mark.parametrize("feature_map", ["elu", "learned"])
def test_parallel_and_recurrent_forms_agree(length, feature_map):
    torch.manual_seed(length)
    batch, heads, head_dim = 2, 3, 8
    phi = elu_feature_map if feature_map == "elu" else LearnedFeatureMap(heads, head_dim, 16)
    q, k, v = (torch.randn(batch, heads, length, head_dim) for _ in range(3))
    q, k = phi(q), phi(k)
    parallel = causal_linear_attention(q, k, v)
    torch.testing.assert_close(parallel, reference(q, k, v), atol=1e-5, rtol=1e-4)

    state = LinearAttentionState.from_prefix(k[:, :, :0], v[:, :, :0], torch.zeros(batch, dtype=torch.long))
    active = torch.ones(batch, dtype=torch.bool)
    steps = [
        state.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], active) for t in range(length)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=2), parallel, atol=1e-5, rtol=1e-4)


def test_state_from_a_ragged_prefix_equals_stepping_each_row():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 20, 4) for _ in range(3))
    k, q = elu_feature_map(k), elu_feature_map(q)
    lengths = torch.tensor([20, 7])
    state = LinearAttentionState.from_prefix(k, v, lengths)
    stepped = LinearAttentionState.from_prefix(k[:, :, :0], v[:, :, :0], torch.zeros(2, dtype=torch.long))
    for t in range(20):
        stepped.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], t < lengths)
    torch.testing.assert_close(state.kv, stepped.kv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.k, stepped.k, atol=1e-5, rtol=1e-5)
    assert state.nbytes() == 2 * 2 * (4 * 4 + 4) * 4, "a fixed size, whatever the context"
