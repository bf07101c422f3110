"""`python -m gpthf export --ckpt RUN --out DIR [--dtype fp32|bf16] [--force]`: a checkpoint as a
Hugging Face model folder (see docs/export.md).

A GPT becomes a plain LlamaForCausalLM folder; GPTHF and the other kinds a trust_remote_code folder
that runs the installed gpthf. --ckpt DIR of generate.py, the eval scripts and the server reads the
folder back. DIR must be new or empty; --force replaces an earlier export there.
"""

from __future__ import annotations

import argparse

from gpthf.cli import ArgumentParser
from gpthf.errors import GpthfError
from gpthf.export import EXPORT_DTYPES


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m gpthf export", description=__doc__)
    parser.add_argument(
        "--ckpt", required=True, help="checkpoint folder, or a run folder (its newest checkpoint)"
    )
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument(
        "--dtype", default="fp32", choices=EXPORT_DTYPES, help="number format of the stored weights"
    )
    parser.add_argument("--force", action="store_true", help="replace the earlier export at --out")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        import transformers  # noqa: F401  (the folder's config classes are transformers')
    except ImportError:
        raise GpthfError('python -m gpthf export needs transformers: pip install ".[export]"') from None
    from gpthf.export import remote_code
    from gpthf.export.folder import export_checkpoint

    folder, architecture = export_checkpoint(args.ckpt, args.out, args.dtype, args.force)
    remote = ", trust_remote_code=True" if architecture == remote_code.ARCHITECTURE else ""
    loads = f"AutoModelForCausalLM.from_pretrained({str(folder)!r}{remote})"
    print(f"wrote {folder}: {loads} loads it as {architecture}")
    return 0
