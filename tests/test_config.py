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
    ],
)
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([override])


@pytest.mark.parametrize(
    "budget, seconds", [("24h", 86400), ("90m", 5400), ("30s", 30), ("0.05", 180), (2, 7200)]
)
def test_budget_units(budget, seconds):
    assert parse_budget_seconds(budget) == pytest.approx(seconds)


def test_loaded_config_is_read_only():
    cfg = load_config()
    with pytest.raises(ReadonlyConfigError):
        cfg.data.seq_len = 5
