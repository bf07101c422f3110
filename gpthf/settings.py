"""The rules a setting's value follows, each stated once, importable without torch or numpy.

A command line checks its flags with these rules before it imports torch (a typo costs no model
load and is one `error:` line), and the library checks its own values with the same rules
(`GenerationSettings`, `SamplingSettings`, the engine's `RequestSettings`, the config schema's
`Range`s), so a flag and the field it sets cannot disagree about what is allowed.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gpthf.errors import ConfigError, GpthfError


def _shown(x: float) -> str:
    """A bound as a person writes it: 4294967296, not 4.29497e+09."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """Where a numeric value may lie (never NaN or infinite); None is always allowed for optional keys."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < x (else low <= x)
    high_open: bool = False
    too_high: Callable[[float], str] | None = None  # why a value above `high` is refused, for the error
    too_low: Callable[[float], str] | None = None  # why a value below `low` is refused, for the error

    def contains(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
            return False
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below

    def describe(self, key: str) -> str:
        """The range around `key`, as the config errors write it: `0 < train.lr ≤ 1`."""
        left = "" if self.low is None else f"{_shown(self.low)} {'<' if self.low_open else '≤'} "
        right = "" if self.high is None else f" {'<' if self.high_open else '≤'} {_shown(self.high)}"
        return f"{left}{key}{right}"

    def bounds(self) -> str:
        """The range as a requirement, as the settings' errors write it: `>= 0`, `in (0, 1]`."""
        if self.low is not None and self.high is not None:
            return (
                f"in {'(' if self.low_open else '['}{_shown(self.low)}, "
                f"{_shown(self.high)}{')' if self.high_open else ']'}"
            )
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_shown(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_shown(self.high)}"
        return ""

    def why_not(self, x: Any) -> str | None:
        """The reason given for a finite `x` outside the range (`too_low`, `too_high`), if any."""
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
            return None
        if self.too_high and self.high is not None and x > self.high:
            return self.too_high(x)
        if self.too_low and self.low is not None and x < self.low:
            return self.too_low(x)
        return None

    def problem(self, key: str, value: Any) -> str | None:
        """`key=value is out of range; valid: ...` for a value outside the range, else None."""
        if value is None or self.contains(value):
            return None
        why = self.why_not(value)
        return f"{key}={value} is out of range; valid: {self.describe(key)}" + (f" ({why})" if why else "")


# The ranges most settings use.
AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(1), Range(0), Range(0, low_open=True)
FRACTION, SHARE = Range(0, 1, high_open=True), Range(0, 1)

_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class Setting:
    """One setting's rule: a value of `kind` in `valid` (None too when `optional`). Its errors read
    `name=value must be ...` (or `--flag=value must be ...` on a command line), so a client that
    maps fields onto settings can tell from the message which field it was."""

    name: str  # the library's name; its flag is --name-with-dashes
    kind: type  # int, float or bool
    valid: Range = Range()
    optional: bool = False
    note: str | None = None  # what a value means, said with every error: "0 = greedy"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def is_kind(self, value: Any) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        wanted = numbers.Integral if self.kind is int else numbers.Real
        return isinstance(value, wanted) and not isinstance(value, bool)

    def problem(self, value: Any) -> str | None:
        """Why `value` cannot be this setting (`must be ...`), or None."""
        if value is None and self.optional:
            return None
        if self.is_kind(value) and (self.kind is bool or self.valid.contains(value)):
            return None
        return f"must be {self.requirement(value)}" + (f" ({self.note})" if self.note else "")

    def requirement(self, value: Any) -> str:
        """What a value must be: an integer of the wrong size hears only the bounds; anything else
        hears the kind too, a float "finite" unless both bounds already rule out infinity."""
        bounds = self.valid.bounds()
        if self.kind is int and self.is_kind(value) and bounds:
            return bounds
        kind = _KIND_NAMES[self.kind]
        if self.kind is float and (self.valid.low is None or self.valid.high is None):
            kind = "a finite number"
        return f"{kind} {bounds}".strip()

    def check(self, value: Any, error: type[GpthfError] = ConfigError, *, as_flag: bool = False) -> Any:
        """`value`, or `error` saying why not, naming the setting (its flag when `as_flag`)."""
        problem = self.problem(value)
        if problem is not None:
            raise error(f"{self.flag if as_flag else self.name}={value!r} {problem}")
        return value

    def argument(self, text: str) -> Any:
        """An argparse `type` for a number setting: a flag's text as its value, refused while the
        arguments are parsed (one error line naming the flag)."""
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_KIND_NAMES[self.kind]}") from None
        problem = self.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{text} {problem}")
        return value


def check_all(
    values: Any, settings: Iterable[Setting], error: type[GpthfError] = ConfigError, *, as_flags: bool = False
) -> None:
    """Each setting's attribute of `values` (a settings object, or parsed command-line arguments
    with `as_flags`, each error then naming the flag as typed) by its rule."""
    for setting in settings:
        setting.check(getattr(values, setting.name), error, as_flag=as_flags)


# Generation: a batch job's settings (GenerationSettings, generate.py) and a request's (RequestSettings).
MAX_NEW_TOKENS = Setting("max_new_tokens", int, AT_LEAST_0)  # 0: the prompts back, nothing generated
MAX_TOKENS = Setting("max_tokens", int, AT_LEAST_1)  # a request's: one that asks for nothing is no request
MAX_SENTENCES = Setting("max_sentences", int, AT_LEAST_1, optional=True, note="leave it out for no limit")
TEMPERATURE = Setting("temperature", float, AT_LEAST_0, note="0 = greedy")
TOP_K = Setting("top_k", int, AT_LEAST_1, optional=True)
TOP_P = Setting("top_p", float, Range(0, 1, low_open=True), optional=True)  # nucleus: this much probability
SEED = Setting("seed", int, AT_LEAST_0, optional=True)  # None: a random seed
SLOTS = Setting("slots", int, POSITIVE)  # rows generated at once (generate.py's --batch-size)
IGNORE_EOS = Setting("ignore_eos", bool)

SAMPLING = (TEMPERATURE, TOP_K, TOP_P)

# Serving: the engine's admission (Engine, gpthf.serving.server's flags) and a request's choices.
MAX_BATCH = Setting("max_batch", int, AT_LEAST_1)  # requests decoding at once
MAX_QUEUE = Setting("max_queue", int, AT_LEAST_1)  # requests waiting for a slot
MAX_STATE_BYTES = Setting(
    "max_state_bytes", int, AT_LEAST_1, optional=True, note="leave it unset for no limit"
)
CHOICES = Setting("n", int, Range(1, 128))  # completions per prompt, as OpenAI allows
