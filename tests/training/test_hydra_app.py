"""pretrain.py as the hydra application users know: --help, --cfg, -m sweeps (comma lists, ranges, the
joblib launcher), hydra.run.dir; a failed job keeps the others' results; every mistake one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpthf.cli import EXIT_USER_ERROR, run_cli
from gpthf.training.app import SWEEP_FILE, main
from gpthf.training.checkpoint import latest_checkpoint
from tests.conftest import REPO, run_overrides

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
    ],
)
def test_a_malformed_command_line_is_one_error_line_and_runs_nothing(tmp_path, capsys, args, message):
    assert run_cli(main, [*args, f"output_dir={tmp_path}"]) == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert message in line
    assert list(tmp_path.iterdir()) == []


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
