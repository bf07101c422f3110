"""Training's CUDA paths, checked on a CPU: the GPU's answers (how many, bf16 or not) are
monkeypatched, no tensor is ever put on a CUDA device."""

from __future__ import annotations

import logging
import socket
import threading

import numpy as np
import pytest
import torch
import torch.distributed as dist

from gpthf.attention.sentences import SentenceBounds
from gpthf.config import load_config
from gpthf.data.dataset import prepare_data
from gpthf.errors import ConfigError
from gpthf.models import build_model, next_token_loss
from gpthf.precision import amp_dtype, fp32_matmuls
from gpthf.training import checkpoint, trainer
from gpthf.training.distributed import DeepSpeedEngine, Engine, Runtime, setup_runtime
from gpthf.training.metrics import read_metrics
from gpthf.training.trainer import evaluate, train
from tests.conftest import frozen_clock, run_overrides

CUDA = torch.device("cuda")


def a_gpu(monkeypatch, count: int = 1, bf16: bool = True, name: str = "Tesla T4") -> list:
    """This process sees `count` GPUs (none of them real); returns the (device, state) RNG restores."""
    restored = []

    def set_rng_state(state, device="cuda"):
        index = torch.device("cuda", device).index if isinstance(device, int) else torch.device(device).index
        if (index or 0) >= count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored.append((index or 0, state))

    def set_rng_state_all(states):  # torch's: one set_rng_state per saved state
        for i, state in enumerate(states):
            set_rng_state(state, i)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_rng_state_all)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0) if bf16 else (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    return restored


# -- resume on a host with fewer GPUs --------------------------------------------------------------


def test_a_checkpoint_of_two_gpus_resumes_on_one(monkeypatch, caplog):
    state = checkpoint.rng_state()  # this process's generators (no GPU yet): restoring them changes nothing
    restored = a_gpu(monkeypatch, count=1)
    state["cuda"] = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    with caplog.at_level(logging.INFO, logger="gpthf.training.checkpoint"):
        checkpoint.set_rng_state(state)
    assert [(i, int(s[0])) for i, s in restored] == [(0, 1)], "the GPU this host has, from its own state"
    said = [r.getMessage() for r in caplog.records if "RNG" in r.getMessage()]
    assert said == ["the checkpoint holds the RNG states of 2 GPU(s), this host shows 1: restored 1"]


# -- impl.amp on a GPU without bf16 ------------------------------------------------------------------


def test_amp_auto_takes_what_the_gpu_computes(monkeypatch, caplog):
    a_gpu(monkeypatch, bf16=True, name="NVIDIA H100")
    assert amp_dtype("auto", CUDA) is torch.bfloat16
    a_gpu(monkeypatch, bf16=False)
    with caplog.at_level(logging.INFO, logger="gpthf.precision"):
        assert amp_dtype("auto", CUDA) is None
    assert any("Tesla T4" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)
    assert amp_dtype("fp32", CUDA) is None and amp_dtype("auto", torch.device("cpu")) is None


def test_bf16_asked_of_a_gpu_without_it_is_one_line_naming_the_alternatives(monkeypatch):
    a_gpu(monkeypatch, bf16=False)
    with pytest.raises(ConfigError) as refused:
        amp_dtype("bf16", CUDA)
    assert "Tesla T4" in str(refused.value) and "impl.amp=fp32" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="use auto, bf16, fp32"):
        amp_dtype("fp16", CUDA)


