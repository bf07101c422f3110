"""`python -m gpthf COMMAND`: the package's own commands (training and generation are the root scripts)."""

from __future__ import annotations

import sys

from gpthf.cli import run_cli
from gpthf.errors import GpthfError

COMMANDS = {
    "doctor": "versions, device, attention backends and why not, where data and runs live",
    "lm-eval": 'lm-evaluation-harness\'s command line with the gpthf model (pip install ".[eval]")',
    "gpu-check": "run and measure the CUDA paths on this machine's GPU; writes docs/gpu-check.json",
    "serve": 'an OpenAI-compatible HTTP server for a checkpoint (pip install ".[serve]")',
    "export": 'a checkpoint as a Hugging Face model folder (pip install ".[export]")',
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\n\ncommands:\n" + "\n".join(f"  {k:<9} {v}" for k, v in COMMANDS.items()))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise GpthfError(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}")
    if command == "lm-eval":
        from gpthf.evaluation.lm_eval_cli import cli

        return cli(rest)
    if command == "serve":
        from gpthf.serving.server import main as serve

        return serve(rest)
    if command == "gpu-check":
        from gpthf.gpu_check.check import main as gpu_check

        return gpu_check(rest)
    if command == "export":
        from gpthf.export.cli import main as export

        return export(rest)
    from gpthf import doctor

    return doctor.main(rest)


if __name__ == "__main__":
    sys.exit(run_cli(main))
