"""gpthf.measure.timing: the host clock on a CPU, CUDA events read after a synchronize on a GPU (the
CUDA side checked here against a stand-in of torch.cuda that records what it is asked), peak memory
and the machine's name from the device that ran the work."""

import time
from pathlib import Path

import pytest
import torch

from gpthf.measure.timing import (
    Clock,
    best_seconds,
    machine_name,
    peak_device_mb,
    peak_rss_mb,
    reset_peak_memory,
    timed_seconds,
)


def test_the_cpu_clock_times_host_work():
    clock = Clock("cpu")
    clock.mark()
    time.sleep(0.05)
    clock.mark()
    clock.mark()
    start, slept, after = clock.seconds()
    assert start == 0.0 and 0.04 < slept < 1.0 and slept <= after < slept + 0.01
    assert 0.02 < timed_seconds(lambda: time.sleep(0.03)) < 1.0
    calls = []
    best = best_seconds(lambda: calls.append(time.sleep(0.01)), repeats=2)
    assert len(calls) == 3, "one warm-up call, then the timed ones"
    assert 0.005 < best < 1.0
    assert Clock("cpu").seconds() == []


class FakeCuda:
    """torch.cuda's event and synchronize calls, logged; each event reads 250 ms after the one
    recorded before it, whatever the host clock says."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[str] = []
        self.recorded = 0
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing, "timing events only"
                self.at: float | None = None

            def record(self, stream=None) -> None:
                fake.log.append("record")
                self.at = 0.25 * fake.recorded
                fake.recorded += 1

            def elapsed_time(self, end) -> float:  # milliseconds, as torch's
                fake.log.append("elapsed")
                return 1000 * (end.at - self.at)

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: self.log.append("sync"))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)


def test_the_cuda_clock_reads_events_after_draining_the_queue(monkeypatch):
    fake = FakeCuda(monkeypatch)
    clock = Clock("cuda:0")
    clock.mark()
    fake.log.append("work")
    clock.mark()
    assert fake.log == ["sync", "record", "work", "record"], "no host sync between the marks"
    assert clock.seconds() == [0.0, 0.25]
    assert fake.log[4:] == ["sync", "elapsed", "elapsed"], "events read only after a synchronize"

    fake.log.clear()
    seconds = timed_seconds(lambda: fake.log.append("work"), "cuda")
    assert seconds == 0.25, "the GPU's timeline, not the host's"
    assert fake.log[:4] == ["sync", "record", "work", "record"] and fake.log[4] == "sync"


def test_peak_memory_comes_from_the_device_that_ran(monkeypatch):
    resets = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: resets.append(device))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    reset_peak_memory("cpu")
    assert resets == [] and peak_device_mb("cpu") is None, "the host has no device peak"
    reset_peak_memory("cuda:1")
    assert resets == [torch.device("cuda", 1)] and peak_device_mb("cuda:1") == 3.0
    assert peak_rss_mb() > 10


def test_a_figure_names_the_gpu_it_ran_on(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert machine_name("cuda:0") == "NVIDIA H200"
    assert machine_name("cpu") not in ("", "NVIDIA H200")
    if Path("/proc/cpuinfo").is_file():  # the CPU model and threads, as every recorded figure names them
        assert machine_name("cpu").endswith(f"{torch.get_num_threads()} threads")
        assert machine_name("cpu") not in ("x86_64", "aarch64")


def test_a_cpu_decode_row_keeps_its_fields_and_a_cuda_row_adds_its_peak():
    from gpthf.measure.speed import DecodeTiming, batch_of_contexts, time_decode
    from tests.models.helpers import tiny_model

    tokens = batch_of_contexts(list(range(4, 90)) * 3, context=40, new_tokens=4, batch=2)
    row = time_decode(tiny_model("gpthf"), "gpthf", "cached", tokens, context=40).as_dict()
    assert set(row) == {
        "model", "strategy", "context", "batch", "new_tokens", "prefill_s", "ms_per_token",
        "tokens_per_s", "state_bytes", "peak_rss_mb",
    }  # fmt: skip
    assert row["prefill_s"] > 0 and row["tokens_per_s"] > 0 and row["ms_per_token"] > 0
    on_gpu = DecodeTiming("gpt", "cached", 1, 1, 1, 0.0, 1.0, 1.0, 0, 0.0, peak_cuda_mb=12.5).as_dict()
    assert on_gpu["peak_cuda_mb"] == 12.5


def test_training_speed_is_timed_without_the_host_syncs_the_trainer_no_longer_has():
    """The trainer hands GPTHF its sentence bounds from the host; a benchmark that let the model read
    them back every step would time syncs training does not pay (on a GPU, a stall per forward)."""
    from gpthf.measure.speed import time_training
    from tests.models.helpers import HostSyncs, random_batch, tiny_model

    model = tiny_model("gpthf")
    ids, sids = random_batch(2, 24)
    with HostSyncs() as syncs:
        assert time_training(model, ids, sids, steps=3) > 0
    assert syncs.calls.count("__int__") <= 2, syncs.calls  # the bounds, read once before the clock
