"""`pretrain.py` as a hydra application: multirun sweeps, `--cfg`, `--help`, launchers, with gpthf's
own guarantees kept around hydra's machinery.

Hydra composes and launches; gpthf adds three things before and after it:
- every job of a command line is composed and validated before anything runs (`preflight`), so a
  typo or a malformed sweep is one `error:` line, not a traceback after the first job trained;
- a single run locks its run folder before hydra writes its `.hydra/` files there (a folder claimed
  like `create_run_dir` does, so two runs started in the same second never share one, and a resume
  into a live run writes nothing into it);
- a sweep whose job fails keeps going: each job leaves `outcome.json` in its folder, and the sweep
  ends with `sweep.json` and a summary naming every failed job (exit 2 if any failed).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.experimental.callback import Callback

from gpthf.config import CONFIG_DIR, finalize_config, load_config, register_schema
from gpthf.errors import ConfigError, GpthfError, TrainingError

if TYPE_CHECKING:
    from gpthf.training.run_dir import RunClaim

log = logging.getLogger(__name__)

CONFIG_NAME = "cfg_pretrain"
SWEEP_FILE = "sweep.json"  # in the sweep folder: every job's outcome, in job order
HYDRA_PREFIXES = ("hydra.", "hydra/", "+hydra", "~hydra")
# Launcher plugins a user may name with hydra/launcher=..., and where they come from.
LAUNCHER_PACKAGES = {"joblib": "hydra-joblib-launcher", "submitit_local": "hydra-submitit-launcher",
                     "submitit_slurm": "hydra-submitit-launcher", "slurm": "hydra-submitit-launcher", "ray": "hydra-ray-launcher", "rq": "hydra-rq-launcher"}  # fmt: skip


class _JobFailed(BaseException):
    """Carries a single run's `GpthfError` past hydra's handler (which catches `Exception` and prints a
    traceback) to `run_cli`, which prints it as one line."""

    def __init__(self, error: GpthfError):
        super().__init__(str(error))
        self.error = error


def _is_hydra_override(override: str) -> bool:
    return override.startswith(HYDRA_PREFIXES)


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    for override in overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+") == key:
            return value
    return None


def _argument_parser():
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str):
        raise ConfigError(f"pretrain.py: {message} (see python pretrain.py --help)")

    parser.error = error  # argparse's usage dump becomes one line like every other mistake
    return parser


def expand_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The job overrides a sweep stands for (the cartesian product of its comma lists and ranges,
    as hydra's basic sweeper makes it); a single run is one job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, parsed = OverridesParser.create(), []
    for override in overrides:
        try:
            parsed += parser.parse_overrides([override])
        except Exception as err:  # hydra's parser raises several types; each is a malformed override
            reason = " ".join(str(err).split()).split(" See https://")[0]
            raise ConfigError(
                f"malformed override {override!r}: {reason} (grammar: https://hydra.cc/docs/advanced/override_grammar/basic)"
            ) from None
    try:
        return BasicSweeper.split_arguments(parsed, None)[0]
    except Exception as err:
        raise ConfigError(f"cannot sweep over these overrides: {' '.join(str(err).split())}") from None


def check_hydra_overrides(overrides: Sequence[str]) -> None:
    """Compose hydra's own config with the `hydra...` overrides, so a wrong launcher or key is one line,
    and a setting gpthf cannot honour is refused before anything runs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    hydra_overrides = [o for o in overrides if _is_hydra_override(o)]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            composed = compose(config_name=CONFIG_NAME, overrides=hydra_overrides, return_hydra_config=True)
        chdir = composed.hydra.job.chdir
        _resolve_hydra_overrides(composed, hydra_overrides)
    except Exception as err:
        launcher = _override_value(hydra_overrides, "hydra/launcher")
        if launcher in LAUNCHER_PACKAGES and ("Could not find" in str(err) or "Could not load" in str(err)):
            raise ConfigError(
                f"hydra/launcher={launcher} needs its plugin: pip install {LAUNCHER_PACKAGES[launcher]}"
            ) from None
        first = " ".join(str(err).split("\n\n")[0].split())
        raise ConfigError(f"invalid hydra override: {first}") from None
    finally:
        GlobalHydra.instance().clear()
    if chdir:
        raise ConfigError(
            "hydra.job.chdir=true is not supported: gpthf writes every file into the run folder itself and "
            "reads relative paths (output_dir, cache_dir, data.path) from where you started; drop it"
        )


