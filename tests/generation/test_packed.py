"""Packed decode weights (gpthf.generation.packed): same results as the plain path up to rounding,
the model handed back unchanged, packing only where it was measured to win, packed once while the
weights stay the same."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpthf.config import load_config
from gpthf.generation import GenerationSettings, SamplingSettings, generate
from gpthf.generation import packed as packing
from gpthf.generation.packed import PackedLinear, can_pack, packed_linears
from gpthf.models import build_model

pytestmark = pytest.mark.skipif(
    not can_pack(torch.zeros(1)), reason="this torch has no oneDNN packed linear ops"
)
FORMATS = {"fp32": (torch.float32, 1e-4), "bf16": (torch.bfloat16, 3e-2)}
# bf16 where this CPU packs it (AVX-512 or AVX-NE-CONVERT), else fp32: what the packing tests use.
PACKED_FORMAT = torch.bfloat16 if can_pack(torch.zeros(1, dtype=torch.bfloat16)) else torch.float32


def tiny(kind: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return build_model(load_config([f"arch={kind}-test"]).arch, 300).to(dtype).eval()


@pytest.fixture
def always_pack(monkeypatch):
    """Packing chosen whatever the measurement says, so the packed path is what runs."""
    monkeypatch.setattr(packing, "_DECISIONS", {})
    monkeypatch.setattr(packing, "WIN_MARGIN", float("inf"))


def linear_count(model: nn.Module) -> int:
    return sum(type(m) is nn.Linear for m in model.modules())


@pytest.mark.parametrize("name", FORMATS)
def test_packed_product_matches_plain_from_its_row_count_up(name):
    dtype, tolerance = FORMATS[name]
    if not can_pack(torch.zeros(1, dtype=dtype)):
        assert name == "bf16", "fp32 packs wherever oneDNN is built in"
        assert PackedLinear(nn.Linear(64, 96).to(dtype), rows=4).packed is None, "plain where it cannot pack"
        pytest.skip("this CPU's oneDNN cannot pack bf16 weights (AVX2 only)")
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, bias=False).to(dtype)
    stand_in = PackedLinear(linear, rows=4)
    assert stand_in.packed is not None and stand_in.weight is linear.weight
    with torch.inference_mode():
        x = torch.randn(4, 1, 64).to(dtype)
        assert torch.allclose(stand_in(x).float(), F.linear(x, linear.weight).float(), atol=tolerance)
        more = torch.randn(2, 37, 64).to(dtype)  # more rows (a prefill): packed too, same product
        assert torch.allclose(stand_in(more).float(), F.linear(more, linear.weight).float(), atol=tolerance)
        other = torch.randn(3, 64).to(dtype)  # fewer rows than packed for: the plain path, exactly
        assert torch.equal(stand_in(other), F.linear(other, linear.weight))
    x = torch.randn(4, 64).to(dtype)
    assert torch.equal(stand_in(x), F.linear(x, linear.weight))  # grad enabled (training): plain


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_model_is_handed_back_unchanged(kind, always_pack):
    model = tiny(kind, PACKED_FORMAT)
    before = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    with packed_linears(model, rows=2) as count:
        assert count == linear_count(tiny(kind)) > 0
        assert linear_count(model) == 0
        inside = model.state_dict(keep_vars=True)
        assert list(inside) == list(before) and all(inside[k] is v for k, v in before.items())
    assert linear_count(model) == count
    assert all(model.state_dict(keep_vars=True)[k] is v for k, v in before.items())
    assert model.head.weight is model.embed.weight  # still tied

    with pytest.raises(RuntimeError, match="boom"), packed_linears(model, rows=2):
        raise RuntimeError("boom")
    assert linear_count(model) == count  # restored on an error too


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
@pytest.mark.parametrize("name", FORMATS)
def test_generation_with_packed_weights_equals_plain(kind, name, always_pack):
    dtype, tolerance = FORMATS[name]
    model = tiny(kind, dtype)
    prompts = [[5, 6, 7, 3, 9, 10], [20, 21, 22, 23, 3, 24, 25], [30, 31]]
    settings = GenerationSettings(
        max_new_tokens=40, sampling=SamplingSettings(temperature=0), record_logits=True
    )
    plain = generate(model, prompts, settings, pack=False)
    packed = generate(model, prompts, settings)
    continuous = generate(model, prompts, settings, slots=2)  # packed for 2 rows, refills plain
    assert packed.tokens == plain.tokens == continuous.tokens
    assert max((a - b).abs().max().item() for a, b in zip(plain.step_logits, packed.step_logits)) < tolerance
    assert linear_count(model) == linear_count(tiny(kind))


def test_packed_copies_are_kept_while_the_weights_are_unchanged(always_pack):
    """Repeated generations pack once (and a compiled step, which guards on these very modules,
    compiles once); a weight written in place or replaced, or another row count, packs again."""
    model = tiny("gpthf")

    def stand_ins(model: nn.Module, rows: int) -> list[PackedLinear]:
        with packed_linears(model, rows):
            return [m for m in model.modules() if isinstance(m, PackedLinear)]

    def same(a: list, b: list) -> bool:
        return len(a) == len(b) > 0 and all(x is y for x, y in zip(a, b))

    def products_follow_the_weights(modules: list[PackedLinear]) -> bool:
        with torch.inference_mode():
            x = torch.randn(3, modules[0].in_features).to(modules[0].weight.dtype)
            return torch.allclose(modules[0](x).float(), F.linear(x, modules[0].weight).float(), atol=3e-2)

    first = stand_ins(model, 2)
    assert same(first, stand_ins(model, 2))
    other_rows = stand_ins(model, 3)
    assert not any(a is b for a, b in zip(first, other_rows)) and same(other_rows, stand_ins(model, 3))
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(2.0)  # in place: what a training step does
    written = stand_ins(model, 3)
    assert not any(a is b for a, b in zip(other_rows, written)) and products_follow_the_weights(written)
    with torch.no_grad():
        for param in model.parameters():  # replaced: new storage (and another format where bf16 packs)
            param.data = param.data.to(PACKED_FORMAT, copy=True)
    converted = stand_ins(model, 3)
    assert not any(a is b for a, b in zip(written, converted))
    assert converted[0].weight.dtype == PACKED_FORMAT and products_follow_the_weights(converted)
    assert linear_count(model) == linear_count(tiny("gpthf"))

    kept = weakref.ref(model)  # the kept copy does not keep its model alive
    del model, first, other_rows, written, converted
    gc.collect()
    assert kept() is None


def test_packing_is_left_out_where_it_does_not_win_or_apply(monkeypatch):
    monkeypatch.setattr(packing, "_DECISIONS", {})
    monkeypatch.setattr(packing, "WIN_MARGIN", 0.0)  # nothing can be that fast: never packed
    model = tiny("gpthf", PACKED_FORMAT)
    with packed_linears(model, rows=2) as count:
        assert count == 0 and linear_count(model) == linear_count(tiny("gpthf"))
    assert packing._DECISIONS and not any(packing._DECISIONS.values())  # measured once, remembered
    monkeypatch.setattr(packing, "WIN_MARGIN", float("inf"))
    with packed_linears(model, rows=2) as count:
        assert count == 0  # the remembered decision stands
    with packed_linears(tiny("gpthf", torch.float16), rows=2) as count:
        assert count == 0  # fp16 has no packed CPU kernel
    with packed_linears(model, rows=2, enabled=False) as count:
        assert count == 0


def test_a_failing_packed_op_leaves_the_plain_path(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel in this torch")

    monkeypatch.setattr(packing, "_DECISIONS", {})
    monkeypatch.setattr(packing.torch.ops.mkldnn, "_reorder_linear_weight", broken)
    model = tiny("gpthf", PACKED_FORMAT)
    with packed_linears(model, rows=2) as count:
        assert count == 0 and linear_count(model) == linear_count(tiny("gpthf"))
