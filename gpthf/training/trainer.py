"""The training loop: both model kinds, every distributed mode, one wall-clock budget.

Progress = elapsed / budget, or tokens / train.max_tokens when that is set (a token-driven schedule
is reproducible bit for bit; the budget then only stops the run). The learning rate is a function of
progress, training stops when it reaches 1 or the budget is spent, then the model is evaluated on the
validation split and the final checkpoint is written. Data preparation happens before the clock starts; compilation is charged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from gpthf.atomic import WriteFailed, writing
from gpthf.attention.sentences import SentenceBounds
from gpthf.config import parse_budget_seconds
from gpthf.data.dataset import prepare_data
from gpthf.data.special_tokens import PAD_ID
from gpthf.data.tokenizer import TOKENIZER_FILE
from gpthf.errors import ConfigError, TrainingError
from gpthf.models import LanguageModel, build_model, next_token_loss
from gpthf.precision import amp_dtype, fp32_matmuls
from gpthf.training import scoring
from gpthf.training.batches import TrainBatches, fitting_bounds, split_bounds
from gpthf.training.checkpoint import (
    FINAL,
    CheckpointMeta,
    latest_checkpoint,
    load_train_state,
    load_weights,
    prune_checkpoints,
    read_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
    staging_folder,
)
from gpthf.training.convert import initialize_from
from gpthf.training.distributed import Engine, Runtime, build_engine, setup_runtime, teardown_runtime
from gpthf.training.loggers import check_loggers, open_loggers
from gpthf.training.metrics import BudgetBar, Utilization, plot_losses, read_metrics
from gpthf.training.optim import build_optimizer
from gpthf.training.run_dir import RunClaim, claim_run
from gpthf.training.schedule import check_schedule, lr_at

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    tokens: int = 0  # real (non-pad) tokens trained on, all ranks
    elapsed_s: float = 0.0  # budget spent, across resumes


def _switch(value, on_cuda: bool, name: str) -> bool:
    text = str(value).lower()
    if text == "auto":
        return on_cuda
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: use auto, true or false")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _broadcast(runtime: Runtime, value):
    """Rank 0's `value` on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split,
    runtime: Runtime,
    micro_batch_size: int,
    dtype,
    nominal: SentenceBounds,
    max_rows: int | None = None,
) -> tuple[float, int]:
    """(summed next-token loss in nats, number of predicted tokens) over a split, shared across ranks.
    `nominal`: the split's bounds (`fitting_bounds`), so the forward reads nothing back from the device."""
    rows = np.arange(len(split) if max_rows is None else min(max_rows, len(split)))
    mine = rows[runtime.rank :: runtime.world_size]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Every rank runs as many forwards as the rank with the most rows (under ZeRO-3 each forward
    # gathers the parameters from all ranks: one forward fewer on one rank would hang the others),
    # and every batch has the full size, so a compiled model sees one shape: rows are repeated to
    # fill a batch (a rank out of rows repeats the split's first) and the repeats' outputs dropped.
    forwards = math.ceil(math.ceil(len(rows) / runtime.world_size) / micro_batch_size)
    for start in range(0, forwards * micro_batch_size, micro_batch_size):
        part = mine[start : start + micro_batch_size]
        input_ids, sentence_ids = split.rows(np.resize(part if len(part) else rows[:1], micro_batch_size))
        ids = torch.from_numpy(input_ids).to(runtime.device)
        sids = torch.from_numpy(sentence_ids).to(runtime.device)
        with autocast(runtime.device, dtype):
            logprobs, _ = scoring.next_token_logprobs(model, ids, sids, fitting_bounds(sentence_ids, nominal))
        real = ids[: len(part), 1:] != PAD_ID
        total -= float(logprobs[: len(part)][real].sum())
        count += int(real.sum())
    model.train(was_training)
    total, count = runtime.sum([total, float(count)])
    return total, int(count)


def bits_per_byte(nats_per_token: float, split_stats: dict) -> float:
    """A split's loss per token in bits per byte: its tokens per UTF-8 byte (the data stats') convert it."""
    return scoring.bits_per_byte(nats_per_token * split_stats["tokens"], split_stats["bytes"])


class ValidationSchedule:
    """When validation while training is due: every `train.eval_every_tokens` training tokens (the
    same steps in every run of a config) and/or every `train.eval_every_minutes` of budget."""

    def __init__(self, train_cfg, progress: Progress):
        self.every_tokens = train_cfg.eval_every_tokens
        self.every_s = 60 * train_cfg.eval_every_minutes if train_cfg.eval_every_minutes else None
        self.next_s = progress.elapsed_s + self.every_s if self.every_s else math.inf
        self.next_tokens = self._next_tokens(progress.tokens)

    def _next_tokens(self, tokens: int) -> float:
        """The next multiple of the interval: a resumed run neither repeats nor skips one."""
        return (tokens // self.every_tokens + 1) * self.every_tokens if self.every_tokens else math.inf

    def due(self, progress: Progress) -> bool:
        return progress.elapsed_s >= self.next_s or progress.tokens >= self.next_tokens

    def advance(self, tokens: int, elapsed_s: float) -> None:
        """After a validation that ended at `elapsed_s`: the next points past it."""
        self.next_tokens = self._next_tokens(tokens)
        while self.next_s <= elapsed_s:
            self.next_s += self.every_s


class Trainer:
    def __init__(
        self,
        cfg,
        runtime: Runtime,
        clock: Callable[[], float] = time.monotonic,
        claim: RunClaim | None = None,
    ):
        """`claim`: rank 0's run folder (its caller holds it for the run's life); None on other ranks."""
        self.cfg, self.runtime, self.clock = cfg, runtime, clock
        self.budget_s = parse_budget_seconds(cfg.budget)
        check_schedule(cfg.train)
        check_loggers(cfg.logger)
        self.stop_requested = False

        # Which run this is: rank 0 claimed it before anything slow, and tells the other ranks.
        self.run_dir, resume_from = _broadcast(
            runtime, (claim.run_dir, claim.resume_from) if runtime.is_main else None
        )
        self._build(resume_from)
        if claim is not None:
            claim.started = True

    def _build(self, resume_from: Path | None) -> None:
        """Data, model, optimizer and, when resuming, their saved state."""
        cfg, runtime = self.cfg, self.runtime
        # Data off the clock: rank 0 builds the cache while the other ranks wait.
        if runtime.is_main:
            self.data = prepare_data(cfg, progress=True)
        runtime.barrier()
        if not runtime.is_main:
            self.data = prepare_data(cfg, progress=False)
        self.stats = self.data.stats

        seed_everything(cfg.train.seed)
        self.model: LanguageModel = build_model(cfg.arch, self.stats["vocab_size"], cfg.impl.attention).to(
            runtime.device
        )
        self.dtype = amp_dtype(cfg.impl.amp, runtime.device)
        self.batches = TrainBatches(
            self.data.split("train"),
            cfg.train,
            runtime.rank,
            runtime.world_size,
            runtime.device,
            split_bounds(self.stats["splits"]["train"], cfg.data.max_sentence_len),
        )
        self.progress = Progress()
        train_state = None
        if cfg.init_from and resume_from is None:
            initialize_from(self.model, cfg.init_from, self.data.path / TOKENIZER_FILE)
        if resume_from is not None:
            load_weights(self.model, resume_from)
            train_state = load_train_state(resume_from)
            self.progress = Progress(**train_state["progress"])
            self.batches.order.load_state_dict(train_state["data_order"])
        optimizer = build_optimizer(self.model, cfg.train)
        self.engine: Engine = build_engine(
            self.model,
            optimizer,
            runtime,
            cfg.train,
            cfg.impl,
            self.batches.accumulation,
            bf16=self.dtype == torch.bfloat16,
        )
        if train_state is not None:
            self.engine.load_optimizer_state(train_state["optimizer"], resume_from)
            set_rng_state(train_state["rng"][min(runtime.rank, len(train_state["rng"]) - 1)])
            log.info(
                "resumed %s from %s (step %d, %.0f s of budget spent)",
                self.run_dir,
                resume_from,
                self.progress.step,
                self.progress.elapsed_s,
            )
        if _switch(cfg.impl.compile, runtime.device.type == "cuda", "impl.compile"):
            self.engine.compile()
        with self._failed_writes_say_what_is_kept():
            self.metrics = (
                open_loggers(cfg, self.run_dir, resume_step=self.progress.step if resume_from else None)
                if runtime.is_main
                else None
            )

    # -- progress -------------------------------------------------------------------------------
    def fraction_done(self, elapsed_s: float) -> float:
        """Where the schedule stands: by tokens when train.max_tokens is set, else by wall clock."""
        if self.cfg.train.max_tokens:
            return self.progress.tokens / self.cfg.train.max_tokens
        return elapsed_s / self.budget_s

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, name: str) -> Path:
        """Collective: every rank calls it; rank 0 writes (DeepSpeed ranks add their shards)."""
        target = self.run_dir / "checkpoints" / name
        staging = staging_folder(target)
        if self.runtime.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            with writing(f"checkpoint {target}", "earlier checkpoints are intact"):
                staging.mkdir(parents=True)
        self.runtime.barrier()
        self.engine.save_sharded_state(staging)
        rng = [rng_state()]
        if dist.is_initialized():
            rng = [None] * self.runtime.world_size
            dist.all_gather_object(rng, rng_state())
        with self.engine.full_weights():
            if self.runtime.is_main:
                state = {
                    "progress": asdict(self.progress),
                    "data_order": self.batches.order.state_dict(),
                    "optimizer": self.engine.optimizer_state(),
                    "rng": rng,
                }
                meta = CheckpointMeta(
                    arch=OmegaConf.to_container(self.cfg.arch, resolve=True),
                    vocab_size=self.stats["vocab_size"],
                    data=OmegaConf.to_container(self.cfg.data, resolve=True),
                    step=self.progress.step,
                    tokens=self.progress.tokens,
                    context={"tokens": self.cfg.data.seq_len, "sentences": self.batches.bounds.sentences},
                    data_cache=self.data.path.name,
                    init_from=self.cfg.init_from,
                )
                save_checkpoint(target, self.model, meta, self.data.path / TOKENIZER_FILE, state, staged=True)
                prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        self.runtime.barrier()
        if self.metrics:  # the trackers' records up to the checkpoint are on disk with it
            self.metrics.flush()
        return target

    # -- the loop -------------------------------------------------------------------------------
    def _train_step(self, lr: float) -> tuple[float, int, float]:
        """One optimizer step; returns (summed loss on this rank, targets of all ranks, gradient norm)."""
        step = self.batches.next_step()
        self.engine.begin_step(lr)
        loss_sum = torch.zeros((), device=self.runtime.device)
        for i, (ids, sids) in enumerate(step.micro_batches):
            with self.engine.micro_batch(is_last=i == len(step.micro_batches) - 1):
                with autocast(self.runtime.device, self.dtype):
                    logits = self.engine.model(ids, sids, bounds=step.bounds)
                micro_sum = next_token_loss(logits, ids, reduction="sum")
                # Normalised by the whole step's targets; DDP/DeepSpeed average over ranks, so undo that.
                self.engine.backward(micro_sum * (self.runtime.world_size / max(step.targets, 1)))
            loss_sum += micro_sum.detach()
        grad_norm = self.engine.finish_step()
        self.progress.step += 1
        self.progress.tokens += step.tokens
        return float(loss_sum), step.targets, grad_norm

    def _request_stop(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.stop_requested:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once, without the checkpoint
        name = signal.Signals(signum).name
        log.warning("%s: saving a checkpoint after this step, then stopping (Ctrl-C again: stop now)", name)
        self.stop_requested = True

    def _what_is_kept(self) -> str:
        """What a run stopped by a failed write (a full disk) still has, read from the disk then."""
        latest = latest_checkpoint(self.run_dir)
        if latest is None:
            return f"no checkpoint of this run was kept: its training (to step {self.progress.step}) is lost"
        if latest.name == FINAL:
            return f"the run finished: its final checkpoint {latest} is complete"
        saved, reached = read_meta(latest).step, self.progress.step
        lost = f"its training after step {saved} (to step {reached}) is lost; " if saved != reached else ""
        return f"the last checkpoint kept is {latest}: {lost}once there is room, continue from it with resume=true"

    @contextlib.contextmanager
    def _failed_writes_say_what_is_kept(self):
        """A checkpoint, metrics line or plot the disk has no room for stops the run with one error
        naming the last checkpoint kept (the writers know only their own file)."""
        try:
            yield
        except WriteFailed as err:
            raise err.keeping(self._what_is_kept()) from None

    def _diverged(self, loss: float, lr: float) -> TrainingError:
        latest = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written before it"
        return TrainingError(
            f"the training loss became {loss} at step {self.progress.step} (lr {lr:.3g}); stopped without "
            f"saving, {kept}; lower train.lr, raise train.warmup_fraction or check the data"
        )

    def run(self, stop_after_steps: int | None = None) -> Path:
        """Train until the budget is spent (or a stop is requested); returns the run folder.

        `stop_after_steps` simulates a preemption after that many steps of this session: a checkpoint
        is written and the run can be continued with resume=true.
        """
        failed = True
        try:
            with self._failed_writes_say_what_is_kept():
                folder = self._run(stop_after_steps)
            failed = False
            return folder
        finally:
            if self.metrics:
                self.metrics.close(failed)

    def _run(self, stop_after_steps: int | None) -> Path:
        cfg, runtime = self.cfg, self.runtime
        previous = (
            {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
            if runtime.is_main
            else {}
        )
        bar = BudgetBar(runtime.is_main, self.fraction_done(self.progress.elapsed_s))
        # Off the clock: the peak FLOP/s an MFU divides by (timed once per process unless configured).
        machine = (cfg, self.stats, runtime.device, self.dtype, runtime.world_size)
        utilization = Utilization(*machine) if runtime.is_main else None
        start = self.clock() - self.progress.elapsed_s
        next_checkpoint_s = self.progress.elapsed_s + 60 * cfg.train.checkpoint_every_minutes
        validation = ValidationSchedule(cfg.train, self.progress)
        # Of the budget spent, the seconds spent validating: a resumed run's records up to its checkpoint
        # hold those of its earlier sessions (the checkpoint's elapsed_s counts the same validations).
        self.eval_s = sum(r.get("eval_s", 0.0) for r in read_metrics(self.run_dir)) if self.metrics else 0.0
        # Steps of this session; training tokens since the last record, and when it was written.
        steps_this_session, window = 0, [0, self.clock()]
        postfix: dict = {}
        interrupted, loss, lr = False, 0.0, 0.0
        try:
            while True:
                self.progress.elapsed_s = self.clock() - start
                done = self.fraction_done(self.progress.elapsed_s)
                stop = self.stop_requested or (
                    stop_after_steps is not None and steps_this_session >= stop_after_steps
                )
                finished = done >= 1.0 or self.progress.elapsed_s >= self.budget_s
                diverged = not math.isfinite(loss)
                checkpoint_due = self.progress.elapsed_s >= next_checkpoint_s
                validation_due = validation.due(self.progress)
                # One decision for all ranks, in one small collective: the furthest progress, and a stop,
                # a NaN (it reaches every rank's weights through the gradients), a checkpoint or a
                # validation due on any rank: ranks whose clocks differ still enter save()'s collectives
                # together and run the same validation forwards at the same step.
                done, *flags = runtime.max([done, finished, stop, diverged, checkpoint_due, validation_due])
                finished, stop, diverged, checkpoint_due, validation_due = (flag > 0 for flag in flags)
                if diverged:
                    raise self._diverged(loss, lr)
                if finished or stop:
                    interrupted = not finished
                    break
                if validation_due:
                    self._validate_on_schedule(start, validation, window, postfix)
                if checkpoint_due:  # the state after the last step, before the next one
                    self.save(f"step-{self.progress.step:08d}")
                    next_checkpoint_s += 60 * cfg.train.checkpoint_every_minutes
                lr = lr_at(done, cfg.train)
                tokens_before = self.progress.tokens
                loss_sum, targets, grad_norm = self._train_step(lr)
                loss = loss_sum / max(targets, 1)
                steps_this_session += 1
                window[0] += self.progress.tokens - tokens_before  # already summed over ranks
                if self.progress.step % cfg.train.log_every_steps == 0:
                    step = {"loss_sum": loss_sum, "targets": targets, "grad_norm": grad_norm, "lr": lr}
                    self._log_step(step, done, start, window, utilization, postfix)
                bar.update(done, **postfix)
        finally:
            self.batches.close()
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if interrupted:
            path = self.save(f"step-{self.progress.step:08d}")
            if runtime.is_main:
                log.warning(
                    "stopped early at step %d; continue with resume=true (checkpoint %s)",
                    self.progress.step,
                    path,
                )
            return self.run_dir
        self.finish()
        return self.run_dir

    def _validate_on_schedule(self, start: float, validation, window: list, postfix: dict) -> None:
        """Collective: a validation while training, its time kept out of the next tokens/s."""
        record = self._validate_while_training(start)
        self.progress.elapsed_s = record["elapsed_s"]  # a checkpoint now holds its time
        validation.advance(self.progress.tokens, self.progress.elapsed_s)
        window[1] += record["eval_s"]  # tokens/s counts training time only
        if record["val_loss"] is not None:
            postfix["val"] = record["val_loss"]

    def _log_step(
        self, step: dict, done: float, start: float, window: list, utilization, postfix: dict
    ) -> None:
        """Collective: the step's record (its loss summed over ranks; `targets` already counts every
        rank's rows), with tokens/s over the training time since the last record, to the loggers
        and the progress bar."""
        (loss_sum,) = self.runtime.sum([step["loss_sum"]])
        now = self.clock()
        tokens_per_s = window[0] / max(now - window[1], 1e-9)
        record = {
            "step": self.progress.step,
            "tokens": self.progress.tokens,
            "loss": loss_sum / max(step["targets"], 1),
            "lr": step["lr"],
            "grad_norm": step["grad_norm"],
            "tokens_per_s": tokens_per_s,
            "elapsed_s": now - start,
            "train_elapsed_s": now - start - self.eval_s,
            "progress": done,
        }
        if self.metrics:
            record["mfu"] = utilization.mfu(tokens_per_s)
            record["memory_mb"] = utilization.memory_mb()
            self.metrics.write(record)
        postfix |= {"loss": record["loss"], "lr": step["lr"], "tok_s": int(tokens_per_s)}
        window[:] = [0, now]

    def ranks_agree(self) -> bool:
        """Whether every rank holds the same weights (data parallelism must keep them identical)."""
        if not dist.is_initialized():
            return True
        with self.engine.full_weights():
            checksum = float(sum(p.detach().double().sum() for p in self.model.parameters()))
        checksums = [None] * self.runtime.world_size
        dist.all_gather_object(checksums, checksum)
        return all(math.isclose(c, checksums[0], rel_tol=1e-9) for c in checksums)

    def _validate(self, max_rows: int | None) -> dict:
        """Collective: loss and bits per byte on the validation split's first `max_rows` rows (None:
        all). It draws no random number and leaves the training data's order alone."""
        total, count = evaluate(
            self.model,
            self.data.split("validation"),
            self.runtime,
            self.cfg.train.micro_batch_size,
            self.dtype,
            split_bounds(self.stats["splits"].get("validation", {}), self.cfg.data.max_sentence_len),
            max_rows,
        )
        val_loss = total / count if count else None  # a corpus too small to hold out a validation split
        return {
            "val_loss": val_loss,
            "val_bpb": bits_per_byte(val_loss, self.stats["splits"]["validation"]) if count else None,
            "val_tokens": count,
        }

    def _validate_while_training(self, start: float) -> dict:
        """Collective: a validation on `train.periodic_eval_rows` rows (at most `train.eval_rows`),
        its time charged to the budget and counted apart (`train_elapsed_s` leaves it out)."""
        train = self.cfg.train
        began = self.clock()
        scores = self._validate(min(train.periodic_eval_rows, train.eval_rows or train.periodic_eval_rows))
        now = self.clock()
        self.eval_s += now - began
        record = {
            "step": self.progress.step,
            "tokens": self.progress.tokens,
            "elapsed_s": now - start,
            "train_elapsed_s": now - start - self.eval_s,
            **scores,
            "eval_s": now - began,
        }
        if self.metrics:
            self.metrics.write(record)
        return record

    def finish(self) -> None:
        """Evaluate on the validation split, record it, write the final checkpoint and the plot."""
        agree = self.ranks_agree()
        if not agree:
            log.error("ranks hold different weights after training: the distributed setup is broken")
        scores = self._validate(self.cfg.train.eval_rows)
        record = {
            "step": self.progress.step,
            "tokens": self.progress.tokens,
            "elapsed_s": self.progress.elapsed_s,
            "train_elapsed_s": self.progress.elapsed_s - self.eval_s,
            "lr": lr_at(self.fraction_done(self.progress.elapsed_s), self.cfg.train),
            **scores,
            "world_size": self.runtime.world_size,
            "ranks_agree": agree,
        }
        final = self.save(FINAL)
        if self.metrics:
            self.metrics.write(record)
            plot_losses(self.run_dir)
            validation = (
                f"validation loss {scores['val_loss']:.4f}, {scores['val_bpb']:.4f} bits/byte"
                if scores["val_tokens"]
                else "no validation rows (the corpus is too small to hold any out)"
            )
            print(
                f"finished {self.progress.step} steps, {self.progress.tokens:,} tokens in "
                f"{self.progress.elapsed_s:.0f} s; {validation}; checkpoint {final}"
            )


def train(
    cfg,
    clock: Callable[[], float] = time.monotonic,
    stop_after_steps: int | None = None,
    claim: RunClaim | None = None,
    run_folder: Path | None = None,
) -> Path:
    """Run `cfg` on this process's share of the machines; returns the run folder. `claim`: a run folder
    the caller already claimed and holds (pretrain.py does, before hydra writes into it); else rank 0
    claims one here, held until the run ends: `run_folder` (a sweep's job folder), or a new one under
    `<output_dir>/<name>/`."""
    runtime = setup_runtime(cfg.impl)
    try:
        with fp32_matmuls(runtime.device, cfg.impl.tf32), contextlib.ExitStack() as held:
            if claim is None and runtime.is_main:  # before anything slow: a bad resume=true fails at once
                claim = held.enter_context(claim_run(cfg, run_folder))
            return Trainer(cfg, runtime, clock, claim if runtime.is_main else None).run(stop_after_steps)
    finally:
        teardown_runtime(runtime)