def _resolve_hydra_overrides(composed, hydra_overrides: Sequence[str]) -> None:
    """Each `hydra.x=${...}` given, resolved now: a key or variable that does not exist is one line,
    not hydra's traceback once it builds the run folder. What only a running job knows (its runtime
    values, `${hydra:...}`) is left to hydra."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    for override in hydra_overrides:
        key = override.partition("=")[0].lstrip("+~")
        if not key.startswith("hydra.") or "${" not in override:
            continue
        try:
            OmegaConf.select(composed, key, throw_on_resolution_failure=True)
        except InterpolationResolutionError as err:
            reason = " ".join(str(err).split("\n")[0].split())
            if "HydraConfig was not set" in reason or "Missing mandatory value" in reason:
                continue
            raise ConfigError(f"{key} cannot be resolved: {reason}") from None


def preflight(args) -> tuple[list[str], RunClaim | None]:
    """Validate every job of the command line; for a single run, claim its folder. Returns the
    hydra overrides to add (where the single run writes, or quiet settings for ranks > 0) and the
    claim (None when there is none), which the caller holds while hydra runs."""
    overrides = list(args.overrides)
    if args.shell_completion:
        return [], None  # `-sc install=bash`: hydra's own words, not overrides
    if args.config_name or args.config_dir or args.config_path:
        raise ConfigError(
            "--config-name/--config-dir/--config-path are not supported: gpthf validates, records and "
            "resumes the config cramming_cfg/cfg_pretrain.yaml composes; give your settings as overrides, "
            "or as a file in a config group (cramming_cfg/train/mine.yaml, then train=mine)"
        )
    job_overrides = [o for o in overrides if not _is_hydra_override(o)]
    jobs = expand_jobs(job_overrides)
    if len(jobs) > 1 and not args.multirun:
        raise ConfigError(
            f"the overrides describe {len(jobs)} runs (a comma list or a range); add -m to sweep over them"
        )
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.multirun and distributed:
        raise ConfigError(
            "a sweep (-m) cannot run under torchrun; sweep with a launcher, one torchrun per job"
        )
    check_hydra_overrides(overrides)
    configs, shared = [], set.intersection(*(set(job) for job in jobs))
    for number, job in enumerate(jobs):
        try:
            configs.append(load_config(job))
        except ConfigError as err:
            varying = " ".join(o for o in job if o not in shared)  # a job is named by what the sweep varies
            raise ConfigError(f"run #{number} ({varying}): {err}" if len(jobs) > 1 else str(err)) from None
    info_only = args.cfg or args.help or args.hydra_help or args.info
    if args.multirun and not info_only:
        check_sweep_folder(overrides, jobs)
    if args.multirun or info_only:
        return [], None
    if os.environ.get("RANK", "0") != "0":  # rank 0 owns the run folder and tells the others
        return [
            "hydra.run.dir=.",
            "hydra.output_subdir=null",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ], None
    from gpthf.training.run_dir import claim_run

    given = _override_value(overrides, "hydra.run.dir")
    if given is not None and "${" in given:
        return [], None  # an interpolated folder: known only inside hydra, claimed by `train` there
    claim = claim_run(configs[0], Path(given) if given is not None else None)
    return [] if given is not None else [f"hydra.run.dir={_quote(str(claim.run_dir))}"], claim


def check_sweep_folder(overrides: Sequence[str], jobs: list[list[str]]) -> None:
    """A rerun into an existing sweep folder continues that sweep; one whose job folders hold finished
    jobs of other overrides is another sweep, refused before any job runs (its outcomes are kept)."""
    from gpthf.training.run_dir import OUTCOME_FILE

    given = _override_value(overrides, "hydra.sweep.dir")
    if given is None or "${" in given or not Path(given).is_dir():
        return  # a new sweep folder (timestamped, or named in a way known only inside hydra)
    for path in sorted(Path(given).glob(f"*/{OUTCOME_FILE}")):
        earlier = _read_outcome(path)
        number = earlier.get("job")
        if earlier.get("status") != "finished" or not isinstance(number, int):
            continue
        ours = jobs[number] if 0 <= number < len(jobs) else None
        if ours is None or not _same_job(earlier.get("overrides", []), ours):
            raise ConfigError(
                f"hydra.sweep.dir={given} holds another sweep (its job #{number} ran "
                f"{' '.join(earlier.get('overrides', [])) or 'no overrides'}, "
                + (
                    f"this one's is {' '.join(ours) or 'no overrides'}"
                    if ours is not None
                    else f"this one has {len(jobs)} jobs"
                )
                + "); give a new hydra.sweep.dir, or rerun that sweep to continue it"
            )


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def task(cfg, claim: RunClaim | None = None) -> str | None:
    """One hydra job: train `cfg` in hydra's output folder. In a sweep a failure is recorded, not
    raised, so the sweep's other jobs still run; a single run's failure reaches `run_cli`. `claim`:
    the single run's folder as `preflight` claimed it (used when it is hydra's output folder)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from gpthf.training.checkpoint import FINAL, latest_checkpoint
    from gpthf.training.run_dir import CONFIG_FILE, OUTCOME_FILE, check_resumable, claim_run
    from gpthf.training.trainer import train  # torch is slow to import: only once a job runs

    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        if claim is not None and claim.run_dir.resolve() != folder.resolve():
            claim = None
        main_rank = os.environ.get("RANK", "0") == "0"
        try:
            cfg = finalize_config(cfg)
            return str(train(cfg, claim=claim, run_folder=folder if main_rank and claim is None else None))
        except GpthfError as err:
            raise _JobFailed(err) from None
    outcome = {"job": hydra_cfg.job.num, "overrides": list(hydra_cfg.overrides.task), "folder": str(folder)}
    earlier = _read_outcome(folder / OUTCOME_FILE)
    if earlier.get("status") == "finished":  # a rerun of the sweep: what finished is kept as it is
        if _same_job(earlier.get("overrides", []), outcome["overrides"]):
            log.info("job #%s finished in an earlier run of this sweep: kept (%s)", outcome["job"], folder)
            return earlier.get("run_dir")
        raise _JobFailed(
            ConfigError(
                f"{folder} holds job #{outcome['job']} of another sweep ({' '.join(earlier.get('overrides', []))}), "
                f"kept as it is; give a new hydra.sweep.dir"
            )
        )
    try:
        cfg = finalize_config(cfg)
        checkpoint = latest_checkpoint(folder)
        if checkpoint is not None and checkpoint.name == FINAL:  # killed after its final checkpoint
            check_resumable(OmegaConf.load(folder / CONFIG_FILE), cfg, folder)
            run_dir = folder
        else:  # a rerun of a sweep continues it: a job stopped midway resumes from its last checkpoint
            with claim_run(cfg, folder, continue_job=True) as claim:
                run_dir = train(cfg, claim=claim)
        if latest_checkpoint(run_dir).name == FINAL:
            outcome.update(status="finished", run_dir=str(run_dir))
        else:  # Ctrl-C or SIGTERM: the job saved a checkpoint and stopped; so does the sweep
            outcome.update(
                status="stopped", run_dir=str(run_dir), error="stopped before its budget was spent"
            )
            _write_outcome(folder / OUTCOME_FILE, outcome)
            log.warning("job #%s stopped early; the sweep stops too: run the same command again to continue it",
                        outcome["job"])  # fmt: skip
            raise KeyboardInterrupt
    except Exception as err:  # every failure of one job: recorded, and the sweep goes on
        message = str(err) if isinstance(err, GpthfError) else f"{type(err).__name__}: {err}"
        if not isinstance(err, GpthfError):
            log.exception("job #%s failed", hydra_cfg.job.num)
        log.error("job #%s (%s) failed: %s", hydra_cfg.job.num, " ".join(outcome["overrides"]), message)
        outcome.update(status="failed", error=message)
    _write_outcome(folder / OUTCOME_FILE, outcome)
    return outcome.get("run_dir")


