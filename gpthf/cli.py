"""What every command-line entry point shares: one-line errors instead of tracebacks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from gpthf.errors import GpthfError

EXIT_USER_ERROR = 2


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; a `GpthfError` becomes `error: <message>` on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(sys.argv[1:] if argv is None else argv) or 0
    except GpthfError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
