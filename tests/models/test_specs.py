"""Every registered model kind, found in the registry (gpthf.models.SPECS) and built from its own
`<kind>-test` YAML: so a new kind is tested here by registering it, with no test to edit.

Each proves what the rest of gpthf relies on from a spec: the model builds and is causal-shaped,
its named `cached` strategy is importable and decodes like the `full` oracle, its FLOPs are positive
and grow with the context at most, its context limit counts what it says, and its config fields and
YAMLs agree. Plus: imports stay one-way (models never import generation; no two modules of either
import each other).
"""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gpthf.config import CONFIG_DIR, ArchConfig, load_config
from gpthf.generation.limits import ContextLimit, stopping_limit
from gpthf.generation.strategies import cached_strategy_class, get_strategy, pad_rows
from gpthf.measure import flops
from gpthf.measure.scaling import LADDER, arch_name
from gpthf.models import SPECS, build_model, spec_of
from gpthf.models.spec import SHARED_FIELDS
from tests.models.helpers import VOCAB, random_batch

KINDS = list(SPECS)
PACKAGE = Path(__file__).resolve().parents[2] / "gpthf"


def build_from_test_yaml(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(load_config([f"arch={arch_name(kind, 'test')}"]).arch, VOCAB).eval()


@pytest.fixture(scope="module", params=KINDS)
def kind_model(request):
    return request.param, build_from_test_yaml(request.param)


def test_a_kind_builds_its_class_and_gives_logits_per_position(kind_model):
    kind, model = kind_model
    assert type(model) is SPECS[kind].model and spec_of(model) is SPECS[kind]
    input_ids, sentence_ids = random_batch(2, 21, seed=1)
    with torch.inference_mode():
        logits = model(input_ids, sentence_ids)
    assert logits.shape == (2, 21, VOCAB) and torch.isfinite(logits).all()


def greedy_logits(model, strategy: str, prompts: list[list[int]], steps: int) -> torch.Tensor:
    """(steps + 1, B, V): the prefill's logits, then each greedy decode step's."""
    runner = get_strategy(model, strategy)
    tokens, lengths = pad_rows(prompts)
    active = torch.ones(len(prompts), dtype=torch.bool)
    with torch.inference_mode():
        logits, state = runner.prefill(model, tokens, lengths)
        steps_logits = [logits]
        for _ in range(steps):
            logits = runner.decode(model, state, logits.argmax(-1), active)
            steps_logits.append(logits)
    return torch.stack(steps_logits)


def test_a_kinds_cached_strategy_decodes_like_full_recompute(kind_model):
    """Ragged rows (14 and 21 tokens, sentences closed by <eos>) and 4 greedy steps: past a
    block-recurrent block's end, across GPTHF's sentence ends where the model closes one."""
    kind, model = kind_model
    assert cached_strategy_class(model).__name__ in SPECS[kind].strategy
    input_ids, _ = random_batch(2, 21, seed=2)
    prompts = [input_ids[0, :14].tolist(), input_ids[1].tolist()]
    cached, full = (greedy_logits(model, strategy, prompts, steps=4) for strategy in ("cached", "full"))
    assert torch.equal(cached.argmax(-1), full.argmax(-1))
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_a_kinds_flops_are_positive_and_never_fall_with_the_context(kind):
    arch = load_config([f"arch={arch_name(kind, 'test')}"]).arch
    decode = [flops.decode_flops(arch, VOCAB, context, 12.0) for context in (0, 16, 512, 4096)]
    assert decode[0] > 0 and decode == sorted(decode)
    assert (
        0
        < flops.training_forward_flops(arch, VOCAB, 64, 12.0)
        <= flops.full_recompute_flops(arch, VOCAB, 63, 12.0)
    )
    assert flops.training_flops_per_token(arch, VOCAB, 64, 12.0) == 3 * flops.training_forward_flops(
        arch, VOCAB, 64, 12.0
    )


def test_a_kinds_context_limit_counts_what_its_spec_says(kind_model):
    kind, model = kind_model
    limit = stopping_limit(model, ContextLimit(tokens=64, sentences=8))
    unit = SPECS[kind].context_unit
    assert limit == ContextLimit(**{unit: {"tokens": 64, "sentences": 8}[unit]})


def test_every_arch_field_is_read_by_some_kind():
    read = set(SHARED_FIELDS).union(*(spec.fields for spec in SPECS.values()))
    assert {f.name for f in fields(ArchConfig)} == read, "a field no kind reads is a dead config key"


def own_keys_and_kind(path: Path) -> tuple[dict, str]:
    """The keys an arch YAML sets itself, and its kind (its own `model`, or its defaults' one)."""
    own = OmegaConf.to_container(OmegaConf.load(path))
    parents = [d for d in own.pop("defaults", []) if d != "_self_"]
    kind = own.get("model") or own_keys_and_kind(path.with_name(f"{parents[0]}.yaml"))[1]
    return own, kind


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "arch").glob("*.yaml")), ids=lambda p: p.stem)
def test_an_arch_yaml_sets_only_what_its_kind_reads(path):
    own, kind = own_keys_and_kind(path)
    assert set(own) <= {*SHARED_FIELDS, *SPECS[kind].fields}, f"{path.name} sets keys {kind} does not read"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_test_yaml_and_the_size_ladder(kind):
    for size in ("test", *LADDER):
        assert (CONFIG_DIR / "arch" / f"{arch_name(kind, size)}.yaml").is_file()


def imported_modules(path: Path) -> set[str]:
    """The gpthf modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpthf"):
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gpthf")}
    return found


def test_imports_are_one_way_between_models_and_generation():
    modules = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for package in ("models", "generation")
        for path in (PACKAGE / package).glob("*.py")
    }
    imports = {name: imported_modules(path) & set(modules) for name, path in modules.items()}
    for name, targets in imports.items():
        if name.startswith("gpthf.models"):
            assert not any(t.startswith("gpthf.generation") for t in imported_modules(modules[name])), name
        cycles = [t for t in targets if t != name and name in imports[t]]
        assert not cycles, f"{name} and {cycles} import each other: move what they share below both"


def test_the_registry_finds_every_spec_in_the_modules_of_its_classes():
    """A kind registers by defining its spec beside its model class; none is listed by hand."""
    import importlib
    import pkgutil

    import gpthf.models
    from gpthf.models import COMPARED
    from gpthf.models.spec import ModelSpec

    defined = {
        value.kind
        for info in pkgutil.iter_modules(gpthf.models.__path__)
        for value in vars(importlib.import_module(f"gpthf.models.{info.name}")).values()
        if isinstance(value, ModelSpec)
    }
    assert set(SPECS) == defined and len(SPECS) >= 6
    assert tuple(SPECS)[: len(COMPARED)] == COMPARED, "tables list GPTHF and the GPT first"
    assert all(spec.model.__module__.startswith("gpthf.models.") for spec in SPECS.values())


def test_kinds_are_listed_by_their_ranks_whatever_their_modules_are_called():
    ranks = [spec.rank for spec in SPECS.values()]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert list(SPECS) == ["gpthf", "gpt", "linear", "t2r", "lstm", "block_recurrent"]
