"""pretrain.py as the hydra application users know: --help, --cfg, -m sweeps (comma lists, ranges, the
joblib launcher), hydra.run.dir; a failed job keeps the others' results; every mistake one line."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpthf.cli import EXIT_USER_ERROR, run_cli
from gpthf.config import load_config
from gpthf.training.app import SWEEP_FILE, main
from gpthf.training.checkpoint import latest_checkpoint
from gpthf.training.metrics import read_metrics
from gpthf.training.run_dir import OUTCOME_FILE, claim_run
from gpthf.training.trainer import train
from tests.conftest import REPO, frozen_clock, run_overrides

QUICK = ("budget=1h", "train.max_tokens=1500")  # token-driven: a few steps, the same on every run


def pretrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "pretrain.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-2000:]
    return errors[0]


def test_help_lists_the_config_groups_and_sweep_usage():
    run = pretrain("--help")
    assert run.returncode == 0, run.stderr
    assert "== Config groups" in run.stdout
    for group in ("arch: ", "data: ", "train: ", "impl: "):
        assert group in run.stdout
    assert "gpthf-tiny" in run.stdout and "-m arch=gpt-tiny,gpthf-tiny" in run.stdout


def test_cfg_job_prints_the_composed_config_and_creates_nothing(tmp_path):
    run = pretrain("--cfg", "job", "arch=lstm-tiny", f"output_dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    assert "model: lstm" in run.stdout and "lstm_hidden: 521" in run.stdout
    assert list(tmp_path.iterdir()) == [], "printing a config starts no run"


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "arch=gpt-test,,"], "malformed override 'arch=gpt-test,,'"),
        (["-m", "arch=gpt-test,gpthf-tset"], "run #1 (arch=gpthf-tset): unknown arch 'gpthf-tset'"),
        (["arch=gpt-test,gpthf-test"], "add -m to sweep"),
        (["-m", "train.lr=0.1,nan"], "run #1"),
        (["-m", "trian.seed=range(0,2)"], "unknown key 'trian.seed'"),
        (["hydra/launcher=nope"], "invalid hydra override"),
        (["hydra.run.dirr=x"], "invalid hydra override"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["hydra.job.chdir=true"], "hydra.job.chdir=true is not supported"),
        (["name=${nosuch.key}"], "name cannot be resolved: Interpolation key 'nosuch.key' not found"),
        (["name=${oc.env:GPTHF_NO_SUCH_VARIABLE}"], "Environment variable 'GPTHF_NO_SUCH_VARIABLE' not found"),
        (["--cfg", "job", "name=${nosuch.key}"], "name cannot be resolved"),
        (["data.seq_len=${name}"], "data.seq_len cannot be resolved"),
        (["name=${no_such_resolver:x}"], "Unsupported interpolation type no_such_resolver"),
        (["name=${name}"], "Recursive interpolation"),
        (["budget=1e400h"], "must be positive and finite"),
        (["hydra.run.dir=/nowhere/x${nosuch.key}"], "hydra.run.dir cannot be resolved"),
        (["hydra.job.name=${oc.env:GPTHF_NO_SUCH_VARIABLE}"], "hydra.job.name cannot be resolved"),
        (["-m", "hydra.sweep.dir=/nowhere/y${nosuch.key}"], "hydra.sweep.dir cannot be resolved"),
        (["--config-name", "mine"], "--config-name/--config-dir/--config-path are not supported"),
        (["--config-dir", "/tmp"], "--config-name/--config-dir/--config-path are not supported"),
        pytest.param(
            ["-m", "hydra/launcher=slurm"],
            "needs its plugin: pip install hydra-submitit-launcher",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None,
                reason="the plugin is installed here",
            ),
        ),
    ],
)
def test_a_malformed_command_line_is_one_error_line_and_runs_nothing(tmp_path, capsys, args, message):
    assert run_cli(main, [*args, f"output_dir={tmp_path}"]) == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert message in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("entry", ["gpthf.data.prepare", "gpthf.doctor"])
@pytest.mark.parametrize("override", ["name=${nosuch.key}", "cache_dir=${oc.env:GPTHF_NO_SUCH_VARIABLE}"])
def test_an_unresolvable_interpolation_is_one_line_in_every_entry_point(entry, override, capsys):
    entry_main = importlib.import_module(entry).main
    assert run_cli(entry_main, [override]) == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert "cannot be resolved" in line and override.split("=")[0] in line


def test_sweep_with_a_range_and_a_failing_job_keeps_the_others(data_cache, tmp_path, capsys):
    # init_from=/nonexistent fails when its job starts: jobs 0 and 2 must still finish.
    args = [
        "-m",
        *run_overrides(data_cache, tmp_path, *QUICK),
        "train.seed=range(0,2)",
        "init_from=null,/nonexistent",
    ]
    assert run_cli(main, args) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "2 of 4 sweep runs failed" in line and "#1 train.seed=0 init_from=/nonexistent" in line
    assert "#3 train.seed=1 init_from=/nonexistent" in line and "does not exist" in line
    (sweep,) = (tmp_path / "sweeps").iterdir()
    outcomes = json.loads((sweep / SWEEP_FILE).read_text())
    assert [(o["job"], o["status"]) for o in outcomes] == [
        (0, "finished"), (1, "failed"), (2, "finished"), (3, "failed")
    ]  # fmt: skip
    for outcome in outcomes:
        folder = Path(outcome["folder"])
        assert folder.parent == sweep and (folder / ".hydra" / "config.yaml").is_file()
        assert (folder / "pretrain.log").is_file(), "each job logs into its own folder"
        checkpoint = latest_checkpoint(folder)
        assert (checkpoint is not None and checkpoint.name == "final") == (outcome["status"] == "finished")
    assert "2 of 4 runs finished" in captured.out


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason="pip install hydra-joblib-launcher",
)
def test_joblib_launcher_sweep_runs_jobs_in_parallel_processes(data_cache, tmp_path):
    run = pretrain(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *run_overrides(data_cache, tmp_path, *QUICK),
        "arch=gpthf-test,gpt-test",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in run.stdout
    (sweep,) = (tmp_path / "sweeps").iterdir()
    outcomes = json.loads((sweep / SWEEP_FILE).read_text())
    assert [o["status"] for o in outcomes] == ["finished", "finished"]
    assert sorted(Path(o["folder"]).name for o in outcomes) == ["0-gpthf-kjv", "1-gpt-kjv"]
    for outcome in outcomes:
        assert latest_checkpoint(Path(outcome["run_dir"])).name == "final"


def test_hydra_run_dir_is_the_run_folder_and_is_never_shared(data_cache, tmp_path, capsys):
    folder = tmp_path / "my run"  # a space: the path travels to hydra as a quoted override
    args = [*run_overrides(data_cache, tmp_path / "outputs", *QUICK), f"hydra.run.dir={folder}"]
    assert run_cli(main, args) == 0, capsys.readouterr().err[-2000:]
    assert latest_checkpoint(folder).name == "final"
    assert (folder / ".hydra" / "overrides.yaml").is_file() and (folder / "pretrain.log").is_file()
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("config.yaml"))
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert run_cli(main, args) == EXIT_USER_ERROR, "a second run into the same folder"
    assert "already holds a run" in one_error_line(capsys.readouterr().err)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before, "the refused run wrote nothing into the folder"


def test_default_layout_and_resume_into_the_same_folder(data_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # output_dir relative to the working folder, as the default `outputs`
    args = run_overrides(data_cache, Path("outputs"), "budget=1h", "train.max_tokens=1500")
    assert run_cli(main, args) == 0, capsys.readouterr().err[-2000:]
    tmp_path = tmp_path / "outputs"
    (run_dir,) = (tmp_path / "gpthf-kjv").iterdir()
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "pretrain.log").is_file()
    assert run_cli(main, [*args, "resume=true"]) == EXIT_USER_ERROR, "a finished run is not resumed"
    assert "already finished" in one_error_line(capsys.readouterr().err)
    assert list((tmp_path / "gpthf-kjv").iterdir()) == [run_dir], "the refused resume made no folder"


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="pip install hydra-submitit-launcher",
)
def test_the_shipped_slurm_launcher_config_composes():
    run = pretrain("--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert run.returncode == 0, run.stderr
    assert "SlurmLauncher" in run.stdout and "partition: gpu" in run.stdout


def test_shell_completion_completes_config_groups():
    run = subprocess.run(
        [sys.executable, "pretrain.py", "-sc", "query=bash"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "COMP_LINE": "python pretrain.py arch=gpt-t"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "arch=gpt-tiny" in run.stdout.split() and "arch=gpt-test" in run.stdout.split()


def _run_files(folder: Path) -> dict[str, bytes]:
    """A run's own files (hydra rewrites `.hydra/` and appends to its log on every launch)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != ".lock"
    }


