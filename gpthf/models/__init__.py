"""The model registry: one spec per kind (gpthf.models.spec), selected by `arch.model`; every model
shares one block class.

A kind registers itself by defining its `ModelSpec` in the module of its model class: the registry
reads every module of this package, so a new kind adds no line here.
"""

from __future__ import annotations

import importlib
import pkgutil

from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.base import LanguageModel, next_token_loss
from gpthf.models.block_recurrent import BlockRecurrentTransformer
from gpthf.models.gpt import GPT
from gpthf.models.gpthf import GPTHF
from gpthf.models.linear import LinearTransformer
from gpthf.models.lstm import LSTMLanguageModel
from gpthf.models.spec import ModelSpec

COMPARED = ("gpthf", "gpt")  # the pair the framework compares (ranks 0 and 1: listed first)


def _registered_specs() -> dict[str, ModelSpec]:
    """Every spec defined in the module of its own model class, by kind, in the order of their
    ranks. A module whose name starts with "_" is not read."""
    met: list[tuple[ModelSpec, str]] = []  # every spec in a module's namespace, with that module
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module_info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{module_info.name}")
            met += [
                (value, module.__name__) for value in vars(module).values() if isinstance(value, ModelSpec)
            ]
    found: dict[str, ModelSpec] = {}
    for spec, where in met:
        if spec.model.__module__ != where:
            continue  # imported from the module that defines it, or misplaced (refused below)
        if found.setdefault(spec.kind, spec) is not spec:
            raise ConfigError(
                f"two model specs of kind {spec.kind!r}: in {found[spec.kind].model.__module__} and {where}"
            )
    for spec, where in met:
        if found.get(spec.kind) is not spec:
            raise ConfigError(
                f"a model spec in {where} whose model class lives in another module: define it beside its class"
            )
    ranks = sorted(found.values(), key=lambda spec: spec.rank)
    for first, second in zip(ranks, ranks[1:]):
        if first.rank == second.rank:
            raise ConfigError(
                f"model kinds {first.kind!r} and {second.kind!r} have the same rank {first.rank}"
            )
    return {spec.kind: spec for spec in ranks}


SPECS: dict[str, ModelSpec] = _registered_specs()
MODELS: dict[str, type[LanguageModel]] = {kind: spec.model for kind, spec in SPECS.items()}


def spec_for(kind: str) -> ModelSpec:
    """The spec of `arch.model=kind`."""
    if kind not in SPECS:
        raise ConfigError(f"unknown arch.model={kind!r}; choose one of: {', '.join(SPECS)}")
    return SPECS[kind]


def spec_of(model: LanguageModel) -> ModelSpec:
    """The spec of a built model: the one its `arch.model` names, which must be its class."""
    spec = spec_for(model.arch.model)
    if not isinstance(model, spec.model):
        raise ConfigError(
            f"a {type(model).__name__} built with arch.model={model.arch.model!r}, which is a "
            f"{spec.model.__name__}; build models with gpthf.models.build_model"
        )
    return spec


def arch_from_config(arch_cfg) -> ArchConfig:
    """A plain `ArchConfig` from a hydra node or a dict (as stored in checkpoints)."""
    from omegaconf import OmegaConf

    values = (
        OmegaConf.to_container(arch_cfg, resolve=True) if OmegaConf.is_config(arch_cfg) else dict(arch_cfg)
    )
    return ArchConfig(**values)


def build_model(arch_cfg, vocab_size: int, attention: str = "sdpa") -> LanguageModel:
    arch = arch_from_config(arch_cfg)
    return spec_for(arch.model).model(arch, vocab_size, attention)


__all__ = [
    "COMPARED",
    "BlockRecurrentTransformer",
    "GPT",
    "GPTHF",
    "LSTMLanguageModel",
    "LinearTransformer",
    "MODELS",
    "SPECS",
    "LanguageModel",
    "ModelSpec",
    "arch_from_config",
    "build_model",
    "next_token_loss",
    "spec_for",
    "spec_of",
]
