"""What the rest of gpthf knows about a model kind, in one record per kind (torchtitan's `ModelSpec`).

Generation, measurement and the plots ask a kind's spec instead of testing `arch.model` or a model
class, so a new kind is its model module (class, FLOPs, spec), its cached strategy, its fields in
`gpthf.config.ArchConfig` and its YAMLs: the registry (`gpthf.models.SPECS`) finds the spec by
itself. Imports flow one way: the spec names its strategy as "module:Class", which gpthf.generation
imports when it is asked for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpthf.config import ArchConfig
from gpthf.models.base import LanguageModel

# ArchConfig fields every kind reads; a spec's `fields` lists the ones only it reads.
SHARED_FIELDS = ("model", "d_model", "n_heads", "mlp_hidden", "dropout", "rope_base", "norm_eps")
CONTEXT_UNITS = ("tokens", "sentences")

# (arch, vocab_size, tokens, tokens_per_sentence) -> FLOPs per token. `tokens` is the context before a
# generated token (decode) or the length of a packed training row (forward).
TokenFlops = Callable[[ArchConfig, int, int, float], float]


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # the `arch.model` value that selects it
    rank: int  # where tables, plots and sweeps list it (GPTHF 0, the GPT 1, then the others): stable
    model: type[LanguageModel]
    fields: tuple[str, ...]  # ArchConfig fields it reads besides SHARED_FIELDS
    strategy: str  # "module:Class" of its `cached` generation strategy (the class makes its state)
    forward_flops: TokenFlops  # per token of a packed training row, forward only
    decode_flops: TokenFlops  # per generated token with the cached strategy, the new token included
    color: str  # matplotlib colour of its lines in every plot
    marker: str  # and their marker
    context_unit: str = "tokens"  # what its context limit counts: tokens, or sentences (GPTHF's body)

    def __post_init__(self) -> None:
        if self.context_unit not in CONTEXT_UNITS:
            raise ValueError(f"{self.kind}: context_unit={self.context_unit!r}; one of {CONTEXT_UNITS}")
        if ":" not in self.strategy:
            raise ValueError(f"{self.kind}: strategy={self.strategy!r} must read 'module:Class'")
