import torch
import torch.nn.functional as F

from gpthf.attention import attend_to_sentence_ends
from gpthf.attention.sentences import sentence_end_positions
from tests.models.helpers import random_batch


def dense_body_mask(sentence_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) mask of what the body may see: itself, and the ends of earlier sentences."""
    length = sentence_ids.shape[1]
    is_end = torch.ones_like(sentence_ids, dtype=torch.bool)
    is_end[:, :-1] = sentence_ids[:, 1:] != sentence_ids[:, :-1]
    earlier_end = is_end[:, None, :] & (sentence_ids[:, None, :] < sentence_ids[:, :, None])
    return (earlier_end | torch.eye(length, dtype=torch.bool)).unsqueeze(1)


def test_gathered_body_attention_equals_dense_masked_attention():
    _, sentence_ids = random_batch(3, 48, seed=2)
    q, k, v = torch.randn(3, 3, 2, 48, 8).unbind(0)
    q, k, v = (t.expand(3, 2, 48, 8).contiguous() * s for t, s in zip((q, k, v), (1.0, 1.3, 0.7)))
    gathered = attend_to_sentence_ends(q, k, v, sentence_ids, sentence_end_positions(sentence_ids))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_body_mask(sentence_ids))
    torch.testing.assert_close(gathered, dense, atol=1e-5, rtol=1e-5)


def test_first_sentence_sees_only_itself():
    sentence_ids = torch.zeros(1, 5, dtype=torch.long)
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    out = attend_to_sentence_ends(q, k, v, sentence_ids, sentence_end_positions(sentence_ids))
    torch.testing.assert_close(out, v)
