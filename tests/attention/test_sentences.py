import torch
import torch.nn.functional as F

from gpthf.attention.sentences import block_causal_mask, positions_in_sentence, sentence_end_positions
from tests.models.helpers import random_batch


def reference_structure(sentence_ids: torch.Tensor):
    """Plain-Python versions of the tensor-op helpers, to check them against."""
    positions, ends, masks = [], [], []
    for row in sentence_ids.tolist():
        positions.append([sum(1 for s in row[:t] if s == row[t]) for t in range(len(row))])
        ends.append([max(t for t, s in enumerate(row) if s == j) for j in range(max(row) + 1)])
        masks.append([[row[i] == row[j] and j <= i for j in range(len(row))] for i in range(len(row))])
    return positions, ends, masks


def test_structure_helpers_match_a_python_reference():
    _, sentence_ids = random_batch(3, 40, seed=1)
    positions, ends, masks = reference_structure(sentence_ids)
    assert positions_in_sentence(sentence_ids).tolist() == positions
    computed_ends = sentence_end_positions(sentence_ids)
    for row, row_ends in enumerate(ends):
        assert computed_ends[row, : len(row_ends)].tolist() == row_ends
    assert block_causal_mask(sentence_ids)[:, 0].tolist() == masks


def _long_rows(length: int) -> torch.Tensor:
    """(2, length) sentence_ids: short random sentences, and in row 1 one sentence longer than a
    window of queries, so windows must reach back across their start."""
    _, sentence_ids = random_batch(2, length, seed=5, max_sentence_len=40)
    sentence_ids[1, 300:700] = sentence_ids[1, 300]
    sentence_ids[1, 700:] = sentence_ids[1, 700:] - sentence_ids[1, 700] + sentence_ids[1, 300] + 1
    return sentence_ids


