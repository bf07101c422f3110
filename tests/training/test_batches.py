"""The training loader: the next step read ahead in a thread, pinned on CUDA, and a checkpoint that
saves the position of the steps handed out, never of the one read ahead."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from gpthf.attention.sentences import SentenceBounds
from gpthf.config import load_config
from gpthf.data.dataset import prepare_data
from gpthf.data.special_tokens import PAD_ID
from gpthf.training.batches import TrainBatches, fitting_bounds, split_bounds
from tests.conftest import run_overrides


@pytest.fixture
def data(data_cache, tmp_path):
    cfg = load_config(run_overrides(data_cache, tmp_path))
    return cfg, prepare_data(cfg, progress=False)


class CountingSplit:
    """A split that records which thread read which rows."""

    def __init__(self, split):
        self.split, self.reads = split, []

    def __len__(self) -> int:
        return len(self.split)

    def rows(self, index):
        self.reads.append((threading.current_thread().name, np.asarray(index).copy()))
        return self.split.rows(index)


def loader(data, read_ahead: bool = True, device: torch.device | None = None) -> TrainBatches:
    cfg, prepared = data
    return TrainBatches(
        CountingSplit(prepared.split("train")),
        cfg.train,
        0,
        1,
        device or torch.device("cpu"),
        split_bounds(prepared.stats["splits"]["train"], cfg.data.max_sentence_len),
        read_ahead=read_ahead,
    )


def as_lists(step) -> list:
    return [(ids.tolist(), sids.tolist()) for ids, sids in step.micro_batches] + [step.tokens, step.targets]


def test_the_next_step_is_read_in_a_thread_and_a_checkpoint_saves_the_steps_handed_out(data):
    straight = loader(data, read_ahead=False)
    expected = [as_lists(straight.next_step()) for _ in range(6)]
    first = loader(data)
    try:
        got = [as_lists(first.next_step()) for _ in range(3)]
        saved = first.order.state_dict()  # a checkpoint mid-run, with step 4 read ahead
        first._ahead.future.result()  # (let that read finish, to see which thread made it)
        read_by = [name for name, _ in first.split.reads]
        assert len(read_by) == 4 and all(name.startswith("gpthf-batches") for name in read_by[1:])
    finally:
        first.close()
    straight_after_3 = loader(data, read_ahead=False)
    for _ in range(3):
        straight_after_3.next_step()
    assert saved == straight_after_3.order.state_dict(), "the position of 3 steps, not 4"
    resumed = loader(data)
    try:
        resumed.order.load_state_dict(saved)
        got += [as_lists(resumed.next_step()) for _ in range(3)]
    finally:
        resumed.close()
    assert got == expected


def test_a_read_ahead_made_stale_by_a_loaded_position_is_dropped(data):
    batches = loader(data)
    try:
        start = batches.order.state_dict()
        first = as_lists(batches.next_step())  # reads step 2 ahead
        batches.order.load_state_dict(start)
        assert as_lists(batches.next_step()) == first
    finally:
        batches.close()


def test_close_stops_the_thread(data):
    batches = loader(data)
    batches.next_step()
    assert any(t.name.startswith("gpthf-batches") for t in threading.enumerate())
    batches.close()
    assert not any(t.name.startswith("gpthf-batches") for t in threading.enumerate())
    batches.close()  # twice is harmless


def test_rows_are_pinned_for_cuda_only(data, monkeypatch):
    pinned = []

    def pin_memory(tensor, *args, **kwargs):
        pinned.append(tuple(tensor.shape))
        return tensor

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    rows = np.arange(data[0].train.batch_size)
    loader(data)._read(rows)
    assert pinned == [], "no pinned memory without CUDA"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loader(data, device=torch.device("cuda"))._read(rows)  # the copy to the device is not made here
    assert len(pinned) == 2, "input_ids and sentence_ids, before their non_blocking copies"


def test_bounds_hold_for_every_real_sentence_of_the_training_data(data):
    batches = loader(data, read_ahead=False)
    cfg, prepared = data
    assert batches.bounds == SentenceBounds(
        prepared.stats["splits"]["train"]["max_sentences"], cfg.data.max_sentence_len
    )
    for _ in range(5):
        for ids, sids in batches.next_step().micro_batches:
            assert int(sids.max()) + 1 <= batches.bounds.sentences
            real = ids != PAD_ID
            for row_ids, row_real in zip(sids, real):
                lengths = torch.bincount(row_ids[row_real])
                assert int(lengths.max()) <= batches.bounds.sentence_len


@pytest.mark.parametrize(
    "rows, expected",
    [  # nominal: 3 sentences of at most 4 tokens
        ([[0, 0, 1, 1, 1, 2, 2, 2]], SentenceBounds(3, 4)),  # within both: the nominal bounds
        ([[0, 0, 0, 0, 1, 2, 2, 2]], SentenceBounds(3, 4)),  # a sentence exactly at the bound
        ([[0, 1, 1, 1, 1, 1, 1, 1]], SentenceBounds(3, 8)),  # a long trailing padding run: 7 -> 8
        ([[0, 0, 1, 1, 1, 1, 1, 2]], SentenceBounds(3, 8)),  # 5 -> the next power of two
        ([[0, 1, 2, 3, 3, 3, 3, 4]], SentenceBounds(8, 4)),  # more sentences than the split's record
        ([[0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 1, 1, 1]], SentenceBounds(3, 8)),  # any row decides
        ([[0] * 5 + [1] * 15], SentenceBounds(3, 16)),  # 15 in a row of 20: 16, not the whole row
    ],
)
def test_batch_bounds_widen_to_the_row_only_where_the_nominal_ones_do_not_hold(rows, expected):
    bounds = fitting_bounds(np.array(rows), SentenceBounds(3, 4))
    assert bounds == expected
    exact = SentenceBounds.of(torch.tensor(rows))
    assert exact.sentences <= bounds.sentences and exact.sentence_len <= bounds.sentence_len


def test_every_step_carries_bounds_that_hold_for_its_rows(data):
    batches = loader(data)
    try:
        for _ in range(8):
            step = batches.next_step()
            for _, sids in step.micro_batches:
                exact = SentenceBounds.of(sids)
                assert exact.sentences <= step.bounds.sentences
                assert exact.sentence_len <= step.bounds.sentence_len
                assert step.bounds.sentences == batches.bounds.sentences, "the split's record holds"
    finally:
        batches.close()
