"""The order in which training rows are seen, as a position that a checkpoint can save.

Epoch e visits the rows in a permutation seeded by (seed, e), computed rather than stored (memory does
not grow with the corpus); the position is (epoch, offset), so a resumed run continues with exactly the
rows the uninterrupted run would have used. Each optimizer step takes `batch_size` rows; rank r of W
takes its contiguous share (disjoint rows), cut into micro-batches, read from the memory-mapped split.

The next step's rows are read (memmap to numpy to pinned host memory on CUDA) by one background
thread while the current step runs, so the GPU never waits on the disk or on a pageable copy. The
position a checkpoint saves is that of the steps handed out, never of the one read ahead.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from gpthf.attention.sentences import SentenceBounds
from gpthf.data.permutation import Permutation
from gpthf.data.shards import PackedSplit
from gpthf.data.special_tokens import PAD_ID
from gpthf.errors import ConfigError


@dataclass
class RowOrder:
    n_rows: int
    seed: int
    epoch: int = 0
    offset: int = 0

    def take(self, count: int) -> np.ndarray:
        """The next `count` row indices, crossing into the next epoch when this one runs out."""
        taken = []
        while count:
            # Never from a checked checkpoint; a position outside the epoch gives an empty chunk: no end.
            if not 0 <= self.offset < self.n_rows:
                raise ValueError(f"data position {self.offset} is outside the epoch's {self.n_rows} rows")
            end = min(self.offset + count, self.n_rows)
            chunk = Permutation(self.n_rows, self.seed, self.epoch)(np.arange(self.offset, end))
            taken.append(chunk)
            count -= len(chunk)
            self.offset += len(chunk)
            if self.offset == self.n_rows:
                self.epoch, self.offset = self.epoch + 1, 0
        return np.concatenate(taken)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "n_rows": self.n_rows, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["n_rows"] != self.n_rows:
            raise ConfigError(
                f"the checkpoint was trained on {state['n_rows']} rows, this data set has {self.n_rows}"
            )
        self.epoch, self.offset = state["epoch"], state["offset"]


def fitting_bounds(sentence_ids: np.ndarray, nominal: SentenceBounds) -> SentenceBounds:
    """Bounds for a batch of rows (B, T), read on the host before the copy to the device.

    The nominal bounds (the split's most sentences in a row, data.max_sentence_len) hold for every
    real sentence; a row's trailing padding is one more "sentence" that can be longer (the last row
    of each packed chunk has one). A batch past a nominal bound gets the next power of two that holds
    it (at most the row length): a handful of values per run, so a compiled model builds a few graphs,
    never one per batch, and the encoder's attention windows grow with the batch's real need, not to
    the whole row. Measured by `SentenceBounds.of` on the host copy: no device sync, microseconds."""
    exact = SentenceBounds.of(torch.from_numpy(sentence_ids))
    length = sentence_ids.shape[1]

    def widened(needed: int, bound: int) -> int:
        return bound if needed <= bound else min(1 << (needed - 1).bit_length(), length)

    return SentenceBounds(
        widened(exact.sentences, nominal.sentences), widened(exact.sentence_len, nominal.sentence_len)
    )


def split_bounds(split_stats: dict, max_sentence_len: int) -> SentenceBounds:
    """The nominal bounds of a prepared split: its most sentences in a row (recorded when the data
    was built) and data.max_sentence_len, at which packing cuts every sentence."""
    return SentenceBounds(max(split_stats.get("max_sentences", 0), 1), max_sentence_len)


@dataclass
class StepBatch:
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]]  # this rank's (input_ids, sentence_ids) pairs
    tokens: int  # real (non-pad) tokens in the whole step, all ranks
    targets: int  # predicted positions (non-pad next tokens) in the whole step, all ranks
    bounds: SentenceBounds  # holds for every micro-batch of this rank's step (`fitting_bounds`)


def micro_batches_per_step(train_cfg, world_size: int) -> int:
    per_rank, rest = divmod(train_cfg.batch_size, world_size)
    if rest or per_rank % train_cfg.micro_batch_size:
        raise ConfigError(
            f"train.batch_size={train_cfg.batch_size} must split into {world_size} rank(s) × "
            f"micro-batches of train.micro_batch_size={train_cfg.micro_batch_size}"
        )
    return per_rank // train_cfg.micro_batch_size


@dataclass
class _HostStep:
    """One step's rows of this rank on the host (pinned for CUDA), before the copy to the device."""

    input_ids: torch.Tensor  # (rows of this rank, seq_len)
    sentence_ids: torch.Tensor
    tokens: int
    targets: int
    bounds: SentenceBounds


