"""What every command-line entry point shares: one-line errors instead of tracebacks, for bad
arguments too, and argument types that refuse zero or negative counts up front."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from gpthf.errors import ConfigError, GpthfError

EXIT_USER_ERROR = 2


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; a `GpthfError` becomes `error: <message>` on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # A log line that cannot be written (the run's log file on a full disk) must not print a
    # traceback per line: the failed write that matters is reported once, as an `error:` line.
    logging.raiseExceptions = False
    try:
        return main(sys.argv[1:] if argv is None else argv) or 0
    except GpthfError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one `error:` line (exit 2) like every other error, not a usage dump."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def _number(kind: type, minimum: float, strict: bool) -> Callable[[str], int | float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '≥'} {minimum}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 0, strict=True)
non_negative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0, strict=True)


BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def byte_size(text: str) -> int:
    """`4GiB`, `512MB`, `1e9`: a positive number of bytes."""
    number = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(number) :].lower()
    try:
        value = float(number) * BYTE_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 4GiB, 512MiB or 2e9") from None
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be at least 1 byte")
    return int(value)


def writable_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` created if needed and checked writable now, before any long work is done."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write to {flag} {folder} ({err.strerror}); give a writable folder"
        ) from None
    return folder


def stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so a script stops what it started (servers, workers) in
    order on a `kill` as on a Ctrl-C."""
    import signal

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
