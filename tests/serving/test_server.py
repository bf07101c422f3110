"""`python -m gpthf serve` as a client sees it: a real uvicorn process on 127.0.0.1 (a free port),
the real engine and a tiny trained checkpoint, driven with the `openai` package and httpx.

Servers start through tests.serving.fakes, which can slow the engine's step (so a request is still
running when the test acts) or make it raise (the engine thread dies), through files in a folder.
One server per checkpoint kind is shared by the module; SIGTERM gets its own.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from gpthf.data.special_tokens import EOS_ID
from gpthf.serving.openai_api import chat_prompt
from tests.conftest import REPO

KEY = "test-key"
PROMPT = "In the beginning God created the heaven. And the earth was"
START_TIMEOUT = 90.0


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    control: Path
    log: Path

    def url(self, path: str) -> str:
        return self.base + path

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.base + "/v1", api_key=KEY, max_retries=0, timeout=30)

    @contextmanager
    def slow(self, seconds_per_step: float) -> Iterator[None]:
        """Every engine step sleeps this long first, while the block runs."""
        delay = self.control / "delay"
        delay.write_text(str(seconds_per_step))
        try:
            yield
        finally:
            delay.unlink()

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url("/metrics"), timeout=10).text
        return {
            name: float(value)
            for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[0] != "#")
        }

    def wait_idle(self, within: float) -> dict[str, float]:
        """The metrics once nothing runs or waits; fails after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            metrics = self.metrics()
            if metrics["gpthf_requests_running"] == 0 and metrics["gpthf_requests_waiting"] == 0:
                return metrics
            assert time.monotonic() < deadline, f"still busy after {within} s: {metrics}"
            time.sleep(0.02)


