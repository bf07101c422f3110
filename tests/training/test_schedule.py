import pytest
from omegaconf import OmegaConf

from gpthf.errors import ConfigError
from gpthf.training.schedule import SCHEDULES, check_schedule, lr_at


def train_cfg(schedule: str, **extra):
    return OmegaConf.create(
        {"lr": 1.0, "schedule": schedule, "warmup_fraction": 0.1, "cooldown_fraction": 0.2, **extra}
    )


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedule_warms_up_peaks_and_ends_at_zero(schedule):
    cfg = train_cfg(schedule)
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(0.05, cfg) == pytest.approx(0.5)
    assert lr_at(0.1, cfg) == pytest.approx(1.0)
    values = [lr_at(p / 100, cfg) for p in range(10, 101)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:])), "never rises after warm-up"
    assert lr_at(0.999999, cfg) == pytest.approx(0.0, abs=1e-4)
    assert lr_at(1.0, cfg) == 0.0 and lr_at(1.5, cfg) == 0.0


def test_trapezoid_is_flat_until_cooldown():
    cfg = train_cfg("trapezoid")
    assert lr_at(0.5, cfg) == 1.0
    assert lr_at(0.82, cfg) == 1.0  # the cooldown is the last 20 % of the 90 % after warm-up
    assert lr_at(0.91, cfg) == pytest.approx(0.5)


def test_unknown_schedule_is_refused():
    with pytest.raises(ConfigError, match="choose one of"):
        check_schedule(train_cfg("exponential"))
