"""`eval/compare.py --quick` runs and its numbers are sane (benchmarks are not tests of speed)."""

import json

from tests.conftest import run_script


def test_compare_quick_smoke(tmp_path):
    run = run_script(
        "eval/compare.py", "--quick", "--no-hf", "--threads", "1", "--out", str(tmp_path),
        "--cache-dir", str(tmp_path / "cache"), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    headline = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < headline["gpthf_state_over_gpt_state"] < 1
    assert headline["gpthf_cached_over_gpt_full"] > 1
    results = json.loads((tmp_path / "compare.json").read_text())
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
