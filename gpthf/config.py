"""The config schema and the one function that loads configs.

The YAML tree in `cramming_cfg/` is composed by hydra and merged onto the dataclasses below, so a typo
in a file or an override is an error (naming the valid keys), never a silently ignored value. Groups:
`arch` (the model), `data` (corpus, tokenizer, packing: everything the data cache depends on),
`train` (the optimisation), `impl` (how fast, never what: backends, device, compile).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf

from gpthf.data.special_tokens import SPECIAL_TOKENS
from gpthf.errors import ConfigError, GpthfError
from gpthf.settings import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, SHARE, Range

CONFIG_DIR = Path(__file__).resolve().parent.parent / "cramming_cfg"


@dataclass
class ArchConfig:
    model: str = MISSING  # a kind of gpthf.models.SPECS; its spec lists which fields below it reads
    d_model: int = MISSING
    n_heads: int = MISSING
    n_enc: int | None = None  # gpthf: word-level encoder blocks
    n_body: int | None = None  # gpthf: sentence-level body blocks
    n_layers: int | None = (
        None  # gpt/linear/t2r: causal blocks (= n_enc + n_body of the GPTHF twin); lstm: layers
    )
    mlp_hidden: int = MISSING  # SwiGLU hidden width (lstm: unused, 0)
    feature_map: str = "elu"  # linear/t2r attention: elu (elu(x)+1, Katharopoulos) | learned (T2R's ReLU MLP)
    feature_dim: int = 32  # learned feature map: features per head (T2R's default)
    lstm_hidden: int | None = None  # lstm: hidden size, chosen so parameters match the GPT twin
    block_len: int = 32  # block_recurrent: tokens per block W (the sliding window reaches one block back)
    n_states: int = 32  # block_recurrent: state vectors carried between blocks
    recurrent_layer: int | None = None  # block_recurrent: index of the recurrent layer (None: n_layers - 2)
    state_gate: str = "fixed"  # block_recurrent: fixed (the paper's best) | lstm
    truncate_blocks: int | None = None  # block_recurrent: cut the state's gradient every N blocks
    dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5


@dataclass
class DataConfig:
    name: str = "kjv"
    source: str = "kjv"  # a key of gpthf.data.sources.SOURCES
    path: str | None = None  # local: file or folder; hub: dataset name
    text_field: str = "text"  # .jsonl / .parquet / hub column holding the text
    encoding: str = "utf-8"
    language: str = "english"  # Punkt model
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    vocab_size: int = 4096
    seq_len: int = 256
    max_sentence_len: int = 64
    max_bytes: int | None = None  # read only this much text (UTF-8 bytes, whole documents) of the corpus
    tokenizer_sample_mb: float = 32.0  # the BPE is trained on the first this-many MB of the train split
    num_proc: int | None = None  # preparation worker processes (None: one per core); output is the same


@dataclass
class TrainConfig:
    batch_size: int = MISSING  # sequences per optimizer step, summed over all ranks
    micro_batch_size: int = MISSING  # sequences per forward pass on one device
    lr: float = MISSING  # peak learning rate
    weight_decay: float = 0.1  # AdamW decay on matrices only (never norms or biases)
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    schedule: str = "cosine"  # a key of gpthf.training.schedule.SCHEDULES
    warmup_fraction: float = 0.05  # share of the budget spent warming up
    cooldown_fraction: float = 0.2  # trapezoid only: share of the post-warm-up budget spent decaying to zero
    max_tokens: int | None = None  # schedule by tokens, not time (reproducible); the budget still stops
    seed: int = 0
    log_every_steps: int = 10
    checkpoint_every_minutes: float = 10.0
    keep_checkpoints: int = 2  # periodic checkpoints kept besides the final one
    eval_rows: int | None = None  # validation rows for the final evaluation; None = all
    # Validation while training (charged to the budget), on the split's first rows every time; None = off.
    eval_every_minutes: float | None = None  # of budget
    eval_every_tokens: int | None = None  # training tokens: the same points in every run of one config
    periodic_eval_rows: int = 32  # rows of each validation while training (at most eval_rows)


@dataclass
class ImplConfig:
    attention: str = "sdpa"
    device: str = "auto"  # auto = cuda when available, else cpu
    distributed: str = "none"  # none | ddp (under torchrun) | deepspeed
    zero_stage: int = 1  # deepspeed only
    compile: str = "auto"  # auto (CUDA yes, CPU no) | true | false
    amp: str = "auto"  # auto (bf16 on a GPU with bf16 arithmetic, else fp32) | bf16 | fp32
    tf32: bool = True  # CUDA: fp32 matmuls on TF32 tensor cores (Ampere on); no effect on CPU
    peak_flops: float | None = None  # the device's peak FLOP/s for train/mfu; None: a matmul measured once


@dataclass
class TensorBoardConfig:
    """Event files under `<run>/tensorboard/` (`tensorboard --logdir outputs`)."""


@dataclass
class WandbConfig:
    project: str = "gpthf"
    entity: str | None = None  # a W&B team or user; None: the account's default
    mode: str | None = None  # online | offline | disabled; None: W&B's own (WANDB_MODE, else online)


@dataclass
class LoggerConfig:
    """Trackers besides `metrics.jsonl` (always written): a section present is a backend chosen,
    `logger=[tensorboard,wandb]` (cramming_cfg/logger/)."""

    tensorboard: TensorBoardConfig | None = None
    wandb: WandbConfig | None = None


@dataclass
class PretrainConfig:
    arch: ArchConfig = field(default_factory=ArchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    name: str = "gpthf"
    budget: str = "10m"  # wall-clock: "24h", "90m", "30s", or plain hours ("0.05")
    cache_dir: str = "data_cache"  # where prepared data sets live
    output_dir: str = "outputs"  # runs go to <output_dir>/<name>/<timestamp>/
    resume: bool = False  # continue the newest run of <name> from its last complete checkpoint
    init_from: str | None = None  # a checkpoint whose weights start a new run (e.g. GPT -> T2R or GPTHF)


_BUDGET = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([hms]?)\s*$")
_SECONDS_PER_UNIT = {"h": 3600.0, "": 3600.0, "m": 60.0, "s": 1.0}


def parse_budget_seconds(budget: str | float) -> float:
    """'24h', '90m', '30s' or a bare number of hours (hydra reads `budget=0.0000001` as the float
    1e-07, so exponents count too), as seconds; must be positive and finite."""
    match = _BUDGET.match(str(budget))
    if not match:
        raise ConfigError(
            f"budget={budget!r} is not a duration; use e.g. budget=24h, budget=90m or budget=0.05 (hours)"
        )
    seconds = float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
    if not 0 < seconds < math.inf:
        raise ConfigError(f"budget={budget!r} must be positive and finite")
    return seconds


CONFIG_GROUPS = ("arch", "data", "train", "impl", "logger")  # logger: several at once, logger=[a,b]


# Tokens per row. The GPT twin's causal attention scores T×T pairs (GPTHF's body up to T²/2), so one
# head of one row holds T² fp32 scores wherever the attention kernel materialises them: 16 GiB here.
MAX_SEQ_LEN = 1 << 16


def attention_scores_cost(seq_len: float) -> str:
    """What one row of `seq_len` tokens would take in attention scores: the reason for MAX_SEQ_LEN."""
    gib = seq_len**2 * 4 / 2**30
    return f"one row's {seq_len:,.0f}² attention scores would take {gib:,.0f} GiB per head in fp32"


# The byte-level BPE holds every byte as a token, and the special tokens besides.
BYTE_ALPHABET = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET + len(SPECIAL_TOKENS)


def byte_alphabet_and_specials(vocab_size: float) -> str:
    """Why a vocabulary below MIN_VOCAB_SIZE is refused."""
    return f"a byte-level BPE's {BYTE_ALPHABET} byte tokens and {len(SPECIAL_TOKENS)} specials come first"


# Every numeric field of the schema (tests/test_config.py checks none is missing).
NUMBER_RANGES: dict[str, Range] = {
    "arch.d_model": AT_LEAST_1, "arch.n_heads": AT_LEAST_1, "arch.n_enc": AT_LEAST_1, "arch.n_body": AT_LEAST_1,
    "arch.n_layers": AT_LEAST_1, "arch.mlp_hidden": AT_LEAST_0, "arch.feature_dim": AT_LEAST_1,
    "arch.lstm_hidden": AT_LEAST_1, "arch.block_len": AT_LEAST_1, "arch.n_states": AT_LEAST_1,
    "arch.recurrent_layer": AT_LEAST_0, "arch.truncate_blocks": AT_LEAST_1, "arch.dropout": FRACTION,
    "arch.rope_base": Range(1, low_open=True), "arch.norm_eps": Range(0, 1, low_open=True),
    "data.validation_fraction": FRACTION, "data.test_fraction": FRACTION, "data.split_seed": Range(),
    "data.vocab_size": Range(MIN_VOCAB_SIZE, 2**32, too_low=byte_alphabet_and_specials), "data.seq_len": Range(8, MAX_SEQ_LEN, too_high=attention_scores_cost),
    "data.max_sentence_len": Range(2),
    "data.max_bytes": Range(1, too_low=lambda _: "null for the whole corpus"), "data.tokenizer_sample_mb": POSITIVE,
    "data.num_proc": Range(1, 1024, too_low=lambda _: "null for one per core"),
    "train.batch_size": AT_LEAST_1, "train.micro_batch_size": AT_LEAST_1, "train.lr": Range(0, 1, low_open=True),
    "train.weight_decay": AT_LEAST_0, "train.beta1": FRACTION, "train.beta2": FRACTION, "train.grad_clip": AT_LEAST_0,
    "train.warmup_fraction": FRACTION, "train.cooldown_fraction": SHARE, "train.max_tokens": AT_LEAST_1,
    "train.seed": Range(0, 2**32 - 1), "train.log_every_steps": AT_LEAST_1, "train.checkpoint_every_minutes": POSITIVE,
    "train.keep_checkpoints": AT_LEAST_1, "train.eval_rows": AT_LEAST_1, "impl.zero_stage": Range(0, 3),
    "train.eval_every_minutes": POSITIVE, "train.eval_every_tokens": AT_LEAST_1, "train.periodic_eval_rows": AT_LEAST_1,
    "impl.peak_flops": POSITIVE,
}  # fmt: skip


def validate_numbers(cfg: DictConfig) -> None:
    """Every numeric value in its range and the values that depend on each other consistent, so a bad
    number is one line naming the key at load time, never a NaN or a traceback minutes later."""
    for key, valid in NUMBER_RANGES.items():
        problem = valid.problem(key, OmegaConf.select(cfg, key))
        if problem:
            raise ConfigError(problem)
    relations = [
        (cfg.arch.d_model % cfg.arch.n_heads == 0 and (cfg.arch.d_model // cfg.arch.n_heads) % 2 == 0,
         f"arch.d_model={cfg.arch.d_model} must split into arch.n_heads={cfg.arch.n_heads} heads of an even width"),
        *_data_relations(cfg.data),
        (cfg.train.micro_batch_size <= cfg.train.batch_size,
         f"train.micro_batch_size={cfg.train.micro_batch_size} must be at most train.batch_size={cfg.train.batch_size}"),
    ]  # fmt: skip
    _refuse_first(relations, ConfigError)


def validate_data(data: Any, error: type[GpthfError] = ConfigError) -> None:
    """The data group's numbers by the rules above, for a data config that was not loaded here: the
    data layer checks one built elsewhere before it prepares anything."""
    for key, valid in NUMBER_RANGES.items():
        group, _, name = key.partition(".")
        problem = valid.problem(key, getattr(data, name, None)) if group == "data" else None
        if problem:
            raise error(problem)
    _refuse_first(_data_relations(data), error)


def _data_relations(data: Any) -> list[tuple[bool, str]]:
    return [
        (data.max_sentence_len <= data.seq_len,
         f"data.max_sentence_len={data.max_sentence_len} must be at most data.seq_len={data.seq_len}"),
        (data.validation_fraction + data.test_fraction < 1,
         "data.validation_fraction + data.test_fraction must be below 1"),
    ]  # fmt: skip


def _refuse_first(relations: list[tuple[bool, str]], error: type[GpthfError]) -> None:
    for holds, problem in relations:
        if not holds:
            raise error(problem)


def _valid_keys(schema: type) -> list[str]:
    return [f.name for f in fields(schema)]


def _diagnose_override(override: str) -> str | None:
    """Name the unknown key or group option in one override, with what is valid there."""
    key, _, value = override.partition("=")
    key = key.lstrip("+~")
    if key in CONFIG_GROUPS:
        options = sorted(p.stem for p in (CONFIG_DIR / key).glob("*.yaml"))
        unknown = [v.strip() for v in value.strip("[]").split(",") if v.strip() not in options]
        return f"unknown {key} {unknown[0]!r}; choose one of: {', '.join(options)}" if unknown else None
    schema: type = PretrainConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        valid = _valid_keys(schema)
        if part not in valid:
            where = ".".join(parts[:depth]) or "the top level"
            return f"unknown key {key!r} in override {override!r}; valid keys of {where}: {', '.join(valid) or 'none'}"
        section = _section_schema(schema, part)
        if section is None:
            return None
        schema = section
    return None


def _section_schema(schema: type, name: str) -> type | None:
    """The dataclass field `name` of `schema` holds, an optional one too (`WandbConfig | None`);
    None for a plain value."""
    hint = get_type_hints(schema)[name]
    return next((t for t in (hint, *get_args(hint)) if is_dataclass(t)), None)


def _default_loggers(config_name: str) -> set[str]:
    """The `logger` group's choice in the config file's defaults list (`logger: jsonl`)."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")).get("defaults", [])
    for entry in defaults:
        if isinstance(entry, dict) and "logger" in entry:
            choice = entry["logger"]
            return set(choice) if isinstance(choice, list) else {choice}
    return set()


