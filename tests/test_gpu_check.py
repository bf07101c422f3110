"""`python -m gpthf gpu-check` on CPU: its error without a GPU, its stage runner, its readers, its
targets and its report, with fake stages and fabricated results (the real stages need a GPU)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from gpthf.cli import run_cli
from gpthf.errors import ConfigError, GpthfError
from gpthf.gpu_check import check, runner
from gpthf.gpu_check.readers import compile_events, read_compare, read_pytest, read_training
from gpthf.gpu_check.report import DEADLINE_S, build_report, evaluate_targets, previous_stages
from gpthf.gpu_check.runner import NotRun, Stage, run_stage, run_stages
from tests.conftest import REPO, run_script
from tests.test_doctor import fake_v100

PY = sys.executable
FAKE_GPU = {"gpu": "Fake GPU", "gpu_memory_gib": 80.0, "torch": "2.11.0", "cuda": "13.0", "flash_attn": None}


def python(code: str):
    return lambda folder: [PY, "-c", code]


def test_without_cuda_it_is_one_error_line_and_exit_2():
    run = run_script("-m", "gpthf", "gpu-check")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("error: gpu-check needs a CUDA GPU: ") and len(run.stderr.splitlines()) == 1


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_failing_hanging_or_absent_stage_is_recorded_and_the_next_runs(tmp_path):
    child = tmp_path / "child.pid"
    hang = (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(child)!r}, 'w').write(str(p.pid)); p.wait()"
    )

    def absent(folder: Path) -> list[str]:
        raise NotRun("absent", "flash_attn is not installed")

    def unreadable(log: str, folder: Path) -> dict:
        raise KeyError("tokens_per_s")

    stages = [
        Stage("fails", python("import sys; print('boom'); sys.exit(3)"), 30),
        Stage("hangs", python(hang), 2),
        Stage("absent", absent, 30),
        Stage("unreadable", python("pass"), 30, unreadable),
        Stage(
            "passes",
            python("print('Graph break in user code at m.py:3')"),
            30,
            lambda log, f: compile_events(log),
        ),
    ]
    results = run_stages(stages, tmp_path / "work", REPO, dict(os.environ), deadline_s=600)
    assert [r["status"] for r in results.values()] == ["failed", "timed out", "absent", "passed", "passed"]
    assert results["fails"]["exit_code"] == 3 and results["fails"]["last_lines"] == ["boom"]
    assert results["hangs"]["seconds"] < 10 and _gone(int(child.read_text()))  # its whole tree killed
    assert results["absent"]["reason"] == "flash_attn is not installed"
    assert results["unreadable"]["read_error"] == "KeyError: 'tokens_per_s'"
    assert results["passes"]["graph_breaks"] == 1
    assert (tmp_path / "work" / "passes" / "log.txt").read_text().startswith(f"$ {PY} -c ")


def test_stages_past_the_deadline_are_skipped(tmp_path):
    times = iter([0.0, 0.0, 590.0])
    stages = [Stage("first", python("pass"), 30), Stage("second", python("pass"), 30)]
    results = run_stages(stages, tmp_path, REPO, dict(os.environ), 600, clock=lambda: next(times))
    assert results["first"]["status"] == "passed"
    assert results["second"]["status"] == "skipped" and "out of time" in results["second"]["reason"]


def test_a_stage_starts_in_an_empty_folder(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "stale.jsonl").write_text("from an earlier run")
    run_stage(Stage("s", python("pass"), 30), folder, REPO, dict(os.environ), 30)
    assert sorted(p.name for p in folder.iterdir()) == ["log.txt", "tmp"]


def test_a_stage_writes_its_temporary_files_inside_its_folder(tmp_path):
    folder = tmp_path / "stage"
    code = "import tempfile; print('TEMP', tempfile.gettempdir())"
    run_stage(Stage("s", python(code), 30), folder, REPO, {**os.environ, "TMPDIR": "/tmp"}, 30)
    assert f"TEMP {folder / 'tmp'}" in (folder / "log.txt").read_text()


@pytest.mark.parametrize("how", ["a file in its place", "rmtree refused"])
def test_a_stage_folder_that_cannot_be_prepared_is_one_error(tmp_path, monkeypatch, how):
    folder = tmp_path / "stage"
    if how == "a file in its place":
        folder.write_text("not a folder")
    else:
        folder.mkdir()

        def refuse(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(runner.shutil, "rmtree", refuse)
    with pytest.raises(ConfigError, match=r"cannot use the stage folder .*stage \(.+\); make it"):
        run_stage(Stage("s", python("pass"), 30), folder, REPO, dict(os.environ), 30)


GRAPH_LOG = """\
V1204 symbolic_convert.py:5124] [0/0] [__graph_breaks] Graph break in user code at /m/gpthf.py:40
V1204 symbolic_convert.py:5124] [0/0] [__graph_breaks] Graph Break Reason: Encountered graph break
V1204 guards.py:5396] [0/1] [__recompiles] Recompiling function forward in /m/gpthf.py:30
V1204 guards.py:5396] [0/1] [__recompiles]     triggered by the following guard failure(s):
V1204 symbolic_convert.py:5131] [0/1] [__graph_breaks] Graph break (user stack suppressed due to duplicate graph break) in user code at /m/gpthf.py:40
V1204 guards.py:5396] [0/2] [__recompiles] Recompiling function forward in /m/gpthf.py:30
W1204 cudagraph_utils.py] [__perf_hints] skipping cudagraphs due to mutated inputs (2 instances)
"""


def test_compile_events_count_torch_log_records():
    events = compile_events(GRAPH_LOG)
    assert events == {
        "graph_breaks": 2,
        "graph_break_sites": ["/m/gpthf.py:40"],
        "recompiles": 2,
        "cudagraph_skips": 1,
    }


def test_pytest_counts_come_from_its_last_line():
    log = "FAILED tests/cuda/t.py::x - assert 3 passed\n===== 1 failed, 12 passed, 2 skipped, 1 error in 9.1s =====\n"
    assert read_pytest(log, Path("."))["tests"] == {"failed": 1, "passed": 12, "skipped": 2, "errors": 1}


def test_training_tokens_per_s_leaves_out_the_compiling_window(tmp_path):
    run = tmp_path / "gpthf" / "20260101-000000"
    run.mkdir(parents=True)
    records = [
        {"step": 10, "tokens": 100, "tokens_per_s": 5.0},  # the window that compiled
        {"step": 20, "tokens": 200, "tokens_per_s": 1000.0},
        {"step": 20, "tokens": 200, "val_loss": 9.9, "eval_s": 1.0},  # a validation while training
        {"step": 30, "tokens": 300, "tokens_per_s": 1200.0},
        {"step": 30, "tokens": 300, "val_loss": 4.5, "ranks_agree": True},  # the run's final record
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figures = read_training("Recompiling function forward\n", tmp_path)
    assert figures["tokens_per_s"] == 1100 and figures["val_loss"] == 4.5 and figures["recompiles"] == 1


def test_compare_reads_the_ratio_at_2048_by_8(tmp_path):
    results = {
        "dtype": "bf16",
        "device": "cuda:0",
        "decode": [
            {"model": m, "strategy": "cached", "context": 2048, "batch": 8, "tokens_per_s": s}
            for m, s in (("gpthf", 900.0), ("gpt", 250.0))
        ],
        "ratios": [
            {
                "context": 2048,
                "batch": 8,
                "gpthf_cached_over_gpt_cached": 3.6,
                "gpthf_state_over_gpt_state": 0.1,
                "gpthf_compiled_over_gpt_compiled": 4.1,
            }
        ],
        "state_budget_ratios": {"2048": 9.5},
    }
    (tmp_path / "compare.json").write_text(json.dumps(results))
    figures = read_compare("", tmp_path)
    assert figures["decode_gpthf_over_gpt"] == 3.6 and figures["budget_gpthf_over_gpt"] == 9.5
    assert figures["decode_tokens_per_s"] == {"gpthf": 900.0, "gpt": 250.0}
    assert figures["decode_compiled_gpthf_over_gpt"] == 4.1


def test_the_decode_target_reads_the_compiled_pair_where_it_ran():
    results = good_results()
    results["compare"].update(decode_gpthf_over_gpt=1.2, decode_compiled_gpthf_over_gpt=3.4)
    assert evaluate_targets(results, NAMES)["decode_ratio"] == {
        "target": "GPTHF / GPT decode tokens/s >= 3x at 2,048 x 8 (bf16, compiled)",
        "value": 3.4,
        "met": True,
    }
    results["compare"]["decode_compiled_gpthf_over_gpt"] = 2.5  # the eager pair cannot stand in for it
    assert not evaluate_targets(results, NAMES)["decode_ratio"]["met"]


NAMES = ["cuda-tests", "generate-eager", "generate-compiled", "compare", "train-gpthf-flash"]


def good_results() -> dict[str, dict]:
    return {
        "cuda-tests": {"status": "passed", "seconds": 90.0, "tests": {"passed": 20, "skipped": 2}},
        "generate-eager": {"status": "passed", "seconds": 20.0, "completions": ["a b", "c d"]},
        "generate-compiled": {
            "status": "passed",
            "seconds": 60.0,
            "completions": ["a b", "c d"],
            "cudagraph_skips": 0,
        },  # fmt: skip
        "compare": {"status": "passed", "seconds": 80.0, "decode_gpthf_over_gpt": 3.2},
        "train-gpthf-flash": {"status": "absent", "seconds": 0.0, "reason": "not installed"},
    }


def test_targets_met_by_good_results():
    targets = evaluate_targets(good_results(), NAMES)
    assert all(t["met"] for t in targets.values()), targets
    assert targets["compiled_equals_eager"]["value"] == "2 of 2 prompts"
    assert targets["under_deadline"]["value"] == 250.0


def test_targets_not_met_each_for_its_own_reason():
    results = good_results()
    results["cuda-tests"].update(status="failed", tests={"passed": 19, "failed": 1})
    results["generate-compiled"].update(completions=["a b", "c e"], cudagraph_skips=3)
    results["compare"]["decode_gpthf_over_gpt"] = 2.9
    results["train-gpthf-flash"] = {"status": "timed out", "seconds": 400.0}
    targets = evaluate_targets(results, NAMES)
    assert not any(t["met"] for t in targets.values()), targets
    assert targets["compiled_equals_eager"]["value"] == "1 of 2 prompts"
    assert targets["cudagraph_skips"]["value"] == 3


def test_a_stage_that_did_not_run_meets_no_target():
    targets = evaluate_targets({}, NAMES)
    assert not any(t["met"] for t in targets.values())
    assert build_report(FAKE_GPU, {}, NAMES, {}, "cmd")["stages"] == {}


def test_the_deadline_target_counts_this_runs_seconds_only():
    earlier = {n: r for n, r in good_results().items() if n != "compare"}
    earlier["cuda-tests"]["seconds"] = 550.0  # from another run: not added to this one's
    rerun = {"compare": {**good_results()["compare"], "seconds": 80.0}}
    target = build_report(FAKE_GPU, rerun, NAMES, earlier, "cmd")["targets"]["under_deadline"]
    assert target["value"] is None and not target["met"]
    assert target["reason"] == "not evaluated: this run ran 1 of the 5 stages"
    full = build_report(FAKE_GPU, good_results(), NAMES, earlier, "cmd")["targets"]["under_deadline"]
    assert full == {"target": "every stage run within 10 minutes", "value": 250.0, "met": True}


def test_each_stage_result_says_which_versions_made_it(tmp_path):
    out = tmp_path / "gpu-check.json"
    older = {
        "gpu": "Fake GPU",
        "torch": "2.10.0",
        "cuda": "12.8",
        "stages": {"cuda-tests": {"status": "passed"}},
    }
    out.write_text(json.dumps(older))
    rerun = {"compare": {"status": "passed", "seconds": 1.0}}
    stages = build_report(FAKE_GPU, rerun, NAMES, previous_stages(out, "Fake GPU"), "cmd")["stages"]
    assert (stages["cuda-tests"]["torch"], stages["cuda-tests"]["cuda"]) == ("2.10.0", "12.8")
    assert (stages["compare"]["torch"], stages["compare"]["cuda"]) == ("2.11.0", "13.0")


@pytest.fixture
def fake_check(tmp_path, monkeypatch):
    """gpu-check's main with a fake GPU, its work folder in tmp_path and two quick fake stages."""
    monkeypatch.setattr(check, "gpu_info", lambda: dict(FAKE_GPU))
    monkeypatch.setattr(check, "WORK_DIR", str(tmp_path / "work"))
    stages = [
        Stage("cuda-tests", python("print('3 passed in 1.0s')"), 30, read_pytest),
        Stage("compare", python("import sys; sys.exit(1)"), 30),
    ]
    monkeypatch.setattr(check, "build_stages", lambda *args: stages)
    monkeypatch.setattr(check, "install_wheels", lambda root, work: None)
    return tmp_path / "gpu-check.json"


