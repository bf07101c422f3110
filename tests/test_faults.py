"""Faults: a process killed with SIGKILL while it prepares data or writes a checkpoint, and reruns.

The contract: the next run recovers (rebuilds the data, resumes the training) and loses nothing that
was complete. A kill in the middle of training steps is tested in tests/training/test_trainer.py.
Also here: two runs of one seed and config write the same metrics.jsonl, and the full-disk table: each
writer the disk has no room for stops with one error line naming what was kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpthf.config import load_config
from gpthf.data.dataset import STATS_FILE, prepare_data
from gpthf.loading import load_model_from_checkpoint
from gpthf.training.checkpoint import (
    WEIGHTS_FILE,
    latest_checkpoint,
    recover_interrupted_writes,
    resolve_checkpoint,
)
from gpthf.training.metrics import WALL_CLOCK_FIELDS, read_metrics
from gpthf.training.trainer import train
from tests.conftest import REPO, frozen_clock, run_overrides, run_script, tiny_overrides


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 90) -> None:
    """SIGKILL `proc` as soon as `ready()` holds; fails if it exits first."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the process ended before the fault: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the awaited moment never came"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()


def test_kill_9_during_data_preparation_is_rebuilt(tmp_path):
    rng = random.Random(0)
    words = "the king went to a city of stone and the people sang with him in spring".split()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for doc in range(30):  # ~1 MB: packing takes a second or more, time enough to land inside it
        sentences = (" ".join(rng.choice(words) for _ in range(12)).capitalize() + "." for _ in range(2500))
        (corpus / f"doc{doc}.txt").write_text(" ".join(sentences))
    cache = tmp_path / "cache"
    args = tiny_overrides(cache, corpus)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpthf.data.prepare", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _kill_when(proc, lambda: any(cache.glob("*.partial-*/tokenizer.json")))  # tokenizer done, packing
    assert not list(cache.glob(f"*/{STATS_FILE}")), "a killed build never looks finished"
    assert list(cache.glob("*.partial-*")), "the kill landed inside the build"
    prepared = prepare_data(load_config(args), progress=False)
    assert [p.name for p in cache.iterdir()] == [prepared.path.name], "the dead build's leftovers are gone"
    assert prepared.stats["splits"]["train"]["rows"] > 0


DIE_IN_SECOND_CHECKPOINT = """
import os, signal, sys
from gpthf.config import load_config
from gpthf.training import checkpoint
from gpthf.training.trainer import train

real_save_file, calls = checkpoint.save_file, []

def save_file_then_die(tensors, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 2:
        with open(path, "wb") as f:
            f.write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save_file(tensors, path, *args, **kwargs)

checkpoint.save_file = save_file_then_die
train(load_config(sys.argv[1:]))
"""