def test_bf16_support_means_arithmetic_not_emulation(monkeypatch):
    """torch's default `is_bf16_supported()` says yes on a V100 (emulation): capability 7.0 decides."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert amp_dtype("auto", CUDA) is None


# -- a GPU this host does not have ------------------------------------------------------------------


def torchrun_env(monkeypatch, rank: int, world: int) -> None:
    for key, value in {
        "RANK": rank,
        "LOCAL_RANK": rank,
        "WORLD_SIZE": world,
        "LOCAL_WORLD_SIZE": world,
    }.items():
        monkeypatch.setenv(key, str(value))


@pytest.mark.parametrize("rank", [3, 0])  # rank 0 has a GPU, but would wait for ranks 2 and 3 forever
def test_more_torchrun_ranks_than_gpus_is_one_line_naming_both(monkeypatch, rank):
    a_gpu(monkeypatch, count=2)
    torchrun_env(monkeypatch, rank=rank, world=4)
    impl = load_config(["impl=ddp"]).impl
    with pytest.raises(ConfigError) as refused:
        setup_runtime(impl)  # before any process group
    message = str(refused.value)
    assert "4 processes" in message and "2 GPU(s)" in message and "--nproc_per_node=2" in message
    assert len(message.splitlines()) == 1 and not dist.is_initialized()


def test_one_process_on_a_gpu_makes_it_the_current_one(monkeypatch):
    a_gpu(monkeypatch, count=2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"impl.device=cuda:7 .* shows 2 GPU\(s\), cuda:0 to cuda:1"):
        setup_runtime(load_config(["impl.device=cuda:7"]).impl)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    runtime = setup_runtime(load_config(["impl.device=cuda:1"]).impl)
    assert runtime.device == torch.device("cuda", 1) and current == [torch.device("cuda", 1)]


# -- TF32 ---------------------------------------------------------------------------------------------


def test_tf32_is_on_for_a_cuda_run_only_and_put_back_after():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    assert load_config([]).impl.tf32 is True
    with fp32_matmuls(CUDA, tf32=True):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    assert (matmul.fp32_precision, conv.fp32_precision) == before
    with fp32_matmuls(CUDA, tf32=False):  # full fp32 even where something had switched TF32 on
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    cpu_before = torch.backends.mkldnn.matmul.fp32_precision
    with fp32_matmuls(torch.device("cpu"), True):
        assert (matmul.fp32_precision, conv.fp32_precision) == before
        assert torch.backends.mkldnn.matmul.fp32_precision == cpu_before, "the CPU's setting is its own"


def test_tf32_set_through_torchs_new_api_before_a_run_is_no_crash():
    """torch refuses to mix its legacy TF32 switches with the per-backend `fp32_precision`: a process
    that used the new one (a notebook, another library) must still train."""
    matmul = torch.backends.cuda.matmul
    before, matmul.fp32_precision = matmul.fp32_precision, "tf32"
    try:
        with fp32_matmuls(CUDA, tf32=False):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


def test_bf16_is_asked_of_the_gpu_the_run_uses(monkeypatch):
    capability = {0: (8, 0), 1: (7, 0)}  # an A100 as cuda:0 beside a V100 as cuda:1
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[device.index])
    assert amp_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert amp_dtype("auto", torch.device("cuda", 1)) is None
    with pytest.raises(ConfigError, match="no bf16 arithmetic"):
        amp_dtype("bf16", torch.device("cuda", 1))


def test_a_cuda_run_trains_with_tf32(data_cache, tmp_path, monkeypatch):
    """The trainer's setting is in force while the run is (the run itself on CPU: the device is faked)."""
    seen = []
    real_setup = trainer.setup_runtime

    def on_cuda(impl):
        runtime = real_setup(impl)
        return Runtime(runtime.mode, 0, 0, 1, CUDA)

    class Stop(Exception):
        pass

    def trainer_on_cuda(*args, **kwargs):
        seen.append(torch.backends.cuda.matmul.fp32_precision)
        raise Stop

    monkeypatch.setattr(trainer, "setup_runtime", on_cuda)
    monkeypatch.setattr(trainer, "Trainer", trainer_on_cuda)
    before = torch.backends.cuda.matmul.fp32_precision
    with pytest.raises(Stop):
        train(load_config(run_overrides(data_cache, tmp_path)))
    assert seen == ["tf32"] and torch.backends.cuda.matmul.fp32_precision == before


# -- compile --------------------------------------------------------------------------------------------


def test_deepspeed_compiles_its_engine_itself():
    class FakeDeepSpeedEngine(torch.nn.Module):
        compiled = 0

        def compile(self):
            self.compiled += 1

    engine = object.__new__(DeepSpeedEngine)
    engine.model = engine.engine = FakeDeepSpeedEngine()
    engine.compile()
    assert engine.engine.compiled == 1 and engine.model is engine.engine, "not wrapped in torch.compile"


def test_the_trainer_compiles_through_its_engine(data_cache, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(Engine, "compile", lambda engine: compiled.append(type(engine)))  # (stays eager)
    train(load_config(run_overrides(data_cache, tmp_path, "impl.compile=true", "train.max_tokens=300")))
    assert compiled == [Engine]


def test_widened_bounds_get_their_own_static_graph_not_a_dynamic_one(monkeypatch):
    """A batch with a long padding run widens its bounds: compiled with static shapes (as
    Engine.compile does), it gets one more graph of fixed sizes, never symbolic ones for every step."""
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append([type(x).__name__ for x in example_inputs])
        return graph.forward

    model = build_model(load_config(["arch=gpthf-test"]).arch, 64)
    runtime = Runtime("none", 0, 0, 1, torch.device("cpu"))
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real_compile(m, backend=counting_backend, **kw))
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.0), runtime, load_config([]).train)
    engine.compile()
    torch._dynamo.reset()
    ids = torch.randint(4, 64, (2, 24))
    sids = torch.arange(24).repeat(2, 1) // 6
    for bounds in [SentenceBounds(4, 8), SentenceBounds(8, 8), SentenceBounds(4, 8), SentenceBounds(8, 8)]:
        engine.model(ids, sids, bounds=bounds)
    assert len(graphs) == 2, "one graph per bounds value, reused"
    assert all("SymInt" not in types for types in graphs), graphs


# -- one collective per step under DDP --------------------------------------------------------------


