"""`python pretrain.py [arch=gpthf-tiny] [data=default] [budget=24h] [key=value ...]`

Trains until the wall-clock budget is spent, evaluates on the validation split and writes the final
checkpoint under outputs/<name>/<timestamp>/. Configs: cramming_cfg/ (see README).
Distributed: `torchrun --nproc_per_node=N pretrain.py impl=ddp ...` or `impl=deepspeed`.
"""

from __future__ import annotations

import sys

from gpthf.cli import run_cli
from gpthf.config import load_config


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    cfg = load_config(argv)
    from gpthf.training.trainer import train  # after the config is known to be valid: torch is slow to import

    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