def start_server(run: Path, folder: Path, *args: str, warm_up_delay: float | None = None) -> Server:
    """The server on a free port (--port 0, read from its first line), once /health says 200; with
    `warm_up_delay`, every engine step sleeps that long (the warm-up too), and it is returned as soon
    as /health answers at all."""
    control = folder / "control"
    control.mkdir(parents=True)
    if warm_up_delay is not None:
        (control / "delay").write_text(str(warm_up_delay))
    log = folder / "server.log"
    command = [sys.executable, "-m", "tests.serving.fakes", "--control", str(control), "--"]
    command += ["--ckpt", str(run), "--host", "127.0.0.1", "--port", "0", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with log.open("w") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    line = _read_line(proc, deadline, log)
    server = Server(proc, re.search(r"(http://127\.0\.0\.1:\d+)/v1", line).group(1), control, log)
    wait_health(server, deadline, wanted=None if warm_up_delay is not None else 200)
    return server


def wait_health(server: Server, deadline: float, wanted: int | None = 200) -> None:
    """Until /health answers (with `wanted`, unless None)."""
    while True:
        assert server.proc.poll() is None, f"the server exited: {server.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the server never became healthy"
        try:
            status = httpx.get(server.url("/health"), timeout=5).status_code
            if wanted is None or status == wanted:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def _read_line(proc: subprocess.Popen, deadline: float, log: Path) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                line = proc.stdout.readline()
                assert line, f"the server exited before serving: {log.read_text()[-3000:]}"
                return line
    raise AssertionError("the server printed nothing in time")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def gpthf_server(trained_runs, tmp_path_factory) -> Iterator[Server]:
    server = start_server(
        trained_runs["gpthf"], tmp_path_factory.mktemp("gpthf-server"), "--api-key", KEY,
        "--max-batch", "1", "--max-queue", "4",
    )  # fmt: skip
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def gpt_server(trained_runs, tmp_path_factory) -> Iterator[Server]:
    server = start_server(trained_runs["gpt"], tmp_path_factory.mktemp("gpt-server"))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def local(trained_runs):
    """The gpthf checkpoint in this process: what generate.py would make of a request."""
    from gpthf.data.splitter import build_splitter
    from gpthf.generation import ContextLimit, decode_continuation, encode_prompt
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.serving.engine import Engine, RequestSettings, Token
    from gpthf.training.checkpoint import load_checkpoint_tokenizer

    model, meta, checkpoint = load_model_from_checkpoint(trained_runs["gpthf"])
    tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
    splitter = build_splitter(meta.data["language"])
    limit, max_len = ContextLimit(**meta.context), meta.data["max_sentence_len"]

    class Local:
        max_sentence_len = max_len

        def encode(self, text: str) -> list[int]:
            return encode_prompt(text, tokenizer, splitter, max_len)

        def generate(self, text: str, **settings) -> tuple[list[int], str]:
            engine = Engine(model, limit=limit, max_sentence_len=max_len)
            events = []
            engine.add(self.encode(text), RequestSettings(**settings), events.append)
            while engine.step():
                pass
            tokens = [e.token_id for e in events if isinstance(e, Token)]
            return tokens, decode_continuation(tokenizer, tokens)

    return Local()


# The API, through the openai client -----------------------------------------------------------------


def test_completions_give_generate_py_text_streamed_or_not(gpthf_server, local):
    """Sampled with a seed: the text (sentence boundaries, stray bytes and all) is what generate.py
    decodes from the same tokens, whole or streamed piece by piece."""
    tokens, expected = local.generate(PROMPT, max_tokens=40, temperature=1.0, seed=5)
    assert EOS_ID in tokens and "\ufffd" in expected  # sentence boundaries and bytes that are no character
    client = gpthf_server.client()
    model = client.models.list().data[0].id
    settings = {"model": model, "prompt": PROMPT, "max_tokens": 40, "temperature": 1.0, "seed": 5}
    whole = client.completions.create(**settings)
    assert whole.choices[0].text == expected
    assert whole.choices[0].finish_reason == "length"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
        len(local.encode(PROMPT)),
        len(tokens),
    )
    chunks = list(client.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == len(tokens)


def test_chat_completions_use_the_plain_template(gpthf_server, local):
    messages = [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Who made the heaven?"},
    ]
    assert chat_prompt(messages) == "System: Be brief. User: Who made the heaven? Assistant:"
    _, expected = local.generate(chat_prompt(messages), max_tokens=12, temperature=0.0)
    client = gpthf_server.client()
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    assert (
        reply.choices[0].message.content == expected.lstrip() and reply.choices[0].message.role == "assistant"
    )
    assert reply.usage.prompt_tokens == len(local.encode(chat_prompt(messages)))
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_n_choices_and_prompt_lists_in_openai_order(gpthf_server):
    client = gpthf_server.client()
    model = client.models.list().data[0].id
    prompts = [PROMPT, "The fox ran into the wood."]
    both = client.completions.create(model=model, prompt=prompts, n=2, max_tokens=6, temperature=1.0, seed=7)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):  # the first choice of each prompt is that prompt alone with the seed
        alone = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=1.0, seed=7)
        assert both.choices[2 * i].text == alone.choices[0].text
    assert both.choices[0].text != both.choices[1].text  # the second choice draws from its own stream


def test_token_id_prompts_give_the_text_prompts_completion(gpthf_server, local):
    """OpenAI's prompt as token ids (one list, or a list of lists): the ids `encode_prompt` makes of a
    text give that text's completion; a sentence longer than training's is refused by name."""
    client = gpthf_server.client()
    model = client.models.list().data[0].id
    ids = local.encode(PROMPT)
    settings = {"model": model, "max_tokens": 8, "temperature": 0}
    text = client.completions.create(prompt=PROMPT, **settings)
    by_ids = client.completions.create(prompt=ids, **settings)
    assert by_ids.choices[0].text == text.choices[0].text and by_ids.usage.prompt_tokens == len(ids)
    two = client.completions.create(prompt=[ids, ids[:5]], **settings)
    assert two.choices[0].text == text.choices[0].text and len(two.choices) == 2
    headers = {"Authorization": f"Bearer {KEY}"}
    long_sentence = {"prompt": [5] * local.max_sentence_len, "max_tokens": 1}
    response = httpx.post(gpthf_server.url("/v1/completions"), json=long_sentence, headers=headers)
    assert response.status_code == 400 and "<eos>" in response.json()["error"]["message"]


