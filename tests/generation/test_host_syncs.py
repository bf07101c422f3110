"""A decode step reads the device once: on a GPU every read-back makes the host wait for the queued
work, which caps a small model's decode speed. Counted on the CPU by the tensor calls that read a
value back; only the decode steps are counted (prefill may read a few), as the difference between
two generations that differ only in their number of steps."""

from __future__ import annotations

import sys

import pytest
import torch

from gpthf.generation import GenerationSettings, SamplingSettings, generate
from gpthf.models import SPECS
from tests.models.helpers import HostSyncs, synthetic_rows, tiny_model

KINDS = list(SPECS)
SAMPLINGS = {
    "greedy": SamplingSettings(temperature=0),
    "sampled": SamplingSettings(temperature=1.0, top_k=20, top_p=0.9),
}


class DeviceReads(HostSyncs):
    """HostSyncs, and copies to the CPU too (`.cpu()`, `.to("cpu")`): a read-back as well."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(str(a) == "cpu" for a in [*args[1:], *kwargs.values()])
        if name == "cpu" or to_cpu:
            self.calls.append(name)
        return super().__torch_function__(func, types, args, kwargs)


def reads_and_steps(model, prompts, settings: GenerationSettings, monkeypatch) -> tuple[int, int]:
    """Device reads during `generate`, and its decode steps (one token sampled per step)."""
    steps = []
    slots = sys.modules["gpthf.generation.slots"]  # the engine's step, which `generate` drives
    sample = slots.sample
    monkeypatch.setattr(slots, "sample", lambda *a, **k: steps.append(1) or sample(*a, **k))
    with DeviceReads() as reads:
        generate(model, prompts, settings, pack=False)
    return len(reads.calls), len(steps)


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_decode_step_reads_the_device_once(kind, sampling, monkeypatch):
    model = tiny_model(kind, seed=3)
    ids, _ = synthetic_rows(3, 40, seed=321)
    prompts = [ids[i, : 5 + 11 * i].tolist() for i in range(3)]  # ragged, some sentences finished

    def run(new_tokens: int) -> tuple[int, int]:
        settings = GenerationSettings(max_new_tokens=new_tokens, sampling=SAMPLINGS[sampling], seed=1)
        return reads_and_steps(model, prompts, settings, monkeypatch)

    short, long = run(8), run(24)
    assert long[1] > short[1] >= 4, "rows that stop at once measure nothing"
    assert (long[0] - short[0]) / (long[1] - short[1]) <= 1


def test_the_counter_sees_what_a_gpu_would_wait_for():
    x = torch.arange(4)
    with DeviceReads() as reads:
        x.tolist(), int(x[0]), bool(x[1]), x.nonzero(), x.cpu(), x.to("cpu"), x[2].item(), x + 1
    assert reads.calls.count("to") == 1 and len(reads.calls) == 7
