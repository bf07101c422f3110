"""Training on a CUDA GPU the way `pretrain.py` runs it: the loader's pinned, read-ahead batches and
their `SentenceBounds`, the engine's compiled forward under the autocast `impl.amp=auto` picks, a
resume that restores the GPU's generator, and a 2-GPU DDP run when the host has two GPUs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gpthf.attention.backends import backend_unavailable_reason
from gpthf.config import load_config
from gpthf.data.dataset import prepare_data
from gpthf.models import build_model, next_token_loss
from gpthf.precision import amp_dtype
from gpthf.training.batches import TrainBatches, split_bounds
from gpthf.training.checkpoint import latest_checkpoint
from gpthf.training.distributed import Engine, Runtime
from gpthf.training.metrics import read_metrics
from gpthf.training.optim import build_optimizer
from gpthf.training.trainer import autocast, train
from tests.conftest import REPO, frozen_clock, run_overrides

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

WIDE_HEADS = ["arch.n_heads=2"]  # head dim 16: the CUDA flex kernel refuses narrower heads


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
@pytest.mark.parametrize("arch", ["gpthf-test", "gpt-test"])
def test_compiled_training_steps_on_loader_batches_have_no_graph_break_or_recompile(
    data_cache, tmp_path, arch, attention
):
    reason = backend_unavailable_reason(attention)
    if reason:
        pytest.skip(reason)
    cfg = load_config(
        run_overrides(data_cache, tmp_path, *WIDE_HEADS, f"impl.attention={attention}", arch=arch)
    )
    data = prepare_data(cfg, progress=False)
    device = torch.device("cuda", 0)
    runtime = Runtime("none", 0, 0, 1, device)
    torch.manual_seed(0)
    model = build_model(cfg.arch, data.stats["vocab_size"], attention).to(device)
    engine = Engine(model, build_optimizer(model, cfg.train), runtime, cfg.train)
    engine.compile()
    dtype = amp_dtype(cfg.impl.amp, device)
    batches = TrainBatches(
        data.split("train"),
        cfg.train,
        0,
        1,
        device,
        split_bounds(data.stats["splits"]["train"], cfg.data.max_sentence_len),
    )
    assert batches.pin, "pinned host memory for the non_blocking copies"
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    losses = []
    try:
        for step in range(4):
            batch = batches.next_step()
            engine.begin_step(1e-3)
            for ids, sids in batch.micro_batches:
                assert ids.is_cuda and sids.is_cuda
                with autocast(device, dtype):
                    logits = engine.model(ids, sids, bounds=batch.bounds)
                loss = next_token_loss(logits, ids, reduction="sum")
                engine.backward(loss / max(batch.targets, 1))
                losses.append(float(loss) / max(batch.targets, 1))
            engine.finish_step()
            if step == 0:
                graphs = counters["stats"]["unique_graphs"]
    finally:
        batches.close()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == graphs, "a later batch recompiled"
    torch._dynamo.reset()


def test_a_cuda_run_stops_and_resumes(data_cache, tmp_path):
    """amp=auto, tf32, the loader and the GPU's RNG state in a checkpoint, restored on resume."""
    steps = [*WIDE_HEADS, "budget=1h", "train.max_tokens=3000", "impl.compile=false"]
    first = train(
        load_config(run_overrides(data_cache, tmp_path, *steps)), clock=frozen_clock, stop_after_steps=3
    )
    assert latest_checkpoint(first).name == "step-00000003"
    before = torch.get_float32_matmul_precision()
    resumed = train(
        load_config(run_overrides(data_cache, tmp_path, *steps, "resume=true")), clock=frozen_clock
    )
    assert resumed == first and latest_checkpoint(resumed).name == "final"
    assert torch.get_float32_matmul_precision() == before, "tf32 is put back after the run"
    final = [r for r in read_metrics(resumed) if "val_loss" in r][-1]
    assert final["val_loss"] is not None and final["val_loss"] < 10


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_ddp_on_two_gpus_keeps_the_ranks_identical(data_cache, tmp_path):
    args = run_overrides(
        data_cache, tmp_path, "impl=ddp", "budget=1h", "train.max_tokens=3000", "impl.compile=false"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29527",
            "pretrain.py",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (tmp_path / "gpthf-kjv").glob("*/")
    final = [r for r in read_metrics(run_dir) if "val_loss" in r][-1]
    assert final["world_size"] == 2 and final["ranks_agree"] is True