@dataclass
class _ReadAhead:
    rows: np.ndarray  # the rows it reads: handed out only if the next step takes exactly these
    future: Future[_HostStep]


class TrainBatches:
    """Yields, per optimizer step, this rank's micro-batches as (input_ids, sentence_ids) on `device`.

    Call `close()` when done (the trainer does, however the run ends): it stops the read-ahead thread.
    """

    def __init__(
        self,
        split: PackedSplit,
        train_cfg,
        rank: int,
        world_size: int,
        device: torch.device,
        nominal: SentenceBounds,
        read_ahead: bool = True,
    ):
        self.split = split
        if len(split) < train_cfg.batch_size:
            raise ConfigError(
                f"the training split has {len(split)} rows, fewer than train.batch_size={train_cfg.batch_size}"
            )
        self.order = RowOrder(len(split), train_cfg.seed)  # the steps handed out: what a checkpoint saves
        self.nominal = nominal  # most sentences in a row (GPTHF's body context), data.max_sentence_len
        self.batch_size, self.micro = train_cfg.batch_size, train_cfg.micro_batch_size
        self.rank, self.world_size, self.device = rank, world_size, device
        self.accumulation = micro_batches_per_step(train_cfg, world_size)
        self.pin = device.type == "cuda" and torch.cuda.is_available()  # pinned memory needs CUDA
        self.read_ahead = read_ahead
        self._pool: ThreadPoolExecutor | None = None  # started by the first step, not by building
        self._ahead: _ReadAhead | None = None

    @property
    def bounds(self) -> SentenceBounds:
        """What every real sentence of the training split stays within, known before any row is
        read: the model's forward takes its shapes from it (no host sync, one compiled graph)."""
        return self.nominal

    def next_step(self) -> StepBatch:
        """This rank's micro-batches for one step, with the step's token counts over all ranks."""
        rows = self.order.take(self.batch_size)
        host = self._take_read_ahead(rows)
        if self.read_ahead:
            upcoming = dataclasses.replace(self.order)  # a copy: `order` stays at the steps handed out
            ahead_rows = upcoming.take(self.batch_size)
            self._ahead = _ReadAhead(ahead_rows, self._thread().submit(self._read, ahead_rows))
        micro_batches = [
            (
                host.input_ids[start : start + self.micro].to(self.device, non_blocking=True),
                host.sentence_ids[start : start + self.micro].to(self.device, non_blocking=True),
            )
            for start in range(0, len(host.input_ids), self.micro)
        ]
        return StepBatch(micro_batches, tokens=host.tokens, targets=host.targets, bounds=host.bounds)

    def close(self) -> None:
        """Stop the read-ahead thread (waiting for a read in progress, a few milliseconds)."""
        self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _thread(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpthf-batches")
        return self._pool

    def _take_read_ahead(self, rows: np.ndarray) -> _HostStep:
        """The read-ahead of `rows` if there is one (an order loaded from a checkpoint since makes it
        stale), else `rows` read now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and np.array_equal(ahead.rows, rows):
            return ahead.future.result()  # a failed read raises here, at the step it belongs to
        if ahead is not None:
            ahead.future.cancel()
        return self._read(rows)

    def _read(self, rows: np.ndarray) -> _HostStep:
        input_ids, sentence_ids = self.split.rows(rows)  # every rank reads the step's rows to count tokens
        real = input_ids != PAD_ID
        per_rank = self.batch_size // self.world_size
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        bounds = fitting_bounds(sentence_ids[mine], self.bounds)
        ids, sids = torch.from_numpy(input_ids[mine]), torch.from_numpy(sentence_ids[mine])
        if self.pin:  # a non_blocking copy from pageable memory is a synchronous one
            ids, sids = ids.pin_memory(), sids.pin_memory()
        return _HostStep(ids, sids, tokens=int(real.sum()), targets=int(real[:, 1:].sum()), bounds=bounds)
