"""The model registry: one spec per kind (gpthf.models.spec), selected by `arch.model`; every model
shares one block class."""

from __future__ import annotations

from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.base import LanguageModel, next_token_loss
from gpthf.models.block_recurrent import SPEC as BLOCK_RECURRENT_SPEC
from gpthf.models.block_recurrent import BlockRecurrentTransformer
from gpthf.models.gpt import GPT
from gpthf.models.gpt import SPEC as GPT_SPEC
from gpthf.models.gpthf import GPTHF
from gpthf.models.gpthf import SPEC as GPTHF_SPEC
from gpthf.models.linear import SPEC as LINEAR_SPEC
from gpthf.models.linear import T2R_SPEC, LinearTransformer
from gpthf.models.lstm import SPEC as LSTM_SPEC
from gpthf.models.lstm import LSTMLanguageModel
from gpthf.models.spec import ModelSpec

# A new kind adds its spec here, in the order tables and plots list the kinds.
SPECS: dict[str, ModelSpec] = {
    spec.kind: spec for spec in (GPTHF_SPEC, GPT_SPEC, LINEAR_SPEC, T2R_SPEC, LSTM_SPEC, BLOCK_RECURRENT_SPEC)
}
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