def test_ddp_decides_each_step_with_one_small_collective(data_cache, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun_env(monkeypatch, rank=0, world=1)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    calls = {"broadcast_object_list": 0, "all_reduce": 0}
    for name in calls:
        real = getattr(dist, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(dist, name, counted)
    run = train(
        load_config(
            run_overrides(
                data_cache, tmp_path, "impl=ddp", "train.max_tokens=3000", "train.log_every_steps=1000"
            )
        ),
        clock=frozen_clock,
    )
    steps = max(r["step"] for r in read_metrics(run))
    assert steps > 5
    assert calls["broadcast_object_list"] == 1, "the run folder, once at the start; never per step"
    # one per step and one for the check that stops, plus the validation totals at the end
    assert calls["all_reduce"] == steps + 1 + 1
    assert not dist.is_initialized()


def test_a_checkpoint_due_on_another_rank_is_saved_by_every_rank(data_cache, tmp_path, monkeypatch):
    """Ranks start their clocks apart: a checkpoint due by one rank's clock is taken by all (save()
    holds collectives), decided in the step's one all_reduce, never by each rank's own clock."""
    real_max = Runtime.max
    calls = []

    def other_rank_due_at_the_fourth_check(self, values):
        calls.append(list(values))
        values = list(values)
        if len(calls) == 4:
            values[4] = 1.0  # another rank's clock says a checkpoint is due; ours (frozen) never does
        return real_max(self, values)

    monkeypatch.setattr(Runtime, "max", other_rank_due_at_the_fourth_check)
    run = train(
        load_config(
            run_overrides(data_cache, tmp_path, "train.max_tokens=3000", "train.checkpoint_every_minutes=60")
        ),
        clock=frozen_clock,
    )
    assert all(values[4] == 0 for values in calls), "this rank's own clock never made one due"
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step-00000003" in saved, saved


# -- evaluation in one shape --------------------------------------------------------------------------


def test_evaluation_batches_have_one_shape_and_the_same_loss(data_cache, tmp_path):
    cfg = load_config(run_overrides(data_cache, tmp_path))
    split = prepare_data(cfg, progress=False).split("validation")
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.data.vocab_size)
    runtime = Runtime("none", 0, 0, 1, torch.device("cpu"))
    rows, micro = 11, 4  # batches of 4, 4 and 3 rows
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    total, count = evaluate(
        model, split, runtime, micro, None, SentenceBounds(1, cfg.data.seq_len), max_rows=rows
    )
    assert shapes == [(micro, cfg.data.seq_len)] * 3, "the last batch filled to the full size"
    expected_total, expected_count = 0.0, 0
    with torch.no_grad():
        for start in range(0, rows, micro):
            ids, sids = (torch.from_numpy(a) for a in split.rows(np.arange(start, min(start + micro, rows))))
            expected_total += float(next_token_loss(model(ids, sids), ids, reduction="sum"))
            expected_count += int((ids[:, 1:] != 0).sum())
    assert count == expected_count
    assert total == pytest.approx(expected_total, rel=1e-6)


# -- the read-ahead thread ends with the run ---------------------------------------------------------


def test_the_loader_thread_ends_with_a_run_that_failed(data_cache, tmp_path, monkeypatch):
    real_step, steps = trainer.Trainer._train_step, []

    def failing_step(self, lr):
        steps.append(any(t.name.startswith("gpthf-batches") for t in threading.enumerate()))
        if len(steps) > 3:
            raise RuntimeError("a failing step")
        return real_step(self, lr)

    monkeypatch.setattr(trainer.Trainer, "_train_step", failing_step)
    with pytest.raises(RuntimeError, match="a failing step"):
        train(load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=100000")), clock=frozen_clock)
    assert steps[1:] == [True] * 3, "the next step was read in the thread while this one ran"
    assert not any(t.name.startswith("gpthf-batches") for t in threading.enumerate())


@pytest.mark.parametrize("rows, world", [(1, 2), (5, 2), (9, 4), (0, 2)])
def test_every_rank_runs_as_many_evaluation_forwards(data_cache, tmp_path, rows, world):
    """Under ZeRO-3 a forward gathers parameters from every rank: a rank with fewer rows (or none)
    must still run as many forwards as the others, its extra ones scoring nothing."""
    cfg = load_config(run_overrides(data_cache, tmp_path))
    split = prepare_data(cfg, progress=False).split("validation")
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.data.vocab_size)
    micro, forwards, scored = 2, [], []
    model.register_forward_pre_hook(lambda module, args: forwards[-1].append(args[0].shape[0]))
    for rank in range(world):
        forwards.append([])
        runtime = Runtime("none", rank, rank, world, torch.device("cpu"))  # no process group: sums stay local
        total, count = evaluate(model, split, runtime, micro, None, SentenceBounds(1, cfg.data.seq_len), rows)
        scored.append(count)
    assert all(len(f) == len(forwards[0]) for f in forwards), forwards
    rows_per_rank = -(-rows // world)  # ceilings, in integers
    assert len(forwards[0]) == -(-rows_per_rank // micro)
    single = evaluate(model, split, Runtime("none", 0, 0, 1, torch.device("cpu")), micro, None,
                      SentenceBounds(1, cfg.data.seq_len), rows)  # fmt: skip
    assert sum(scored) == single[1], "every row scored once, the fillers never"
