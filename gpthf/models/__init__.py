"""The model registry: `arch.model` names a class here; every model shares one block class."""

from __future__ import annotations

from gpthf.config import ArchConfig
from gpthf.errors import ConfigError
from gpthf.models.base import LanguageModel, next_token_loss
from gpthf.models.block_recurrent import BlockRecurrentTransformer
from gpthf.models.gpt import GPT
from gpthf.models.gpthf import GPTHF
from gpthf.models.linear import LinearTransformer
from gpthf.models.lstm import LSTMLanguageModel

MODELS: dict[str, type[LanguageModel]] = {
    "gpt": GPT,
    "gpthf": GPTHF,
    "linear": LinearTransformer,  # arch.feature_map=elu
    "t2r": LinearTransformer,  # arch.feature_map=learned; usually converted from a GPT (init_from=CKPT)
    "lstm": LSTMLanguageModel,
    "block_recurrent": BlockRecurrentTransformer,
}


def arch_from_config(arch_cfg) -> ArchConfig:
    """A plain `ArchConfig` from a hydra node or a dict (as stored in checkpoints)."""
    from omegaconf import OmegaConf

    values = (
        OmegaConf.to_container(arch_cfg, resolve=True) if OmegaConf.is_config(arch_cfg) else dict(arch_cfg)
    )
    return ArchConfig(**values)


def build_model(arch_cfg, vocab_size: int, attention: str = "sdpa") -> LanguageModel:
    arch = arch_from_config(arch_cfg)
    if arch.model not in MODELS:
        raise ConfigError(f"unknown arch.model={arch.model!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[arch.model](arch, vocab_size, attention)


__all__ = [
    "BlockRecurrentTransformer",
    "GPT",
    "GPTHF",
    "LSTMLanguageModel",
    "LinearTransformer",
    "MODELS",
    "LanguageModel",
    "arch_from_config",
    "build_model",
    "next_token_loss",
]
