"""Faults: a process killed with SIGKILL while it prepares data or writes a checkpoint, and reruns.

The contract: the next run recovers (rebuilds the data, resumes the training) and loses nothing that
was complete. A kill in the middle of training steps is tested in tests/training/test_trainer.py.
Also here: two runs of one seed and config write the same metrics.jsonl.
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

from gpthf.config import load_config
from gpthf.data.dataset import STATS_FILE, prepare_data
from gpthf.training.checkpoint import (
    WEIGHTS_FILE,
    latest_checkpoint,
    load_model_from_checkpoint,
    recover_interrupted_writes,
    resolve_checkpoint,
)
from gpthf.training.metrics import WALL_CLOCK_FIELDS, read_metrics
from tests.conftest import REPO, run_overrides, tiny_overrides


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

    from gpthf.batch_results import partial_path
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