def test_windowed_encoder_attention_equals_the_whole_mask_forward_and_backward():
    from gpthf.attention.backends import ENCODER_QUERY_CHUNK, SdpaBackend

    sentence_ids = _long_rows(3 * ENCODER_QUERY_CHUNK + 37)
    length = sentence_ids.shape[1]
    q, k, v = (torch.randn(2, 3, length, 8, requires_grad=True) for _ in range(3))
    windowed = SdpaBackend().within_sentences(sentence_ids)(q, k, v)
    grads = torch.autograd.grad(windowed.square().sum(), (q, k, v))
    whole = F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(sentence_ids))
    whole_grads = torch.autograd.grad(whole.square().sum(), (q, k, v))
    torch.testing.assert_close(windowed, whole, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, whole_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_encoder_masks_grow_with_the_row_times_the_longest_sentence_not_its_square(monkeypatch):
    """No (T, T) mask for a long row: each mask is a window of queries against the keys it can reach."""
    from gpthf.attention import backends
    from gpthf.attention.sentences import longest_sentence

    sizes = []
    real = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        sizes.append(attn_mask.numel())
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(backends.F, "scaled_dot_product_attention", recording)
    length = 8192
    _, sentence_ids = random_batch(1, length, seed=3, max_sentence_len=40)
    q = k = v = torch.randn(1, 1, length, 4)
    backends.SdpaBackend().within_sentences(sentence_ids)(q, k, v)
    chunk, longest = backends.ENCODER_QUERY_CHUNK, longest_sentence(sentence_ids)
    assert max(sizes) <= chunk * (chunk + longest - 1)
    assert sum(sizes) <= length * (chunk + longest - 1) < length * length // 20


def test_encoder_masks_over_the_budget_are_built_when_used_and_never_all_held(monkeypatch):
    """Sentences nearly as long as the row make the windows' masks O(T²) together: past the budget
    each is built when a layer uses it (only one held at a time), and the result is unchanged."""
    import weakref

    from gpthf.attention import backends
    from gpthf.attention.sentences import longest_sentence, window_mask

    built, live_at_call = [], []
    real_sdpa = F.scaled_dot_product_attention

    def recording_mask(*args):
        mask = window_mask(*args)
        built.append(weakref.ref(mask))
        return mask

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        live_at_call.append(sum(m().numel() for m in built if m() is not None))
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(backends, "window_mask", recording_mask)
    monkeypatch.setattr(backends.F, "scaled_dot_product_attention", recording_sdpa)
    chunk = backends.ENCODER_QUERY_CHUNK
    sentence_ids = _long_rows(3 * chunk + 37)
    batch, length = sentence_ids.shape
    windows = -(-length // chunk)
    one_window = batch * chunk * (chunk + longest_sentence(sentence_ids) - 1)  # bytes of the largest mask
    whole = block_causal_mask(sentence_ids)

    monkeypatch.setattr(backends, "ENCODER_MASK_BUDGET_BYTES", one_window)  # one mask fits, not all
    q, k, v = (torch.randn(batch, 2, length, 8, requires_grad=True) for _ in range(3))
    attend = backends.SdpaBackend().within_sentences(sentence_ids)
    assert not built, "no mask built up front"
    with torch.no_grad():
        for _layer in range(2):
            torch.testing.assert_close(
                attend(q, k, v), real_sdpa(q, k, v, attn_mask=whole), atol=1e-5, rtol=1e-5
            )
    assert len(built) == 2 * windows, "each layer builds each window's mask again"
    assert max(live_at_call) <= one_window, "never more than the budget held"
    out = attend(q, k, v)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected = real_sdpa(q, k, v, attn_mask=whole)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    built.clear()
    monkeypatch.setattr(backends, "ENCODER_MASK_BUDGET_BYTES", 64 << 20)  # under it: built once, shared
    attend = backends.SdpaBackend().within_sentences(sentence_ids)
    with torch.no_grad():
        for _layer in range(2):
            torch.testing.assert_close(
                attend(q, k, v), real_sdpa(q, k, v, attn_mask=whole), atol=1e-5, rtol=1e-5
            )
    assert len(built) == windows, "every layer uses the same masks"


def test_bounds_give_fixed_size_ends_and_varlen_offsets_equal_to_the_batch_own():
    """With bounds: S = bounds.sentences slots (extra ones at 0) and B*S + 1 offsets (extra ones
    at B*T: empty sequences), max length = bounds.sentence_len; the real entries are unchanged."""
    from gpthf.attention.sentences import SentenceBounds, sentence_offsets

    _, sentence_ids = random_batch(3, 40, seed=2)
    batch, length = sentence_ids.shape
    tight = SentenceBounds.of(sentence_ids)
    bounds = SentenceBounds(tight.sentences + 4, tight.sentence_len + 2)

    ends = sentence_end_positions(sentence_ids)
    padded_ends = sentence_end_positions(sentence_ids, bounds)
    assert padded_ends.shape == (batch, bounds.sentences)
    assert torch.equal(padded_ends[:, : ends.shape[1]], ends)
    assert not padded_ends[:, ends.shape[1] :].any()

    offsets, longest = sentence_offsets(sentence_ids)
    starts = [
        row * length + t
        for row in range(batch)
        for t in range(length)
        if positions_in_sentence(sentence_ids)[row, t] == 0
    ]
    assert offsets.tolist() == [*starts, batch * length] and longest == tight.sentence_len
    padded, padded_longest = sentence_offsets(sentence_ids, bounds)
    assert padded.dtype == torch.int32 and padded.shape == (batch * bounds.sentences + 1,)
    assert padded.tolist() == offsets.tolist() + [batch * length] * (len(padded) - len(offsets))
    assert padded_longest == bounds.sentence_len


def test_sentence_structure_with_bounds_traces_into_one_graph():
    """No `.nonzero()` or max read back: fullgraph=True would raise at a graph break. Covers the
    flash offsets and the sdpa encoder's windows over a row longer than one window."""
    from gpthf.attention.backends import ENCODER_QUERY_CHUNK, SdpaBackend
    from gpthf.attention.sentences import SentenceBounds, sentence_offsets

    torch._dynamo.reset()
    sentence_ids = _long_rows(3 * ENCODER_QUERY_CHUNK + 37)
    bounds = SentenceBounds(sentences=sentence_ids.shape[1], sentence_len=400)
    offsets = torch.compile(sentence_offsets, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(offsets(sentence_ids, bounds)[0], sentence_offsets(sentence_ids, bounds)[0])

    def encoder_attention(q, k, v, sentence_ids):
        return SdpaBackend().within_sentences(sentence_ids, bounds)(q, k, v)

    q, k, v = (torch.randn(2, 2, sentence_ids.shape[1], 8) for _ in range(3))
    compiled = torch.compile(encoder_attention, backend="aot_eager", fullgraph=True)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(sentence_ids))
    torch.testing.assert_close(compiled(q, k, v, sentence_ids), expected, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
