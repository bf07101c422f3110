"""The real server (real engine, real uvicorn) with its engine step made slow or fatal on demand.

`python -m tests.serving.fakes --control DIR -- SERVE ARGS...` runs `python -m gpthf serve SERVE
ARGS...` with `Engine.step` wrapped: it sleeps `DIR/delay` seconds first (a float in the file; no
file, no sleep) and raises when `DIR/die` exists. A test then decides when requests are long and
when the engine thread dies, without a model slow enough on every machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def launch(control: Path, serve_args: list[str]) -> int:
    from gpthf.__main__ import main
    from gpthf.cli import run_cli
    from gpthf.serving.engine import Engine

    real_step = Engine.step

    def step(self) -> bool:
        delay = control / "delay"
        if delay.exists():
            time.sleep(float(delay.read_text() or 0))
        if (control / "die").exists():
            raise RuntimeError("injected engine failure")
        return real_step(self)

    Engine.step = step
    return run_cli(main, ["serve", *serve_args])


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--")
    sys.exit(launch(Path(args[args.index("--control") + 1]), args[split + 1 :]))
