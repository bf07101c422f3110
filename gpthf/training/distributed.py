"""Where training runs: one device, torchrun DDP, or DeepSpeed ZeRO, set up in this one place.

`Runtime` says who this process is; an `Engine` hides how a micro-batch's loss becomes an optimizer
step in each mode, so the training loop is the same for all of them. We only drive existing engines
(torch.distributed, DDP, DeepSpeed) and never reimplement their communication.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gpthf.errors import ConfigError
from gpthf.training.optim import set_lr

DISTRIBUTED_MODES = ("none", "ddp", "deepspeed")


@dataclass
class Runtime:
    mode: str
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (for evaluation totals)."""
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over ranks: one small collective by which every rank takes the same
        decision (a flag raised on any rank, the furthest clock), not a pickled object per step."""
        return self._all_reduce(values, dist.ReduceOp.MAX)

    def _all_reduce(self, values: list[float], op) -> list[float]:
        if not dist.is_initialized():
            return values
        tensor = torch.tensor(
            values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu"
        )
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(name: str, local_rank: int, setting: str = "impl.device") -> torch.device:
    """The torch device `name` asks for; errors name `setting`, where the user gave it (a command
    line's --device, or the config's impl.device). A GPU this host does not have is one line here,
    never CUDA's "invalid device ordinal" at the first tensor moved there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        try:
            index = local_rank if name == "cuda" else torch.device(name).index
        except RuntimeError:  # cuda:abc, cuda:-1
            raise ConfigError(f"{setting}={name!r}: use auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}={name} but no CUDA GPU is visible; use {setting}=cpu or auto")
        count = torch.cuda.device_count()
        processes = _processes_on_this_host()
        # torchrun: local rank r takes cuda:r. Every rank refuses, not only those past the last GPU:
        # the others would wait in init_process_group until the launcher kills them with a traceback.
        too_many = name == "cuda" and processes > count
        if index is None or index >= count or too_many:
            shows = f"this host shows {count} GPU(s), cuda:0 to cuda:{count - 1}"
            if name == "cuda" and processes > 1:
                raise ConfigError(
                    f"{setting}={name}: local rank {local_rank} of {processes} processes on this host, but "
                    f"{shows}; start at most {count} (torchrun --nproc_per_node={count})"
                )
            raise ConfigError(
                f"{setting}={name} (rank {local_rank}) but {shows}; give one of those, or start at most "
                f"{count} processes per host"
            )
        return torch.device("cuda", index)
    if name != "cpu":
        raise ConfigError(f"{setting}={name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def _processes_on_this_host() -> int:
    """How many processes the launcher (torchrun, deepspeed) started on this host; 1 without one."""
    try:
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup_runtime(impl_cfg) -> Runtime:
    mode = impl_cfg.distributed
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"unknown impl.distributed={mode!r}; choose one of: {', '.join(DISTRIBUTED_MODES)}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "none":
        if launched > 1:
            raise ConfigError(
                f"launched with WORLD_SIZE={launched} but impl.distributed=none; add impl=ddp or impl=deepspeed"
            )
        device = resolve_device(impl_cfg.device, 0)
        if device.type == "cuda":  # impl.device=cuda:1: "the current GPU" (bf16 support, compile) is that one
            torch.cuda.set_device(device)
        return Runtime("none", 0, 0, 1, device)
    if mode == "ddp" and "RANK" not in os.environ:
        raise ConfigError(
            "impl=ddp runs under torchrun: torchrun --nproc_per_node=N pretrain.py impl=ddp ..."
        )
    if mode == "deepspeed":  # a single process without a launcher: give DeepSpeed the env it expects
        for key, value in {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
        }.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = resolve_device(impl_cfg.device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if mode == "deepspeed":
        try:
            import deepspeed
        except ImportError:
            raise ConfigError('impl=deepspeed needs DeepSpeed: pip install ".[distributed]"') from None
        deepspeed.init_distributed(dist_backend=backend)
    else:
        dist.init_process_group(backend=backend)
    return Runtime(mode, rank, local_rank, world, device)


def teardown_runtime(runtime: Runtime) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Engine:
    """One device (and the base of DDP): plain backward, clip, AdamW step."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, runtime: Runtime, train_cfg):
        self.model = model  # what the loop calls forward on
        self.unwrapped = model  # the LanguageModel itself: weights, config
        self.optimizer = optimizer
        self.runtime = runtime
        self.grad_clip = train_cfg.grad_clip

    def micro_batch(self, is_last: bool):
        """Context for one micro-batch's forward and backward (DDP syncs gradients on the last only)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def begin_step(self, lr: float) -> None:
        """Before a step's micro-batches: the learning rate this step applies."""
        set_lr(self.optimizer, lr)

    def finish_step(self) -> float:
        """Apply the accumulated gradients; returns the gradient norm before clipping."""
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.unwrapped.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def optimizer_state(self) -> dict | None:
        """Optimizer state for train_state.pt (None where the engine saves it itself)."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict | None, checkpoint: Path) -> None:
        self.optimizer.load_state_dict(state)

    def save_sharded_state(self, staging: Path) -> None:
        """Collective: state every rank must write into the checkpoint's staging folder (DeepSpeed)."""

    def full_weights(self):
        """Collective context in which `unwrapped` holds all its weights (ZeRO-3 partitions them)."""
        return contextlib.nullcontext()

    def compile(self) -> None:
        """`torch.compile` what the loop calls forward on (for DDP, the wrapper: its optimizer splits
        the graph at the gradient buckets). Static shapes: a batch whose sentence bounds are widened
        (`fitting_bounds`: a few values in a run) gets its own graph, instead of dynamo turning the
        bounds into symbolic sizes for every later step."""
        self.model = torch.compile(self.model, dynamic=False)


class DDPEngine(Engine):
    def __init__(self, model, optimizer, runtime, train_cfg):
        super().__init__(model, optimizer, runtime, train_cfg)
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def micro_batch(self, is_last: bool):
        return contextlib.nullcontext() if is_last else self.model.no_sync()


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO with our torch AdamW (its own fused Adam JIT-builds a C++ op)."""

    TAG = "state"

    def __init__(self, model, optimizer, runtime, train_cfg, impl_cfg, accumulation: int, bf16: bool):
        import deepspeed

        super().__init__(model, optimizer, runtime, train_cfg)
        self.accumulation = accumulation
        config = {
            "train_micro_batch_size_per_gpu": train_cfg.micro_batch_size,
            "gradient_accumulation_steps": accumulation,
            "train_batch_size": train_cfg.micro_batch_size * accumulation * runtime.world_size,
            "gradient_clipping": train_cfg.grad_clip,
            "zero_optimization": {"stage": impl_cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": bf16},
            "steps_per_print": 10**9,
        }
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config
        )
        self.engine = self.model

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by the accumulation steps itself; our loss is already normalised per step.
        self.engine.backward(loss * self.accumulation)
        self.engine.step()  # DeepSpeed counts micro-batches and steps the optimizer at the boundary

    def finish_step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def optimizer_state(self) -> dict | None:
        return None

    def load_optimizer_state(self, state: dict | None, checkpoint: Path) -> None:
        self.engine.load_checkpoint(
            str(checkpoint / "deepspeed"), tag=self.TAG, load_lr_scheduler_states=False
        )

    def save_sharded_state(self, staging: Path) -> None:
        self.engine.save_checkpoint(str(staging / "deepspeed"), tag=self.TAG)

    def full_weights(self):
        if self.engine.zero_optimization_stage() < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.unwrapped.parameters()), modifier_rank=None)

    def compile(self) -> None:
        """DeepSpeed compiles its engine itself (`engine.compile()`, DeepSpeed 0.14 on): a
        `torch.compile`d wrapper would hide `backward`, `step` and the ZeRO hooks the engine drives."""
        if not hasattr(self.engine, "compile"):
            raise ConfigError(
                "impl.compile with impl=deepspeed needs DeepSpeed 0.14 or later; set impl.compile=false"
            )
        self.engine.compile()


def build_engine(
    model, optimizer, runtime: Runtime, train_cfg, impl_cfg, accumulation: int, bf16: bool
) -> Engine:
    if runtime.mode == "ddp":
        return DDPEngine(model, optimizer, runtime, train_cfg)
    if runtime.mode == "deepspeed":
        return DeepSpeedEngine(model, optimizer, runtime, train_cfg, impl_cfg, accumulation, bf16)
    return Engine(model, optimizer, runtime, train_cfg)