def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous_one(data_cache, tmp_path):
    args = run_overrides(data_cache, tmp_path, "budget=120s", "train.checkpoint_every_minutes=0.002")
    died = subprocess.run(
        [sys.executable, "-c", DIE_IN_SECOND_CHECKPOINT, *args], cwd=REPO, capture_output=True, timeout=120
    )
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    (run_dir,) = (tmp_path / "gpthf-kjv").glob("*/")
    saved = latest_checkpoint(run_dir)
    assert saved is not None and saved.name.startswith("step-"), "the first checkpoint is complete"
    assert list((run_dir / "checkpoints").glob(".*.tmp")), "the kill left a half-written staging folder"
    model, meta, _ = load_model_from_checkpoint(saved)
    done = subprocess.run(
        [sys.executable, "pretrain.py", *run_overrides(data_cache, tmp_path, "resume=true", "budget=1s")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"from {saved}" in done.stderr, "resumed from the last complete checkpoint"
    names = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert "final" in names and not [n for n in names if n.startswith(".")], names
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), "no step logged twice after resume"


def test_a_checkpoint_moved_aside_for_its_replacement_is_put_back(trained_runs, tmp_path):
    """Killed between the two renames that replace a checkpoint of the same name: the old one returns."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_runs["gpt"], run_dir)
    checkpoints = run_dir / "checkpoints"
    (checkpoints / "final").rename(checkpoints / ".final.old-4242")
    shutil.copytree(checkpoints / ".final.old-4242", checkpoints / ".final.tmp")
    (checkpoints / ".final.tmp" / "model.safetensors").write_bytes(b"torn")
    recover_interrupted_writes(run_dir)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["final"]
    load_model_from_checkpoint(run_dir)


def test_same_seed_and_config_write_the_same_metrics(data_cache, tmp_path):
    """Through the command line, as a user reruns it; the schedule is token-driven (budget far away)."""
    runs = []
    for name in ("first", "second"):
        args = run_overrides(data_cache, tmp_path / name, "budget=1h", "train.max_tokens=1200")
        run = subprocess.run(
            [sys.executable, "pretrain.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr[-2000:]
        (run_dir,) = (tmp_path / name / "gpthf-kjv").glob("*/")
        runs.append(
            [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in read_metrics(run_dir)]
        )
    first, second = runs
    assert len(first) > 5 and any("val_loss" in r for r in first)
    assert json.dumps(first) == json.dumps(second)


def test_kill_9_during_a_batch_job_then_resume_writes_every_result_once(trained_runs, tmp_path, capsys):
    import runpy

    from gpthf.batch_output import partial_path
    from gpthf.cli import run_cli

    rng = random.Random(1)
    words = "the king went to a city of stone and the people sang with him in spring".split()
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 20))).capitalize() for _ in range(40)]
    batch = tmp_path / "prompts.txt"
    batch.write_text("\n".join(prompts) + "\n")
    job = ["--ckpt", str(trained_runs["gpthf"]), "--batch-file", str(batch), "--batch-size", "2"]
    job += ["--max-new-tokens", "12", "--temperature", "0.8"]  # sampled: each prompt has its own stream
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "generate.py", *job, "--output", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = partial_path(out)
    _kill_when(proc, lambda: partial.exists() and partial.read_text().count("\n") >= 4)  # header + 3
    kept = partial.read_text().count("\n") - 1
    assert 3 <= kept < len(prompts) and not out.exists(), "killed mid-job: results so far kept, no output yet"

    main = runpy.run_path(str(REPO / "generate.py"))["main"]
    assert run_cli(main, [*job, "--output", str(out)]) == 2, "an unfinished job is not overwritten unasked"
    assert "add --resume" in capsys.readouterr().err

    weights = resolve_checkpoint(trained_runs["gpthf"]) / WEIGHTS_FILE
    written = weights.stat()
    os.utime(weights, ns=(written.st_atime_ns, written.st_mtime_ns + 10**9))  # as a rewrite in place
    try:
        assert run_cli(main, [*job, "--output", str(out), "--resume"]) == 2, "other weights: refused"
    finally:
        os.utime(weights, ns=(written.st_atime_ns, written.st_mtime_ns))
    assert "was generated with other settings (weights" in capsys.readouterr().err
    assert partial.read_text().count("\n") - 1 == kept, "a refused resume leaves the results as they were"

    assert run_cli(main, [*job, "--output", str(out), "--resume"]) == 0
    assert f"resumed after {kept}" in capsys.readouterr().err
    assert run_cli(main, [*job, "--output", str(tmp_path / "whole.jsonl")]) == 0  # never interrupted
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in resumed] == list(range(len(prompts)))
    assert [r["prompt"] for r in resumed] == prompts
    assert out.read_text() == (tmp_path / "whole.jsonl").read_text(), "as if never killed, samples included"
    assert not partial.exists()
    assert run_cli(main, [*job, "--output", str(out), "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err


# ---- a full disk: every writer stops with one error line naming what was kept --------------------

FULL_DISK = """
import resource, runpy, signal, sys


def limit_files(max_bytes):
    # As on a full disk: a write past the limit fails (EFBIG), instead of a signal killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


when, max_bytes, script, *args = sys.argv[1:]
max_bytes = int(max_bytes)
if when == "start":
    limit_files(max_bytes)
elif when == "metrics":  # from this session's first record on, metrics.jsonl has room for max_bytes more
    from gpthf.training.metrics import MetricsLog

    real_write = MetricsLog.write

    def write(self, record):
        limit_files(self.path.stat().st_size + max_bytes)
        real_write(self, record)

    MetricsLog.write = write
elif when == "plot":  # the disk fills after the final checkpoint, before the loss plot
    from gpthf.training import trainer

    real_plot = trainer.plot_losses

    def plot(run_dir):
        limit_files(max_bytes)
        return real_plot(run_dir)

    trainer.plot_losses = plot
sys.argv = [script, *args]
if script.endswith(".py"):
    runpy.run_path(script, run_name="__main__")
else:
    runpy.run_module(script, run_name="__main__", alter_sys=True)
"""


@dataclass
class Scene:
    """A test's folder and fixtures, for the rows of the table below."""

    tmp: Path
    request: pytest.FixtureRequest

    def __getattr__(self, fixture: str):
        if fixture.startswith("_"):
            raise AttributeError(fixture)
        return self.request.getfixturevalue(fixture)

    def run_dir(self) -> Path:
        (run_dir,) = (self.tmp / "gpthf-kjv").glob("*/")
        return run_dir

    def stepped_run(self) -> list[str]:
        """A run stopped after its first step (checkpoint step-00000001), and the arguments to resume it."""
        args = run_overrides(self.data_cache, self.tmp, "train.max_tokens=400")
        train(load_config(args), clock=frozen_clock, stop_after_steps=1)
        self.checkpoint = self.run_dir() / "checkpoints" / "step-00000001"
        return ["pretrain.py", *args, "resume=true"]

    def corpus(self) -> Path:
        """~165 kB of text: its shard's train.bin (~100 kB) is the largest file of its data set."""
        rng = random.Random(0)
        words = "the king went to a city of stone and the people sang with him in spring".split()
        folder = self.tmp / "corpus"
        folder.mkdir()
        text = (" ".join(rng.choice(words) for _ in range(12)).capitalize() + "." for _ in range(3000))
        (folder / "doc.txt").write_text(" ".join(text))
        return folder

    def copied_run(self) -> Path:
        """A finished run, without the results other tests evaluated into it."""
        shutil.copytree(self.trained_runs["gpthf"], self.tmp / "run")
        shutil.rmtree(self.tmp / "run" / "eval", ignore_errors=True)
        return self.tmp / "run"


@dataclass(frozen=True)
class DiskFull:
    """One writer the disk has no room for: the command (after its setup), the room left, when the
    disk fills ("start", or just before this session's first metrics record or the loss plot), what
    the error line must name (the file and what was kept) and what must be on disk afterwards."""

    name: str
    command: Callable[[Scene], list[str]]
    max_bytes: int
    names: Callable[[Scene], list[str]]
    check: Callable[[Scene], None]
    when: str = "start"


def check_no_cache(s: Scene) -> None:
    assert list((s.tmp / "cache").iterdir()) == [], "a build with nothing finished is removed"


def check_tokenizer_kept_then_continued(s: Scene) -> None:
    (partial,) = (s.tmp / "cache").iterdir()
    assert ".partial-" in partial.name, "never taken for a finished data set"
    kept = sorted(str(p.relative_to(partial)) for p in partial.rglob("*"))
    assert kept == ["shards", "tokenizer.json"], "the half-written shard is removed, the tokenizer kept"
    tokenizer = (partial / "tokenizer.json").read_bytes()
    prepared = prepare_data(load_config(tiny_overrides(s.tmp / "cache", s.tmp / "corpus", num_proc=1)), False)
    assert [p.name for p in (s.tmp / "cache").iterdir()] == [prepared.path.name], "the build was continued"
    assert (prepared.path / "tokenizer.json").read_bytes() == tokenizer
    assert len(prepared.split("train")) > 0


def check_no_checkpoint(s: Scene) -> None:
    assert list((s.run_dir() / "checkpoints").iterdir()) == [], "no half-written checkpoint or staging folder"


def check_resumes_from_the_kept_checkpoint(s: Scene) -> None:
    checkpoints = s.run_dir() / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == [s.checkpoint.name], "no staging folder left"
    load_model_from_checkpoint(s.checkpoint)
    resumed = run_script(
        "pretrain.py", *run_overrides(s.data_cache, s.tmp, "train.max_tokens=400", "resume=true")
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from {s.checkpoint}" in resumed.stderr and latest_checkpoint(s.run_dir()).name == "final"


def check_metrics_whole(s: Scene) -> None:
    metrics = (s.run_dir() / "metrics.jsonl").read_text()
    assert metrics.endswith("\n") and [json.loads(line)["step"] for line in metrics.splitlines()] == [1], (
        "the record the disk had no room for is not left torn"
    )
    check_resumes_from_the_kept_checkpoint(s)


def check_finished_without_plot(s: Scene) -> None:
    load_model_from_checkpoint(s.run_dir() / "checkpoints" / "final")
    assert not [p.name for p in s.run_dir().iterdir() if "loss" in p.name]


def check_no_result(s: Scene) -> None:
    assert list((s.tmp / "run" / "eval").glob("*")) == []


def check_report_json_only(s: Scene) -> None:
    assert [p.name for p in (s.tmp / "report").iterdir()] == ["report.json"]
    json.loads((s.tmp / "report" / "report.json").read_text())


def prepare(cache: Path, corpus: Path, **data) -> list[str]:
    return ["gpthf.data.prepare", *tiny_overrides(cache, corpus, **data)]


DISK_FULL = [
    DiskFull(
        "tokenizer",
        lambda s: prepare(s.tmp / "cache", s.tales_dir, num_proc=1),
        2_000,
        lambda s: ["tokenizer.json", "nothing of this build was kept"],
        check_no_cache,
    ),
    DiskFull(  # numpy's short write: an OSError without errno
        "data shard",
        lambda s: prepare(s.tmp / "cache", s.corpus(), num_proc=1),
        20_000,
        lambda s: ["shards/00000.tmp/train.bin", "its tokenizer and 0 finished shard(s) are kept"],
        check_tokenizer_kept_then_continued,
    ),
    DiskFull(  # safetensors' own error type
        "checkpoint weights",
        lambda s: ["pretrain.py", *run_overrides(s.data_cache, s.tmp, "train.max_tokens=400")],
        100_000,  # model.safetensors is ~150 kB
        lambda s: ["model.safetensors", "no checkpoint of this run was kept"],
        check_no_checkpoint,
    ),
    DiskFull(  # torch.save's RuntimeError ("unexpected pos"), in the final checkpoint of a resumed run
        "checkpoint training state",
        Scene.stepped_run,
        200_000,  # train_state.pt is ~320 kB
        lambda s: ["train_state.pt", f"the last checkpoint kept is {s.checkpoint}", "resume=true"],
        check_resumes_from_the_kept_checkpoint,
    ),
    DiskFull(
        "metrics line",
        Scene.stepped_run,
        40,  # room for part of the next record
        lambda s: ["metrics.jsonl", f"the last checkpoint kept is {s.checkpoint}", "resume=true"],
        check_metrics_whole,
        when="metrics",
    ),
    DiskFull(
        "loss plot",
        lambda s: ["pretrain.py", *run_overrides(s.data_cache, s.tmp, "train.max_tokens=400")],
        1_000,
        lambda s: ["loss.png", f"its final checkpoint {s.run_dir() / 'checkpoints' / 'final'} is complete"],
        check_finished_without_plot,
        when="plot",
    ),
    DiskFull(
        "eval result",
        lambda s: ["eval/perplexity.py", "--ckpt", str(s.copied_run()), "--max-rows", "4", "--samples", "0"],
        300,
        lambda s: [str(s.tmp / "run" / "eval" / "perplexity-test.json"), "this result is not saved"],
        check_no_result,
    ),
    DiskFull(
        "report plot",
        lambda s: ["eval/report.py", str(s.copied_run()), "--out", str(s.tmp / "report")],
        5_000,  # report.json is ~400 B, report.png ~20 kB
        lambda s: ["report.png", f"{s.tmp / 'report' / 'report.json'} is written"],
        check_report_json_only,
    ),
]


@pytest.mark.parametrize("case", DISK_FULL, ids=lambda c: c.name)
def test_a_full_disk_is_one_error_naming_what_was_kept(case: DiskFull, tmp_path, request):
    """Each writer, stopped by the kernel as a full disk would stop it: exit 2, one `error:` line
    naming the file, free space and what was kept, no traceback, no half-written file a reader
    would take as complete, and what was kept is usable."""
    scene = Scene(tmp_path, request)
    command = case.command(scene)
    run = run_script("-c", FULL_DISK, case.when, str(case.max_bytes), *command)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and run.stderr.strip().splitlines()[-1] == errors[0], run.stderr[-3000:]
    assert errors[0].startswith("error: could not write") and "free space" in errors[0], errors[0]
    for name in case.names(scene):
        assert name in errors[0], f"{name!r} not in {errors[0]!r}"
    leftovers = [str(p) for p in tmp_path.rglob("*") if ".tmp" in p.name or ".old-" in p.name]
    assert leftovers == [], "no temporary file or staging folder is left behind"
    case.check(scene)