def test_a_rerun_sweep_continues_it_and_never_rewrites_a_finished_job(data_cache, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = ["-m", *run_overrides(data_cache, tmp_path, *QUICK), "train.seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert run_cli(main, args) == 0, capsys.readouterr().err[-2000:]
    first, second = sorted(p for p in sweep.iterdir() if p.is_dir())
    kept = _run_files(first)
    # job #1 killed before its first checkpoint: no outcome, no checkpoint, a config and some metrics
    (second / OUTCOME_FILE).unlink()
    shutil.rmtree(second / "checkpoints")
    for rerun in ([], ["resume=true"]):
        capsys.readouterr()
        assert run_cli(main, [*args, *rerun]) == 0, capsys.readouterr().err[-2000:]
        assert _run_files(first) == kept, "a finished job's files and outcome are kept as they were"
        outcomes = json.loads((sweep / SWEEP_FILE).read_text())
        assert [(o["job"], o["status"]) for o in outcomes] == [(0, "finished"), (1, "finished")]
        assert latest_checkpoint(second).name == "final"
        steps = [r["step"] for r in read_metrics(second) if "loss" in r]
        assert steps == sorted(set(steps)), "the restarted job's metrics hold no step twice"
    kept_second = _run_files(second)
    other = [a.replace("train.seed=0,1", "train.seed=0,2") for a in args]
    capsys.readouterr()
    assert run_cli(main, other) == EXIT_USER_ERROR, "another sweep into this sweep's folder"
    assert "holds another sweep" in one_error_line(capsys.readouterr().err)
    assert _run_files(first) == kept and _run_files(second) == kept_second


def test_a_sweep_job_killed_after_a_checkpoint_resumes_from_it(data_cache, tmp_path):
    folder = tmp_path / "sweep" / "1-gpthf-kjv"
    cfg = load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000"))
    train(cfg, clock=frozen_clock, stop_after_steps=2, run_folder=folder)
    step = latest_checkpoint(folder)
    assert step is not None and step.name.startswith("step-")
    claim = claim_run(cfg, folder, continue_job=True)
    try:
        assert claim.resume_from == step
    finally:
        claim.lock.release()


def _user_folder(root: Path, *names: str) -> Path:
    folder = root / "mine"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("someone: else\n")
    for name in names:
        (folder / name).write_bytes(b"the user's own " + name.encode())
    return folder


@pytest.mark.parametrize(
    "names, extra, message",
    [
        (("loss.png", "metrics.jsonl"), [], "is not empty and holds no run (loss.png, metrics.jsonl)"),
        (("notes.txt",), ["resume=true"], "is not empty and holds no run (notes.txt)"),
        ((), ["resume=true"], "holds no complete checkpoint to resume"),
    ],
)
def test_hydra_run_dir_that_holds_no_run_is_refused_and_left_as_it_was(
    data_cache, tmp_path, capsys, names, extra, message
):
    folder = _user_folder(tmp_path, *names)
    before = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    args = [*run_overrides(data_cache, tmp_path / "outputs", *QUICK), f"hydra.run.dir={folder}", *extra]
    assert run_cli(main, args) == EXIT_USER_ERROR
    assert message in one_error_line(capsys.readouterr().err)
    after = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before, "a refused run leaves nothing behind (no .lock either)"


def test_hydra_run_dir_naming_a_file_is_one_line(data_cache, tmp_path, capsys):
    path = tmp_path / "a-file"
    path.write_text("keep me")
    args = [*run_overrides(data_cache, tmp_path / "outputs", *QUICK), f"hydra.run.dir={path}"]
    assert run_cli(main, args) == EXIT_USER_ERROR
    assert "is a file; give a folder" in one_error_line(capsys.readouterr().err)
    assert path.read_text() == "keep me"


def test_a_stopped_sweep_job_stops_the_sweep_and_a_rerun_resumes_it(data_cache, tmp_path, capsys, monkeypatch):
    """Ctrl-C or SIGTERM inside a job: the job saves a step checkpoint and returns; it is recorded as
    stopped (never finished), the sweep stops, and the same command resumes that job."""
    import gpthf.training.trainer as trainer_module

    real_train = trainer_module.train

    def stopped_at_seed_1(cfg, **kwargs):
        return real_train(cfg, stop_after_steps=2 if cfg.train.seed == 1 else None, **kwargs)

    sweep = tmp_path / "sweep"
    args = ["-m", *run_overrides(data_cache, tmp_path, "budget=1h", "train.max_tokens=3000"),
            "train.seed=0,1,2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    monkeypatch.setattr(trainer_module, "train", stopped_at_seed_1)
    assert run_cli(main, args) == 130, "the sweep stops with the job"
    monkeypatch.setattr(trainer_module, "train", real_train)
    first, second = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert json.loads((second / OUTCOME_FILE).read_text())["status"] == "stopped"
    assert latest_checkpoint(second).name.startswith("step-")
    assert len([p for p in sweep.iterdir() if p.is_dir()]) == 2, "job #2 never started"
    (first / OUTCOME_FILE).unlink()  # job #0 killed after its final checkpoint, before its outcome
    capsys.readouterr()
    assert run_cli(main, args) == 0, capsys.readouterr().err[-2000:]
    outcomes = json.loads((sweep / SWEEP_FILE).read_text())
    assert [(o["job"], o["status"]) for o in outcomes] == [(0, "finished"), (1, "finished"), (2, "finished")]
    steps = [r["step"] for r in read_metrics(second) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[0] == 1, "job #1 resumed: its steps continue, none twice"


def test_an_interpolated_sweep_folder_of_another_sweep_is_refused(data_cache, tmp_path, capsys):
    base = ["-m", *run_overrides(data_cache, tmp_path, *QUICK), f"hydra.sweep.dir={tmp_path}/sweep/${{hydra.job.name}}"]
    assert run_cli(main, base) == 0, capsys.readouterr().err[-2000:]
    (job,) = (p for p in (tmp_path / "sweep" / "pretrain").iterdir() if p.is_dir())
    kept = _run_files(job)
    capsys.readouterr()
    assert run_cli(main, [*base, "train.seed=5"]) == EXIT_USER_ERROR
    assert "of another sweep" in one_error_line(capsys.readouterr().err)
    assert _run_files(job) == kept


def test_a_disk_too_full_for_the_run_config_leaves_the_given_folder_as_it_was(data_cache, tmp_path):
    from tests.test_bad_input import last_error_with_files_limited_to

    folder = tmp_path / "given"
    folder.mkdir()
    args = [*run_overrides(data_cache, tmp_path / "outputs", *QUICK), f"hydra.run.dir={folder}"]
    last = last_error_with_files_limited_to(200, "pretrain.py", *args)
    assert last.startswith("error: could not write") and "config.yaml" in last
    assert list(folder.iterdir()) == [], "no .lock and no torn config.yaml: the folder can be used later"


def test_a_second_sweep_into_a_folder_a_live_sweep_holds_is_refused(data_cache, tmp_path, capsys):
    from gpthf.training.run_dir import RunLock

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    live = RunLock(sweep)
    live.acquire()  # a sweep running now (or one started in the same second, into the same folder)
    try:
        args = ["-m", *run_overrides(data_cache, tmp_path, *QUICK), "train.seed=0,1", f"hydra.sweep.dir={sweep}"]
        assert run_cli(main, args) == EXIT_USER_ERROR
    finally:
        live.release()
    assert "is in use by process" in one_error_line(capsys.readouterr().err)
    assert [p.name for p in sweep.iterdir()] == [".lock"], "no job ran, no record was written"
