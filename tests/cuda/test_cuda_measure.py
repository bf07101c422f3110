"""The benchmarks on a GPU: `--device cuda` runs end to end and names the GPU, the CUDA clock times the
GPU's work (not the launch), and peak memory comes from the GPU.

compare.py reads the default data cache (`data_cache/`, prepared once by the first run on this
checkout, as gpu-check's own compare runs do), so the test costs one preparation at most.
"""

import json
import time

import pytest
import torch

from gpthf.precision import gpu_computes_bf16
from tests.conftest import run_script

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def gpu_format() -> str:
    return "bf16" if gpu_computes_bf16() else "fp16"


def test_compare_quick_on_cuda_names_the_gpu_and_decodes(tmp_path):
    run = run_script(
        "eval/compare.py", "--quick", "--device", "cuda", "--dtype", gpu_format(),
        "--state-budget", "64MiB", "--out", str(tmp_path), timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    headline = json.loads(run.stdout.strip().splitlines()[-1])
    name = torch.cuda.get_device_name(0)
    assert headline["device"] == "cuda:0" and headline["machine"] == name
    assert headline["gpthf_tokens_per_s"] > 0 and headline["gpt_tokens_per_s"] > 0
    assert headline["budget_gpthf_over_gpt_at_512"] > 0
    results = json.loads((tmp_path / "compare.json").read_text())
    assert results["machine"] == name and results["dtype"] == gpu_format()
    assert all(r["tokens_per_s"] > 0 and r["prefill_s"] > 0 for r in results["decode"])
    assert all(r["peak_cuda_mb"] > 0 for r in results["decode"]), "memory read from the GPU"
    assert results["peak_cuda_mb"] > 0
    peaks = results["peaks"]
    assert peaks["matmul_square_gflop_s"] > peaks["matmul_b8_gflop_s"] > 0 and peaks["copy_gb_s"] > 50
    assert all(v > 0 for v in results["training_tokens_per_s"].values())


def test_the_cuda_clock_times_the_gpus_work_not_the_launch():
    from gpthf.measure.timing import Clock, timed_seconds

    cycles = 50_000_000  # tens of milliseconds at any GPU clock
    torch.cuda._sleep(1000)  # load the kernel
    clock = Clock("cuda")
    clock.mark()
    launched = time.perf_counter()
    torch.cuda._sleep(cycles)
    launched = time.perf_counter() - launched
    clock.mark()
    torch.cuda._sleep(2 * cycles)
    clock.mark()
    start, once, thrice = clock.seconds()
    twice = thrice - once
    assert start == 0.0 and 0.002 < once < 5
    assert 1.6 < twice / once < 2.4, "the events follow the work they enclose"
    assert launched < once / 2, "the launch returned long before the kernel ended"
    assert 0.8 < timed_seconds(lambda: torch.cuda._sleep(cycles), "cuda") / once < 1.25


def test_peak_memory_is_the_gpus():
    from gpthf.measure.timing import peak_device_mb, reset_peak_memory

    reset_peak_memory("cuda")
    before = peak_device_mb("cuda")
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    assert peak_device_mb("cuda") >= before + 64
    del block


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_decode_and_training_timings_run_where_the_model_is(kind):
    from gpthf.generation.strategies import sentence_ids_for
    from gpthf.measure.speed import batch_of_contexts, state_bytes_per_row, time_decode, time_training
    from tests.models.helpers import tiny_model

    tokens = batch_of_contexts(list(range(4, 90)) * 3, context=40, new_tokens=4, batch=2)  # on the CPU
    on_cpu = time_decode(tiny_model(kind), kind, "cached", tokens, context=40)
    model = tiny_model(kind).cuda()
    timing = time_decode(model, kind, "cached", tokens[:1], context=40, tile_to=8)
    assert timing.batch == 8 and timing.tokens_per_s > 0 and timing.peak_cuda_mb > 0
    assert time_decode(model, kind, "cached", tokens, context=40).state_bytes == on_cpu.state_bytes
    assert state_bytes_per_row(model, tokens[:1]) > 0
    sentence_ids = sentence_ids_for(tokens, torch.full((tokens.shape[0],), tokens.shape[1]))
    assert time_training(model, tokens, sentence_ids, steps=1) > 0


def test_the_hf_peer_decodes_on_the_gpu():
    pytest.importorskip("transformers")
    from gpthf.measure.speed import batch_of_contexts, hf_llama_twin, time_hf_generate
    from tests.models.helpers import tiny_model

    hf = hf_llama_twin(tiny_model("gpt")).cuda()
    tokens = batch_of_contexts(list(range(4, 90)) * 3, context=40, new_tokens=4, batch=2)
    timing = time_hf_generate(hf, tokens, context=40)
    assert timing.tokens_per_s > 0 and timing.prefill_s > 0 and timing.peak_cuda_mb > 0


def test_formats_runs_on_cuda_without_packing(data_cache, tmp_path):
    from tests.conftest import SMALL_DATA

    if not gpu_computes_bf16():
        pytest.skip("formats.py compares bf16 with fp32")
    run = run_script(
        "eval/formats.py", "--quick", "--device", "cuda", "--out", str(tmp_path),
        f"cache_dir={data_cache}", *SMALL_DATA, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["machine"] == torch.cuda.get_device_name(0)
    assert {r["mode"] for r in result["rows"]} == {"plain"}, "nothing is packed on a GPU"
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])


def test_batching_serves_from_the_gpu(trained_runs, tmp_path):
    run = run_script(
        "eval/batching.py", "--ckpt", str(trained_runs["gpthf"]), "--device", "cuda", "--prompts", "12",
        "--slots", "4", "--new-tokens", "8", "--repeats", "1", "--out", str(tmp_path),
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["device"] == "cuda:0" and result["same_tokens"] is True
    assert result["continuous_tokens_per_s"] > 0 and result["peak_cuda_mb"] > 0