def test_ignore_eos_generates_exactly_max_tokens(gpthf_server):
    """serve_bench's fixed work per request: `ignore_eos` (vLLM's extra) goes on past <eod>."""
    client = gpthf_server.client()
    model = client.models.list().data[0].id
    wanted = 20  # within the tiny model's context (30 new tokens here)
    done = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=wanted, temperature=0, extra_body={"ignore_eos": True}
    )
    assert done.usage.completion_tokens == wanted and done.choices[0].finish_reason == "length"


def test_stop_string_cuts_the_text_and_frees_the_request(gpthf_server, local):
    _, full = local.generate(PROMPT, max_tokens=40, temperature=1.0, seed=5)
    stop = full[12:15]
    client = gpthf_server.client()
    model = client.models.list().data[0].id
    before = gpthf_server.metrics().get('gpthf_requests_finished_total{reason="stop_string"}', 0)
    cut = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=40, temperature=1.0, seed=5, stop=[stop]
    )
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=40, temperature=1.0, seed=5, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    after = gpthf_server.wait_idle(within=5)
    assert after['gpthf_requests_finished_total{reason="stop_string"}'] == before + 2  # aborted in the engine


def test_models_health_and_metrics(gpthf_server, trained_runs):
    models = httpx.get(gpthf_server.url("/v1/models"), headers={"Authorization": f"Bearer {KEY}"}).json()
    client = gpthf_server.client()  # a request of several tokens: the histograms hold a TPOT, run alone too
    client.completions.create(
        model=models["data"][0]["id"],
        prompt=PROMPT,
        max_tokens=4,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    recorded = yaml.safe_load((trained_runs["gpthf"] / "config.yaml").read_text())["name"]
    assert models["data"][0]["id"] == recorded, "the run's name, as the README's client examples use it"
    assert models["data"][0]["arch"] == "gpthf"
    assert httpx.get(gpthf_server.url("/health")).json() == {"status": "ok"}
    response = httpx.get(gpthf_server.url("/metrics"))
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for name in ("requests_running", "requests_waiting", "state_in_use_bytes", "state_free_bytes"):
        assert f"# TYPE gpthf_{name} gauge" in text
    for name in ("prompt_tokens_total", "generation_tokens_total"):
        assert f"# TYPE gpthf_{name} counter" in text
    metrics = gpthf_server.metrics()
    assert metrics["gpthf_generation_tokens_total"] >= 1 and metrics["gpthf_engine_up"] == 1
    for histogram in ("time_to_first_token_seconds", "time_per_output_token_seconds"):
        assert f"# TYPE gpthf_{histogram} histogram" in text
        buckets = [v for k, v in metrics.items() if k.startswith(f"gpthf_{histogram}_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == metrics[f"gpthf_{histogram}_count"] > 0
        assert metrics[f"gpthf_{histogram}_sum"] > 0


# Trouble, through httpx ---------------------------------------------------------------------------


BAD_BODIES = [
    (b'{"prompt": "x",', "invalid_json", None),
    (b'["x"]', "invalid_json", None),
    (b'{"prompt": "x", "temperature": NaN}', "invalid_json", None),
    (b'{"prompt": "x", "temperature": 1e999}', None, "temperature"),
    (b'{"prompt": "x", "temperature": -1}', None, "temperature"),
    (b'{"prompt": "x", "max_tokens": 0}', None, "max_tokens"),
    (b'{"prompt": "x", "max_tokens": -5}', None, "max_tokens"),
    (b'{"prompt": "x", "max_tokens": "16"}', None, "max_tokens"),
    (b'{"prompt": "x", "max_tokens": 2.5}', None, "max_tokens"),
    (b'{"prompt": "x", "top_p": 0}', None, "top_p"),
    (b'{"prompt": "x", "top_k": -2}', None, "top_k"),  # -1 and 0: vLLM's "no top-k", taken
    (b'{"prompt": "x", "seed": -3}', None, "seed"),
    (b'{"prompt": "x", "n": 0}', None, "n"),
    (b'{"prompt": "x", "stream": "yes"}', None, "stream"),
    (b'{"prompt": "x", "stop": 5}', None, "stop"),
    (b'{"prompt": 12}', None, "prompt"),
    (b'{"prompt": []}', None, "prompt"),
    (b'{"prompt": "   "}', None, "prompt"),
    (b'{"prompt": "x", "model": "gpt-4"}', "model_not_found", "model"),
    (b'{"prompt": "x", "echo": true}', None, "echo"),
    (b'{"prompt": [5, 999999]}', None, "prompt"),  # token ids: one outside the vocabulary
    (b'{"prompt": [[5, 6], [-1]]}', None, "prompt"),
    (b'{"prompt": [5, 0, 6]}', None, "prompt"),  # <pad> is never an input
    (b'{"prompt": [true, false]}', None, "prompt"),  # JSON booleans are not ids
    (b'{"prompt": [5, "x"]}', None, "prompt"),
    (
        b'{"prompt": "x", "n": 6}',
        None,
        "n",
    ),  # more than this server holds (1 running, 4 queued): never admitted
    (b'{"prompt": ["x", "y", "z"], "n": 2}', None, "n"),
]


def test_bad_requests_get_400_in_openai_error_shape(gpthf_server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, code, param in BAD_BODIES:
        response = httpx.post(gpthf_server.url("/v1/completions"), content=body, headers=headers, timeout=10)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert (error["code"], error["param"]) == (code, param) if code else error["param"] == param, (
            body,
            error,
        )
    bad_chat = {"messages": [{"role": "wizard", "content": "hi"}]}
    response = httpx.post(gpthf_server.url("/v1/chat/completions"), json=bad_chat, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].role"


def test_api_key_body_size_and_unknown_routes(gpthf_server):
    url, body = gpthf_server.url("/v1/completions"), {"prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(url, json=body, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(gpthf_server.url("/v1/models")).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    huge = json.dumps({"prompt": "x" * (2**20 + 10)}).encode()
    response = httpx.post(url, content=huge, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert httpx.get(gpthf_server.url("/v2/nothing")).json()["error"]["message"] == "Not Found"


def test_prompt_over_the_context_names_the_limit_in_sentences(gpthf_server):
    seven = " ".join(f"Sentence number {i} is here." for i in range(7))  # the tiny GPTHF takes 6
    response = httpx.post(
        gpthf_server.url("/v1/completions"),
        json={"prompt": seven},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "7 sentences" in error["message"] and "at most 6" in error["message"]
    assert (error["param"], error["code"]) == ("prompt", "context_length_exceeded")


def test_prompt_over_the_context_names_the_limit_in_tokens(gpt_server):
    long = "The fox ran into the wood and the hound followed it " * 6  # over the tiny GPT's 64 tokens
    response = httpx.post(gpt_server.url("/v1/completions"), json={"prompt": long})
    assert response.status_code == 400
    assert re.search(
        r"has \d+ tokens; this gpt model was trained on 64-token rows", response.json()["error"]["message"]
    )


def test_client_gone_mid_stream_aborts_its_request(gpthf_server):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stream": True}  # 30 steps: 3 s at 0.1 s
    before = gpthf_server.metrics().get('gpthf_requests_finished_total{reason="client_gone"}', 0)
    with gpthf_server.slow(0.1):
        with httpx.stream(
            "POST", gpthf_server.url("/v1/completions"), json=body, headers=headers
        ) as response:
            assert next(response.iter_lines()).startswith("data: {")
        gone = time.monotonic()
        metrics = gpthf_server.wait_idle(within=1.5)
    assert metrics['gpthf_requests_finished_total{reason="client_gone"}'] == before + 1
    assert time.monotonic() - gone < 1.5


def test_client_gone_mid_plain_request_aborts_it(gpthf_server):
    body = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0}
    before = gpthf_server.metrics().get('gpthf_requests_finished_total{reason="client_gone"}', 0)
    with gpthf_server.slow(0.1):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                gpthf_server.url("/v1/completions"),
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=0.6,
            )
        metrics = gpthf_server.wait_idle(within=1.5)
    assert metrics['gpthf_requests_finished_total{reason="client_gone"}'] == before + 1


def test_queue_full_is_503_with_retry_after_and_admitted_requests_finish(gpthf_server):
    """One slot (--max-batch 1), four places in the queue (--max-queue 4)."""
    url, headers = gpthf_server.url("/v1/completions"), {"Authorization": f"Bearer {KEY}"}
    queued: dict[str, httpx.Response] = {}
    with gpthf_server.slow(0.05):
        running = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stream": True}
        with httpx.stream("POST", url, json=running, headers=headers) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: {")  # it holds the slot
            four = {"prompt": ["One.", "Two.", "Three.", "Four."], "max_tokens": 2, "temperature": 0}
            waiter = threading.Thread(
                target=lambda: queued.update(r=httpx.post(url, json=four, headers=headers, timeout=60))
            )
            waiter.start()
            deadline = time.monotonic() + 10
            while gpthf_server.metrics()["gpthf_requests_waiting"] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            refused = httpx.post(url, json={"prompt": "Five.", "max_tokens": 2}, headers=headers)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "queue_full"
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the running request finished
        waiter.join(timeout=30)
    assert queued["r"].status_code == 200 and len(queued["r"].json()["choices"]) == 4


def test_engine_thread_dying_turns_health_503_and_requests_500(gpt_server):
    """Last of the module's gpt_server tests: the server is dead afterwards."""
    url = gpt_server.url("/v1/completions")
    result: dict[str, httpx.Response] = {}
    with gpt_server.slow(0.05):
        busy = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(url, json={"prompt": PROMPT, "max_tokens": 30}, timeout=20)
            )
        )
        busy.start()
        time.sleep(0.3)
        (gpt_server.control / "die").touch()
        busy.join(timeout=20)
    assert (
        result["r"].status_code == 500 and "injected engine failure" in result["r"].json()["error"]["message"]
    )
    health = httpx.get(gpt_server.url("/health"), timeout=5)
    assert health.status_code == 503 and "injected engine failure" in health.json()["error"]
    after = httpx.post(url, json={"prompt": PROMPT, "max_tokens": 2}, timeout=10)
    assert after.status_code == 500 and after.json()["error"]["code"] == "engine_failed"


# The process ---------------------------------------------------------------------------------------


def test_loading_is_503_then_sigterm_finishes_short_requests_cancels_long_ones_and_exits_0(
    trained_runs, tmp_path
):
    server = start_server(trained_runs["gpt"], tmp_path, "--grace", "1.5", warm_up_delay=1.0)
    try:
        url, lines = server.url("/v1/completions"), {"short": [], "long": []}
        health = httpx.get(server.url("/health"))  # the warm-up request is still in its slow step
        assert (health.status_code, health.json(), health.headers["Retry-After"]) == (
            503,
            {"status": "loading"},
            "1",
        )
        early = httpx.post(url, json={"prompt": PROMPT})
        assert early.status_code == 503 and early.json()["error"]["code"] == "loading"
        (server.control / "delay").unlink()
        wait_health(server, time.monotonic() + 10)

        def read(name: str, max_tokens: int) -> None:
            body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
            try:
                with httpx.stream("POST", url, json=body, timeout=30) as response:
                    for line in response.iter_lines():
                        lines[name].append(line)
            except httpx.TransportError:
                lines[name].append("cut")

        with server.slow(0.2):  # 3 tokens: 0.6 s, within the grace; 30 tokens: 6 s, past it
            readers = [threading.Thread(target=read, args=a) for a in (("short", 3), ("long", 30))]
            for reader in readers:
                reader.start()
            deadline = time.monotonic() + 10
            while not (lines["short"] and lines["long"]):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            stopped = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # no new connections
                httpx.get(server.url("/health"), timeout=2)
            assert server.proc.wait(timeout=15) == 0
            for reader in readers:
                reader.join(timeout=5)
        assert time.monotonic() - stopped < 1.5 + 5
        assert "data: [DONE]" in lines["short"]
        assert "data: [DONE]" not in lines["long"]
        assert "stopped" in server.proc.stdout.read()
    finally:
        stop_server(server)


def test_checkpoint_that_does_not_load_is_one_error_line_before_binding(trained_runs, tmp_path):
    broken = tmp_path / "broken"
    checkpoint = next(trained_runs["gpt"].glob("checkpoints/*"))
    broken.mkdir()
    for file in checkpoint.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not weights")
    with socket.socket() as taken:  # a server that bound first would fail on the port instead
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "gpthf", "serve", "--ckpt", str(broken), "--port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken" in lines[0], run.stderr
    assert run.stdout == ""
