"""Decode attention in bf16 on CPU: small windows attend in fp32 (faster there), long ones in bf16;
both are the masked attention of the fp32 reference up to bf16 rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpthf.generation import decode_attention as module
from gpthf.generation.decode_attention import decode_attention


@pytest.mark.parametrize("window", [1, 7, module.UPCAST_WINDOW, module.UPCAST_WINDOW + 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_is_the_masked_attention(window, dtype):
    torch.manual_seed(window)
    q, k, v = (torch.randn(3, 2, n, 16) for n in (1, window, window))
    lengths = torch.tensor([0, window // 2, window - 1])
    visible = (torch.arange(window)[None, :] <= lengths[:, None])[:, None, None, :]
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    out = decode_attention(q.to(dtype), k.to(dtype), v.to(dtype), visible)
    assert out.dtype == dtype and out.shape == reference.shape
    torch.testing.assert_close(out.float(), reference, atol=1e-5 if dtype == torch.float32 else 3e-2, rtol=0)
    if dtype == torch.bfloat16 and window <= module.UPCAST_WINDOW:  # one rounding, of fp32's result
        assert torch.equal(
            out,
            F.scaled_dot_product_attention(
                q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), attn_mask=visible
            ).to(dtype),
        )


@pytest.mark.parametrize("window", [1, 7, 153])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_form_for_compiled_steps_is_the_same_attention(window, dtype):
    """What a step compiled on CPU attends with (products and sums inductor fuses) equals the fp32
    masked attention up to the model format's rounding, a row seeing one key included."""
    torch.manual_seed(window)
    q, k, v = (torch.randn(3, 2, n, 16) for n in (1, window, window))
    lengths = torch.tensor([0, window // 2, window - 1])
    visible = (torch.arange(window)[None, :] <= lengths[:, None])[:, None, None, :]
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    out = module._fused_decode_attention(q.to(dtype), k.to(dtype), v.to(dtype), visible)
    assert out.dtype == dtype and out.shape == reference.shape
    torch.testing.assert_close(out.float(), reference, atol=1e-5 if dtype == torch.float32 else 3e-2, rtol=0)