def test_the_report_is_written_and_a_rerun_of_one_stage_keeps_the_others(fake_check, capsys):
    assert check.main(["--out", str(fake_check)]) == 1  # the decode target is not met
    report = json.loads(fake_check.read_text())
    assert report["gpu"] == "Fake GPU" and list(report["stages"]) == ["cuda-tests", "compare"]
    assert report["targets"]["cuda_tests_pass"] == {
        "target": "all CUDA tests pass", "value": {"passed": 3}, "met": True,
    }  # fmt: skip
    assert not report["targets"]["decode_ratio"]["met"]
    assert "NOT MET  GPTHF / GPT decode" in capsys.readouterr().out
    first = report["stages"]["cuda-tests"]

    check.main(["--out", str(fake_check), "--stages", "compare"])
    again = json.loads(fake_check.read_text())
    assert again["stages"]["cuda-tests"] == first and again["targets"]["cuda_tests_pass"]["met"]
    assert again["targets"]["under_deadline"]["reason"].startswith("not evaluated")
    assert first["torch"] == FAKE_GPU["torch"]
    assert sorted(p.name for p in fake_check.parent.iterdir()) == ["gpu-check.json", "work"]  # no temporary


def test_a_longer_deadline_only_stops_stages_later(fake_check):
    check.main(["--out", str(fake_check), "--deadline", "1200"])
    target = json.loads(fake_check.read_text())["targets"]["under_deadline"]
    assert target["target"] == "every stage run within 10 minutes"
    slow = {n: {**r, "seconds": 700.0 / len(NAMES)} for n, r in good_results().items()}
    assert not evaluate_targets(slow, NAMES)["under_deadline"]["met"]  # 700 s: over the target's 600