def _tracker_not_chosen(overrides: Sequence[str], config_name: str) -> str | None:
    """A tracker's setting (`logger.wandb.mode=offline`) without the tracker in `logger=[...]`: its
    section does not exist then, and hydra's own error would not say why."""
    chosen = None
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "logger":
            chosen = {v.strip() for v in value.strip("[]").split(",")}
    for override in overrides:
        parts = override.partition("=")[0].lstrip("+~").split(".")
        if len(parts) < 3 or parts[0] != "logger":
            continue  # (its keys are checked by `_diagnose_override`)
        chosen = _default_loggers(config_name) if chosen is None else chosen
        if parts[1] not in chosen:
            return (
                f"{override} sets the {parts[1]} logger, which is not chosen: add "
                f"logger=[{','.join(sorted(chosen | {parts[1]}))}]"
            )
    return None


def load_config(overrides: Sequence[str] = (), config_name: str = "cfg_pretrain") -> DictConfig:
    """Compose `cramming_cfg/<config_name>.yaml` with hydra-style overrides and validate it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not CONFIG_DIR.is_dir():
        raise ConfigError(
            f"config folder {CONFIG_DIR} is missing; install gpthf from a clone with `pip install -e .`"
        )
    for override in overrides:
        problem = _diagnose_override(override)
        if problem:
            raise ConfigError(problem)
    problem = _tracker_not_chosen(overrides, config_name)
    if problem:
        raise ConfigError(problem)
    register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except Exception as err:  # hydra/omegaconf raise many types; all are a bad config for the user
        reasons = [str(err)] + ([str(err.__cause__).splitlines()[0]] if err.__cause__ else [])
        raise ConfigError("invalid config: " + ": ".join(" ".join(r.split()) for r in reasons)) from None
    finally:
        GlobalHydra.instance().clear()
    return finalize_config(cfg)


def register_schema() -> None:
    """The dataclasses above as hydra's `schema` config, which `cfg_pretrain.yaml` starts from."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=PretrainConfig)


def resolve_interpolations(cfg: DictConfig) -> None:
    """Resolve every `${...}` now, so a key or environment variable that does not exist is one line
    naming the config key at load time, not a traceback wherever the value is first read."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except InterpolationResolutionError as err:
        reason = " ".join(str(err).split("\n")[0].split())
        raise ConfigError(f"{err.full_key or 'a config value'} cannot be resolved: {reason}") from None


def finalize_config(cfg: DictConfig) -> DictConfig:
    """A composed config checked for what hydra's types cannot say, then frozen."""
    resolve_interpolations(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"config values missing: {', '.join(missing)}")
    parse_budget_seconds(cfg.budget)
    validate_numbers(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg
