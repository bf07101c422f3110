"""Cases a hostile review of the server found: each failed before its fix."""

from __future__ import annotations

import pytest

from gpthf.generation import ContextLimit
from gpthf.serving.engine import Engine, QueueFull, RequestSettings
from gpthf.serving.openai_api import ApiError, parse_completion, parse_json
from tests.conftest import run_script
from tests.models.helpers import tiny_model


def test_a_lone_surrogate_is_a_400_not_a_tokenizer_crash():
    with pytest.raises(ApiError) as refused:
        parse_json(b'{"prompt": "\\ud800 hi", "max_tokens": 5}')
    assert refused.value.status == 400 and "surrogate" in str(refused.value)
    assert parse_json(b'{"prompt": "\\ud83d\\ude00"}')["prompt"] == "\U0001f600"  # a pair is fine


def test_vllm_spellings_top_k_off_and_refused_extras():
    for off in (-1, 0):
        assert "top_k" not in parse_completion(parse_json(f'{{"prompt": "a", "top_k": {off}}}'.encode()), "m").sampling
    for extra in ('"min_p": 0.1', '"repetition_penalty": 1.5', '"min_tokens": 3', '"use_beam_search": true'):
        with pytest.raises(ApiError, match="not supported"):
            parse_completion(parse_json(f'{{"prompt": "a", {extra}}}'.encode()), "m")
    parse_completion(parse_json(b'{"prompt": "a", "min_p": 0, "repetition_penalty": 1}'), "m")  # asks nothing


def test_requests_sent_together_to_an_idle_engine_fill_its_free_slots_before_its_queue():
    engine = Engine(tiny_model("gpt"), limit=ContextLimit(), max_sentence_len=8, max_batch=2, max_queue=3)
    settings = RequestSettings(max_tokens=2, temperature=0)
    for _ in range(5):  # 2 free slots + 3 waiting: none refused before the engine thread ran a step
        engine.add([5, 6, 7], settings, lambda event: None)
    with pytest.raises(QueueFull):
        engine.add([5, 6, 7], settings, lambda event: None)


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--max-state-memory", "2KiB"], "holds no request"),  # it used to start and fail every request
        (["--port", "99999"], "not a port"),  # it used to bind port 99999 % 65536
    ],
)
def test_a_server_that_could_serve_nothing_does_not_start(trained_runs, flags, said):
    run = run_script("-m", "gpthf", "serve", "--ckpt", str(trained_runs["gpt"]), "--port", "0", *flags, timeout=120)
    assert run.returncode == 2 and said in run.stderr, run.stderr[-2000:]
    assert len(run.stderr.strip().splitlines()) == 1 and "serving" not in run.stdout
