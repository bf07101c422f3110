import re

import pytest
from omegaconf.errors import ReadonlyConfigError

from gpthf.config import load_config, parse_budget_seconds
from gpthf.errors import ConfigError


def test_default_config_composes_every_group():
    cfg = load_config()
    assert cfg.arch.model == "gpthf" and cfg.data.source == "kjv" and cfg.impl.attention == "sdpa"
    assert cfg.name == "gpthf-kjv"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.seq_lenn=5", "valid keys of data: .*seq_len"),
        ("+data.foo=1", "valid keys of data"),
        ("trian.seed=1", "valid keys of the top level: arch, data, train, impl"),
        ("arch=nope", "choose one of: .*gpthf-tiny"),
        ("data.seq_len=abc", "could not be converted to Integer"),
        ("budget=abc", "not a duration"),
        ("budget=0", "must be positive"),
        ("budget=-1h", "not a duration"),
        ("budget=1e400h", "must be positive and finite"),
        ("budget=1e-400", "must be positive and finite"),
        ("budget=nan", "not a duration"),
        ("budget=inf", "not a duration"),
        ("budget=1e", "not a duration"),
        ("name=${nosuch.key}", "name cannot be resolved: Interpolation key 'nosuch.key' not found"),
        ("data.seq_len=${oc.env:GPTHF_NO_SUCH_VARIABLE}", "data.seq_len cannot be resolved"),
    ],
)
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([override])


@pytest.mark.parametrize(
    "budget, seconds",
    [("24h", 86400), ("90m", 5400), ("30s", 30), ("0.05", 180), (2, 7200), ("1e-07", 0.00036), (1e-07, 0.00036),
     ("2e1m", 1200), ("1.5E+1s", 15)],  # hydra turns budget=0.0000001 into the float 1e-07
)
def test_budget_units(budget, seconds):
    assert parse_budget_seconds(budget) == pytest.approx(seconds)


def test_loaded_config_is_read_only():
    cfg = load_config()
    with pytest.raises(ReadonlyConfigError):
        cfg.data.seq_len = 5


def _numeric_fields() -> set[str]:
    import dataclasses

    from gpthf.config import PretrainConfig

    found = set()
    for group in dataclasses.fields(PretrainConfig):
        if not dataclasses.is_dataclass(group.default_factory):
            continue
        for f in dataclasses.fields(group.default_factory):
            if any(t in str(f.type) for t in ("int", "float")):
                found.add(f"{group.name}.{f.name}")
    return found


def test_every_numeric_field_has_a_range():
    from gpthf.config import NUMBER_RANGES

    assert _numeric_fields() == set(NUMBER_RANGES)


def _out_of_range(key: str) -> str:
    from gpthf.config import NUMBER_RANGES

    valid = NUMBER_RANGES[key]
    if valid.low is not None:
        return str(valid.low - 1 if not valid.low_open else valid.low)
    if valid.high is not None:
        return str(valid.high + 1)
    return "nan"


@pytest.mark.parametrize("key", sorted(_numeric_fields() - {"data.split_seed"}))
def test_an_out_of_range_number_is_one_error_naming_its_key_and_range(key):
    value = _out_of_range(key)
    with pytest.raises(ConfigError, match=rf"^{key}=\S+ is out of range; valid: .*{key}"):
        load_config([f"{key}={value}"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=nan", "train.lr=nan is out of range"),
        ("train.lr=inf", "train.lr=inf is out of range"),
        ("train.lr=1e4", "valid: 0 < train.lr ≤ 1"),
        ("arch.rope_base=0", "valid: 1 < arch.rope_base"),
        ("train.max_tokens=-1000", "valid: 1 ≤ train.max_tokens"),
        ("arch.n_heads=3", "must split into arch.n_heads=3 heads"),
        ("train.micro_batch_size=64", "at most train.batch_size=32"),
        ("data.max_sentence_len=512", "at most data.seq_len=256"),
        ("train.warmup_fraction=1", r"valid: 0 ≤ train.warmup_fraction < 1"),
    ],
)
def test_values_that_would_end_in_nan_or_a_traceback_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config([override])