def _task_holding(claim: RunClaim | None):
    """`task` with the single run's claim: hydra calls its task with the config alone (and names the
    job after the function it wraps, so the wrapper keeps `task`'s name)."""
    if claim is None:
        return task

    @functools.wraps(task)
    def claimed_task(cfg) -> str | None:
        return task(cfg, claim)

    return claimed_task


def _same_job(overrides: Sequence[str], others: Sequence[str]) -> bool:
    """Two jobs' overrides describe the same run; `resume=` only says how to continue it."""

    def run(job: Sequence[str]) -> list[str]:
        return [o for o in job if o.partition("=")[0].lstrip("+") != "resume"]

    return run(overrides) == run(others)


def _read_outcome(path: Path) -> dict:
    """A job's recorded outcome; none (or one torn by a kill) reads as no outcome."""
    try:
        outcome = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return outcome if isinstance(outcome, dict) else {}


def _write_outcome(path: Path, value) -> None:
    from gpthf.atomic import atomic_write

    atomic_write(path, json.dumps(value, indent=1) + "\n")


class SweepSummary(Callback):
    """Remembers the sweep folder (the launcher may run jobs in other processes, so their outcomes
    are read back from their folders afterwards), and locks it for the sweep's life: a second sweep
    into the same folder (a rerun while it runs, or two started in the same second) is refused before
    either's jobs or records meet."""

    sweep_dir: Path | None = None
    lock = None

    def on_multirun_start(self, config, **kwargs) -> None:
        from gpthf.training.run_dir import RunInUse, RunLock

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _JobFailed(
                ConfigError(f"cannot create the sweep folder {sweep_dir} ({err.strerror})")
            ) from None
        lock = RunLock(sweep_dir)
        try:
            lock.acquire()
        except RunInUse as err:
            raise _JobFailed(
                ConfigError(
                    f"sweep folder {sweep_dir} is in use by {err.holder}; wait for that sweep to end (then the "
                    f"same command continues it), or give another hydra.sweep.dir"
                )
            ) from None
        except GpthfError as err:
            raise _JobFailed(err) from None
        SweepSummary.sweep_dir, SweepSummary.lock = sweep_dir, lock


