"""`python pretrain.py [arch=gpthf-tiny] [data=default] [budget=24h] [key=value ...]`

Trains until the wall-clock budget is spent, evaluates on the validation split and writes the final
checkpoint under outputs/<name>/<timestamp>/. A hydra application (gpthf/training/app.py): `--help`,
`--cfg job`, `-m` sweeps, `hydra/launcher=joblib`. Configs: cramming_cfg/ (see README).
Distributed: `torchrun --nproc_per_node=N pretrain.py impl=ddp ...` or `impl=deepspeed`.
"""

from __future__ import annotations

import sys

from gpthf.cli import run_cli
from gpthf.training.app import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
