"""`eval/compare.py --quick` runs and its numbers are sane (benchmarks are not tests of speed)."""

import json

import pytest

from tests.conftest import run_script


@pytest.mark.slow  # CI time: run with `pytest -m slow`
def test_compare_quick_smoke(tmp_path):
    run = run_script(
        "eval/compare.py", "--quick", "--no-hf", "--threads", "1", "--out", str(tmp_path),
        "--cache-dir", str(tmp_path / "cache"), "--state-budget", "32MiB", timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    headline = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < headline["gpthf_state_over_gpt_state"] < 1
    assert headline["gpthf_cached_over_gpt_full"] > 1
    results = json.loads((tmp_path / "compare.json").read_text())
    assert headline["device"] == results["device"] == "cpu" and headline["machine"] == results["machine"]
    assert headline["gpthf_tokens_per_s"] > 0 and headline["gpt_tokens_per_s"] > 0
    assert "peak_cuda_mb" not in results and not any("peak_cuda_mb" in r for r in results["decode"])
    assert {r["strategy"] for r in results["decode"]} == {"cached", "full"}
    assert all(
        r["tokens_per_s"] > 0 and r["ms_per_token"] > 0 and r["prefill_s"] > 0 for r in results["decode"]
    )
    alternatives = ("linear", "t2r", "lstm", "block_recurrent")
    assert all(results["training_tokens_per_s"][k] > 0 for k in ("gpthf", "gpt", *alternatives))
    for kind in alternatives:  # a fixed-size state: the same bytes at every context
        states = {
            (r["batch"], r["context"]): r["state_bytes"] for r in results["decode"] if r["model"] == kind
        }
        assert len(states) == 4 and all(states[(b, 128)] == states[(b, 512)] for b in (1, 2))
        assert (
            0 < headline[f"{kind}_state_over_gpt_state"] < 1
            and headline[f"{kind}_cached_over_gpt_cached"] > 0
        )
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    peaks = results["peaks"]
    assert peaks["copy_gb_s"] > 0 and peaks["matmul_square_gflop_s"] > peaks["matmul_b8_gflop_s"] > 0
    for row in results["decode"]:
        line = row["roofline"]
        assert line["step_bytes"] > row["state_bytes"] and line["step_flops"] > 0
        assert 0 < line["pct_of_copy_bandwidth"] and 0 < line["pct_of_matmul_peak"] < 100
    budget = {(r["model"], r["context"]): r for r in results["state_budget"]}
    assert set(budget) == {(k, c) for k in ("gpthf", "gpt") for c in (128, 512)}
    for row in budget.values():
        assert row["batch_fits"] * row["state_bytes_per_row"] <= 32 * 2**20
        assert (row["batch_fits"] + 1) * row["state_bytes_per_row"] > 32 * 2**20, (
            "the largest batch that fits"
        )
        assert row["batch"] == min(row["batch_fits"], 512) and row["tokens_per_s"] > 0
    assert budget[("gpthf", 512)]["batch"] > 5 * budget[("gpt", 512)]["batch"]
    assert headline["budget_gpthf_over_gpt_at_512"] > 0


def test_hf_peer_has_our_gpt_shape_and_times_decoding():
    import importlib.util

    import pytest

    if importlib.util.find_spec("transformers") is None:
        pytest.skip('transformers is not installed (pip install ".[compare]")')
    from gpthf.measure.speed import batch_of_contexts, hf_llama_twin, time_decode, time_hf_generate
    from tests.models.helpers import tiny_model

    gpt = tiny_model("gpt")
    hf = hf_llama_twin(gpt)
    assert sum(p.numel() for p in hf.parameters()) == gpt.num_parameters()
    tokens = batch_of_contexts(list(range(4, 90)) * 3, context=40, new_tokens=4, batch=2)
    theirs = time_hf_generate(hf, tokens, context=40)
    ours = time_decode(gpt, "gpt", "cached", tokens, context=40)
    assert theirs.tokens_per_s > 0 and ours.tokens_per_s > 0
    assert theirs.state_bytes == ours.state_bytes, "same fp32 KV cache size for the same shape and length"


def test_a_state_budget_that_holds_no_row_is_refused_before_timing():
    import runpy
    from argparse import Namespace

    import pytest

    from gpthf.errors import ConfigError
    from tests.conftest import REPO
    from tests.models.helpers import tiny_model

    plan = runpy.run_path(str(REPO / "eval" / "compare.py"))["plan_state_budget"]
    models = {"gpthf": tiny_model("gpthf"), "gpt": tiny_model("gpt")}
    args = Namespace(contexts=[64], new_tokens=4, state_budget=1000)
    with pytest.raises(ConfigError, match="holds no row of gpthf at context 64"):
        plan(args, models, list(range(4, 200)))
    args.state_budget = 2**30
    rows = plan(args, models, list(range(4, 200)))
    assert rows[0]["fits"] > rows[1]["fits"] >= 1  # gpthf's rows are smaller


def test_bf16_halves_the_state_and_decodes(tmp_path):
    import torch

    from gpthf.measure.speed import batch_of_contexts, time_decode
    from tests.models.helpers import tiny_model

    tokens = batch_of_contexts(list(range(4, 90)) * 3, context=40, new_tokens=4, batch=2)
    for kind in ("gpthf", "gpt"):
        model = tiny_model(kind)
        fp32 = time_decode(model, kind, "cached", tokens, context=40)
        bf16 = time_decode(model.to(torch.bfloat16), kind, "cached", tokens, context=40)
        assert bf16.state_bytes * 2 == fp32.state_bytes and bf16.tokens_per_s > 0


def test_formats_bench_times_every_variant(data_cache, tmp_path):
    from tests.conftest import SMALL_DATA

    run = run_script(
        "eval/formats.py", "--quick", "--threads", "1", "--out", str(tmp_path), f"cache_dir={data_cache}",
        *SMALL_DATA, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["machine"]
    variants = {(r["model"], r["dtype"], r["mode"]) for r in result["rows"]}
    assert variants == {
        (m, d, v) for m in ("gpthf", "gpt") for d in ("fp32", "bf16") for v in ("plain", "packed")
    }
    assert all(r["tokens_per_s"] > 0 and r["ms_per_step"] > 0 for r in result["rows"])
    for kind in ("gpthf", "gpt"):
        ratios = result["ratios"][kind]
        assert all(
            0.05 < x < 20 for x in [*ratios["bf16_over_fp32"].values(), *ratios["packed_over_plain"].values()]
        )
        assert all(ms > 0 for ms in ratios["step_matmuls_ms_packed"].values())
        assert 0.05 < ratios["bf16_over_fp32_matmuls_alone"] < 20
    assert set(result["ratios"]["gpthf_over_gpt"]) == {
        "fp32 plain",
        "fp32 packed",
        "bf16 plain",
        "bf16 packed",
    }
    assert (tmp_path / "formats.png").stat().st_size > 10_000


def test_interleaved_timings_keep_each_jobs_median_run():
    from gpthf.measure.speed import DecodeTiming, interleaved_timings

    order = []

    def job(name, speeds):
        runs = iter(speeds)

        def run():
            order.append(name)
            speed = next(runs)
            return DecodeTiming(name, "cached", 1, 1, 1, 0.0, 1000 / speed, speed, 0, 0.0)

        return run

    a, b = interleaved_timings([job("a", [5.0, 1.0, 3.0]), job("b", [2.0, 9.0, 4.0])], repeats=3)
    assert order == ["a", "b"] * 3  # one run of each job per round
    assert (a.tokens_per_s, b.tokens_per_s) == (3.0, 4.0)
    assert a.ms_per_token == 1000 / 3.0  # the median run's own step time


def test_compiled_gpthf_is_compared_with_compiled_gpt():
    import runpy
    from argparse import Namespace

    from tests.conftest import REPO
    from tests.models.helpers import VOCAB, tiny_model

    ratio_rows = runpy.run_path(str(REPO / "eval" / "compare.py"))["ratio_rows"]
    speeds = {
        ("gpthf", "cached"): 10.0,
        ("gpt", "cached"): 5.0,
        ("gpthf", "compiled"): 60.0,
        ("gpt", "compiled"): 20.0,
    }
    decode = [
        {"model": m, "strategy": s, "context": 64, "batch": 8, "tokens_per_s": v, "state_bytes": 100}
        for (m, s), v in speeds.items()
    ]
    models = {"gpthf": tiny_model("gpthf"), "gpt": tiny_model("gpt")}
    args = Namespace(contexts=[64], batches=[8], models=[], compile=True)
    (row,) = ratio_rows(args, decode, models, VOCAB, 12.0)
    assert row["gpthf_cached_over_gpt_cached"] == 2.0 and row["gpthf_compiled_over_gpt_compiled"] == 3.0
    assert (row["gpthf_compiled_over_eager"], row["gpt_compiled_over_eager"]) == (6.0, 4.0)