def summarize_sweep(sweep_dir: Path) -> list[dict]:
    """Every job's outcome in job order, written to `sweep.json`; a job that left no outcome (killed)
    is listed as such."""
    from gpthf.training.run_dir import OUTCOME_FILE

    outcomes = []
    for path in sorted(sweep_dir.glob(f"*/{OUTCOME_FILE}")):
        outcome = _read_outcome(path)
        if isinstance(outcome.get("job"), int) and "folder" in outcome and "status" in outcome:
            outcomes.append(outcome)  # one torn by a kill reads as none: the folder is listed below
    known = {str(Path(o["folder"]).resolve()) for o in outcomes}
    for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and str(p.resolve()) not in known):
        if (folder / ".hydra").is_dir():
            outcomes.append(
                {"job": None, "folder": str(folder), "status": "failed", "error": "no outcome (killed?)"}
            )
    outcomes.sort(key=lambda o: (o["job"] is None, o["job"] if o["job"] is not None else 0))
    _write_outcome(sweep_dir / SWEEP_FILE, outcomes)
    return outcomes


def main(argv: list[str]) -> int:
    import hydra

    args = _argument_parser().parse_args(argv)
    register_schema()
    extra, claim = preflight(args)
    SweepSummary.sweep_dir = None
    hydra_main = hydra.main(config_path=str(CONFIG_DIR), config_name=CONFIG_NAME, version_base="1.3")(
        _task_holding(claim)
    )
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "pretrain.py", *argv, *extra]
    try:
        with claim if claim is not None else contextlib.nullcontext():  # a run hydra never started: dropped
            hydra_main()
    except _JobFailed as failed:
        raise failed.error from None
    finally:
        sys.argv = saved_argv
        if SweepSummary.lock is not None:
            SweepSummary.lock.release()
            SweepSummary.lock = None
    if not args.multirun or SweepSummary.sweep_dir is None:
        return 0
    outcomes = summarize_sweep(SweepSummary.sweep_dir)
    failed = [o for o in outcomes if o["status"] != "finished"]
    print(f"sweep {SweepSummary.sweep_dir}: {len(outcomes) - len(failed)} of {len(outcomes)} runs finished "
          f"(outcomes in {SweepSummary.sweep_dir / SWEEP_FILE})")  # fmt: skip
    if failed:
        shared = set.intersection(
            *(set(o.get("overrides", [])) for o in outcomes)
        )  # name a job by what varies
        named = "; ".join(
            f"#{o['job']} {' '.join(v for v in o.get('overrides', []) if v not in shared)} ({o['folder']}): {o['error']}"
            for o in failed
        )
        raise TrainingError(f"{len(failed)} of {len(outcomes)} sweep runs failed: {named}")
    return 0
