"""The order in which training rows are seen, as a position that a checkpoint can save.

Epoch e visits the rows in a permutation seeded by (seed, e), computed rather than stored (memory does
not grow with the corpus); the position is (epoch, offset), so a resumed run continues with exactly the
rows the uninterrupted run would have used. Each optimizer step takes `batch_size` rows; rank r of W
takes its contiguous share (disjoint rows), cut into micro-batches, read from the memory-mapped split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


@dataclass
class StepBatch:
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]]  # this rank's (input_ids, sentence_ids) pairs
    tokens: int  # real (non-pad) tokens in the whole step, all ranks
    targets: int  # predicted positions (non-pad next tokens) in the whole step, all ranks


def micro_batches_per_step(train_cfg, world_size: int) -> int:
    per_rank, rest = divmod(train_cfg.batch_size, world_size)
    if rest or per_rank % train_cfg.micro_batch_size:
        raise ConfigError(
            f"train.batch_size={train_cfg.batch_size} must split into {world_size} rank(s) × "
            f"micro-batches of train.micro_batch_size={train_cfg.micro_batch_size}"
        )
    return per_rank // train_cfg.micro_batch_size


class TrainBatches:
    """Yields, per optimizer step, this rank's micro-batches as (input_ids, sentence_ids) on `device`."""

    def __init__(
        self,
        split: PackedSplit,
        train_cfg,
        rank: int,
        world_size: int,
        device: torch.device,
        max_sentences: int,
    ):
        self.split = split
        if len(split) < train_cfg.batch_size:
            raise ConfigError(
                f"the training split has {len(split)} rows, fewer than train.batch_size={train_cfg.batch_size}"
            )
        self.order = RowOrder(len(split), train_cfg.seed)
        self.max_sentences = max_sentences  # most sentences in a row: GPTHF's body context
        self.batch_size, self.micro = train_cfg.batch_size, train_cfg.micro_batch_size
        self.rank, self.world_size, self.device = rank, world_size, device
        self.accumulation = micro_batches_per_step(train_cfg, world_size)

    def next_step(self) -> StepBatch:
        """This rank's micro-batches for one step, with the step's token counts over all ranks."""
        rows = self.order.take(self.batch_size)
        input_ids, sentence_ids = self.split.rows(rows)  # every rank reads the step's rows to count tokens
        real = input_ids != PAD_ID
        per_rank = self.batch_size // self.world_size
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        input_ids, sentence_ids = input_ids[mine], sentence_ids[mine]
        micro_batches = []
        for start in range(0, per_rank, self.micro):
            part = slice(start, start + self.micro)
            micro_batches.append(
                (
                    torch.from_numpy(input_ids[part]).to(self.device, non_blocking=True),
                    torch.from_numpy(sentence_ids[part]).to(self.device, non_blocking=True),
                )
            )
        return StepBatch(micro_batches, tokens=int(real.sum()), targets=int(real[:, 1:].sum()))