def test_an_out_folder_is_refused_before_any_stage_runs(fake_check):
    with pytest.raises(ConfigError, match=r"--out .* is a folder; give the JSON file to write"):
        check.main(["--out", str(fake_check.parent)])
    assert not (fake_check.parent / "work").exists()


def test_the_summary_is_printed_before_the_json_is_written(fake_check, monkeypatch, capsys):
    def full_disk(path, text, kept):
        raise GpthfError(f"could not write {path} (No space left on device); {kept}")

    monkeypatch.setattr(check, "atomic_write", full_disk)
    with pytest.raises(GpthfError, match="the results are in the summary above"):
        check.main(["--out", str(fake_check)])
    printed = capsys.readouterr().out
    assert "cuda-tests" in printed and "NOT MET  GPTHF / GPT decode" in printed


def test_a_work_folder_that_cannot_be_made_is_one_error_line(fake_check, capsys):
    Path(check.WORK_DIR).write_text("a file where the work folder goes")
    assert run_cli(check.main, ["--out", str(fake_check)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot prepare ") and len(err.splitlines()) == 1


def test_gpu_info_says_bf16_only_where_the_gpu_computes_it(monkeypatch):
    fake_v100(monkeypatch)  # torch.cuda.is_bf16_supported() says True there: emulation
    info = check.gpu_info()
    assert info["gpu"] == "Tesla V100-SXM2-16GB" and info["bf16"] is False


# Run as a separate process: gpu-check with three fake stages, the second of which sleeps.
INTERRUPTED_RUN = """
import signal
import sys
from pathlib import Path

# Ctrl-C as in a terminal: a test process started in the background (nohup ... &) inherits SIGINT
# ignored, and Python then never raises KeyboardInterrupt for it.
signal.signal(signal.SIGINT, signal.default_int_handler)
from gpthf.cli import run_cli
from gpthf.gpu_check import check
from gpthf.gpu_check.readers import read_pytest
from gpthf.gpu_check.runner import Stage

tmp = Path(sys.argv[1])
sleeper = f"import os; open({str(tmp / 'sleep.pid')!r}, 'w').write(str(os.getpid())); os.execvp('sleep', ['sleep', '30'])"
check.gpu_info = lambda: {"gpu": "Fake GPU", "gpu_memory_gib": 80.0, "torch": "2.11.0", "cuda": "13.0", "flash_attn": None}
check.install_wheels = lambda root, work: None
check.WORK_DIR = str(tmp / "work")
check.build_stages = lambda *args: [
    Stage("cuda-tests", lambda folder: [sys.executable, "-c", "print('3 passed in 1.0s')"], 30, read_pytest),
    Stage("compare", lambda folder: [sys.executable, "-c", sleeper], 60),
    Stage("after", lambda folder: [sys.executable, "-c", "pass"], 30),
]
sys.exit(run_cli(check.main, ["--out", str(tmp / "gpu-check.json")]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_kills_the_running_stage_and_reports_the_finished_ones(tmp_path, signum):
    check_run = subprocess.Popen(
        [PY, "-c", INTERRUPTED_RUN, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    pid_file = tmp_path / "sleep.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        assert check_run.poll() is None, check_run.communicate()
        time.sleep(0.05)
    sleep_pid = int(pid_file.read_text())
    try:
        check_run.send_signal(signum)
        out, err = check_run.communicate(timeout=30)
        assert check_run.returncode == 130, err
        assert _gone(sleep_pid)
        with pytest.raises(ProcessLookupError):
            os.kill(sleep_pid, 0)
    finally:  # a failed assertion leaves no sleeper behind
        check_run.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(sleep_pid, signal.SIGKILL)
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert {n: r["status"] for n, r in report["stages"].items()} == {
        "cuda-tests": "passed",
        "compare": "interrupted",
    }
    assert report["targets"]["under_deadline"]["reason"] == "not evaluated: this run was interrupted"
    assert "compare" in out and "interrupted" in out  # the summary


def test_sigterm_is_put_back_after_the_check(fake_check):
    before = signal.getsignal(signal.SIGTERM)
    check.main(["--out", str(fake_check)])
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_unknown_stage_is_refused_with_the_names(fake_check):
    with pytest.raises(ConfigError, match="unknown stage.*train-gpt-sdpa; choose from: cuda-tests, compare"):
        check.main(["--out", str(fake_check), "--stages", "train-gpt-sdpa"])


def test_the_stages_train_generate_and_compare_as_the_issue_asks(tmp_path):
    stages = {s.name: s for s in check.build_stages(REPO, tmp_path, 60.0, None)}
    assert stages["train-gpt-flex"].timeout_s == 60.0 + check.COMPILE_ALLOWANCE_S
    assert list(stages)[:7] == [
        "doctor",
        "data",
        "cuda-tests",
        "train-gpthf-sdpa",
        "generate-eager",
        "generate-compiled",
        "compare",
    ]  # fmt: skip  (the targets' stages first: a deadline cuts the rest)
    assert {f"train-{m}-{b}" for m in ("gpthf", "gpt") for b in ("sdpa", "flex", "flash")} <= set(stages)
    train = stages["train-gpt-flex"].command(tmp_path)
    assert {"arch=gpt-tiny", "budget=60s", "impl.attention=flex", "impl.compile=true"} <= set(train)
    assert stages["train-gpt-flex"].env["TORCH_LOGS"] == "graph_breaks,recompiles"
    compare = stages["compare"].command(tmp_path)
    assert (
        compare[compare.index("--device") + 1] == "cuda" and compare[compare.index("--dtype") + 1] == "bf16"
    )
    with pytest.raises(NotRun, match="train-gpthf-sdpa first"):
        stages["generate-compiled"].command(tmp_path / "generate-compiled")
    tests = stages["cuda-tests"].command(tmp_path / "cuda-tests")  # pytest's tmp_path in its own folder
    assert tests[tests.index("--basetemp") + 1] == str(tmp_path / "cuda-tests" / "pytest")


@pytest.mark.skipif(check.module_found("flash_attn"), reason="plans the check of a box without flash-attn")
def test_the_default_stages_are_planned_to_fit_the_deadline(tmp_path, capsys):
    assert check.parse_args([]).duration == check.DEFAULT_DURATION_S == 30.0
    stages = check.build_stages(REPO, tmp_path, check.DEFAULT_DURATION_S, None)
    assert sum(stage.planned_s for stage in stages) <= DEADLINE_S
    check.warn_if_over_plan(stages, DEADLINE_S)
    assert capsys.readouterr().err == ""
    check.warn_if_over_plan(check.build_stages(REPO, tmp_path, 60.0, None), DEADLINE_S)
    assert "the last ones will be skipped" in capsys.readouterr().err


def test_the_wheels_hold_every_module_a_stage_runs(tmp_path):
    """A stage run as `python -m MODULE` needs MODULE on the box: gpthf's own, or installed from the wheels."""
    modules = set()
    for stage in check.build_stages(REPO, tmp_path, 30.0, None):
        try:
            command = stage.command(tmp_path / stage.name)
        except NotRun:
            continue
        if "-m" in command:
            modules.add(command[command.index("-m") + 1].split(".")[0])
    assert modules - {"gpthf"} == {"pytest"} and "pytest" in check.NEEDED
    script = (REPO / "eval" / "gpu_wheels.sh").read_text()
    pinned = {name.lower() for name in re.findall(r"^\s+([\w.-]+)==", script, re.MULTILINE)}
    assert set(check.NEEDED.values()) | {"pluggy", "iniconfig", "pygments"} <= pinned


def test_missing_packages_without_wheels_point_at_the_script(tmp_path):
    with pytest.raises(ConfigError, match=r"no-such-dist not installed and no wheels .*eval/gpu_wheels\.sh"):
        check.install_wheels(tmp_path, tmp_path / "work", needed={"gpthf_no_such_module": "no-such-dist"})


def _wheel(folder: Path, module: str) -> Path:
    """A minimal pure-Python wheel holding `module`."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{module}-1.0.dist-info"
    files = {
        f"{module}.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    path = folder / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def test_wheels_are_installed_into_the_work_folder_once(tmp_path, monkeypatch):
    module = "gpthf_gpu_check_fake"
    _wheel(tmp_path / check.WHEELS_DIR, module)
    work = tmp_path / "work"
    site = check.install_wheels(tmp_path, work, needed={module: "fake"})
    assert site == work / "site" and (site / f"{module}.py").is_file()

    def no_pip(*args, **kwargs):
        raise AssertionError("installed again")

    monkeypatch.setattr(check.subprocess, "run", no_pip)
    assert check.install_wheels(tmp_path, work, needed={module: "fake"}) == site
    env = check.stage_env(tmp_path, work, site)
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(site), str(tmp_path)]
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith(str(work))
    assert env["XDG_CACHE_HOME"].startswith(str(work)) and env["PIP_NO_CACHE_DIR"] == "1"


def test_pip_installs_without_its_cache_and_with_its_temporary_files_inside(tmp_path, monkeypatch):
    module = "gpthf_gpu_check_fake"
    _wheel(tmp_path / check.WHEELS_DIR, module)
    seen = {}

    def fake_pip(command, **kwargs):
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(command, 1, "", "ERROR: boom")

    monkeypatch.setattr(check.subprocess, "run", fake_pip)
    with pytest.raises(ConfigError, match=r"installing .* failed \(ERROR: boom\)"):
        check.install_wheels(tmp_path, tmp_path / "work", needed={module: "fake"})
    assert seen["PIP_NO_CACHE_DIR"] == "1" and seen["TMPDIR"] == str(tmp_path / "work" / "tmp")


def test_a_python_without_pip_is_told_so(tmp_path, monkeypatch):
    module = "gpthf_gpu_check_fake"
    _wheel(tmp_path / check.WHEELS_DIR, module)
    monkeypatch.setattr(check, "module_found", lambda name: name != "pip")
    with pytest.raises(
        ConfigError, match=r"fake not installed, and this python \(.+\) has no pip to install"
    ):
        check.install_wheels(tmp_path, tmp_path / "work", needed={module: "fake"})
