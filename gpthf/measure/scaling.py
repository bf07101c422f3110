"""The scaling study's pieces: the sweep that trains every model kind at every size on the same number
of tokens, reading its runs back, and the Pareto front of quality against generation cost.

Every point comes from a run of the sweep (its `sweep.json`, its checkpoint, its metrics), never from a
number typed in; a failed run is carried as failed, named, and left out of the curves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gpthf.errors import ConfigError
from gpthf.models import SPECS

KINDS = tuple(SPECS)  # every registered model kind, in the registry's order
LADDER = ("1m", "2m", "5m", "12m")  # cramming_cfg/arch/<kind>-<size>.yaml, sized to gpt-<size>


def arch_name(kind: str, size: str) -> str:
    return f"{kind.replace('_', '-')}-{size}"


def sweep_overrides(kinds, sizes, tokens: int, budget: str, sweep_dir: Path, extra=()) -> list[str]:
    """The one `pretrain.py -m` command line of the study: every kind × size on `tokens` tokens with a
    token-driven schedule (so runs are comparable and reproducible; `budget` only caps them)."""
    from gpthf.config import CONFIG_DIR

    archs = [arch_name(k, s) for s in sizes for k in kinds]
    missing = [a for a in archs if not (CONFIG_DIR / "arch" / f"{a}.yaml").is_file()]
    if missing:
        raise ConfigError(
            f"no arch config for {', '.join(missing)}; sizes on the ladder: {', '.join(LADDER)}"
        )
    return [
        "-m",
        f"arch={','.join(archs)}",
        f"train.max_tokens={tokens}",
        f"budget={budget}",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]


@dataclass
class SweepRun:
    job: int | None
    arch: str | None  # the arch option the job ran (None: unknown, the job left no record)
    status: str  # finished | failed
    folder: Path
    error: str | None = None


def read_sweep(sweep_dir: Path) -> list[SweepRun]:
    """The sweep's jobs from its `sweep.json` (written by pretrain.py at the sweep's end)."""
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; give the folder of a finished `pretrain.py -m` sweep")
    runs = []
    for outcome in json.loads(path.read_text()):
        arch = next((o.split("=", 1)[1] for o in outcome.get("overrides", []) if o.startswith("arch=")), None)
        runs.append(
            SweepRun(outcome["job"], arch, outcome["status"], Path(outcome["folder"]), outcome.get("error"))
        )
    return runs


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower cost and lower bits per byte)."""
    front = []
    for i, (cost, bpb) in enumerate(points):
        dominated = any(
            c <= cost and b <= bpb and (c < cost or b < bpb) for j, (c, b) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])
