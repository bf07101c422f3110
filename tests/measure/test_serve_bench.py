"""`eval/serve_bench.py` and gpthf.measure.serving: vLLM's metric math on fabricated timings, the
seeded Poisson schedule, and the load runner against a small fake OpenAI-compatible streaming server
started here on 127.0.0.1 (which fails the prompts that contain FAIL with a 500)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from gpthf.cli import run_cli
from gpthf.errors import DataError
from gpthf.measure.serving import (
    LATENCIES,
    RequestResult,
    ServerError,
    base_url,
    completion_body,
    completions_url,
    percentile,
    poisson_arrivals,
    ratios,
    run_load,
    summarize,
)
from gpthf.measure.serving_process import free_port, running_server, server_command
from gpthf.measure.serving_prompts import cut_prompts, file_prompts
from tests.conftest import REPO, run_script


class FakeServer(ThreadingHTTPServer):
    """Streams `max_tokens` chunks of one word, `first_s` before the first and `gap_s` between the
    others; answers 500 in OpenAI's error shape to a prompt containing FAIL. Counts requests in flight."""

    daemon_threads = True
    request_queue_size = 128  # every request of an `inf` burst connects at once

    def __init__(self, first_s: float = 0.02, gap_s: float = 0.01):
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.first_s, self.gap_s = first_s, gap_s
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.peak_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self._json(200 if self.path == "/health" else 404, {})

    def do_POST(self) -> None:
        server: FakeServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.bodies.append(body)
            server.in_flight += 1
            server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
        try:
            if "FAIL" in body["prompt"]:
                self._json(500, {"error": {"message": "fake failure", "type": "server_error"}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i in range(body["max_tokens"]):
                time.sleep(server.first_s if i == 0 else server.gap_s)
                chunk = {"choices": [{"index": 0, "text": " word", "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": len(body["prompt"].split()),
                    "completion_tokens": body["max_tokens"],
                }
                self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture
def fake_server():
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def load(server: FakeServer, prompts: list[str], output_tokens: int = 5, usage: bool = True, **kwargs):
    bodies = [completion_body("fake-model", p, output_tokens) for p in prompts]
    if not usage:
        for body in bodies:
            del body["stream_options"]
    settings = {"rate": float("inf"), "max_concurrency": None, "seed": 0, "request_timeout_s": 10.0}
    settings.update(kwargs)
    settings.setdefault("deadline", time.monotonic() + 20)
    url = completions_url(server.url)
    return asyncio.run(run_load(url, bodies, [len(p.split()) for p in prompts], **settings))


# --- metric math --------------------------------------------------------------------------------


def test_percentile_interpolates_as_numpy_does():
    values = list(np.random.default_rng(0).exponential(size=37))
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([3.0], 99) == 3.0


def test_summary_times_completed_requests_and_only_counts_failed_ones():
    results = [
        RequestResult(True, prompt_tokens=10, output_tokens=5, ttft_s=0.1, e2el_s=0.5, itl_s=[0.1] * 4),
        RequestResult(True, prompt_tokens=20, output_tokens=3, ttft_s=0.3, e2el_s=0.7, itl_s=[0.2, 0.2]),
        RequestResult(True, prompt_tokens=30, output_tokens=1, ttft_s=0.2, e2el_s=0.2),  # no TPOT
        RequestResult(False, ttft_s=50.0, e2el_s=99.0, error="HTTP 500: boom"),  # never timed
        RequestResult(False, error="HTTP 500: boom"),
    ]
    report = summarize(results, duration_s=2.0)
    assert report["completed"] == 3 and report["failed"] == 2 and report["errors"] == {"HTTP 500: boom": 2}
    assert report["total_input_tokens"] == 60 and report["total_output_tokens"] == 9
    assert report["request_throughput"] == pytest.approx(1.5)
    assert report["output_throughput"] == pytest.approx(4.5)
    assert report["total_token_throughput"] == pytest.approx(34.5)
    assert report["mean_ttft_ms"] == pytest.approx(200) and report["median_ttft_ms"] == pytest.approx(200)
    assert report["p99_ttft_ms"] == pytest.approx(np.percentile([100, 300, 200], 99))
    # TPOT = (E2EL - TTFT) / (tokens - 1): 100 ms and 200 ms; the one-token request has none
    assert report["mean_tpot_ms"] == pytest.approx(150) and report["median_tpot_ms"] == pytest.approx(150)
    assert report["mean_itl_ms"] == pytest.approx(statistics.fmean([100] * 4 + [200] * 2))
    assert report["p99_e2el_ms"] == pytest.approx(np.percentile([500, 700, 200], 99))
    for name in LATENCIES:  # vLLM's field names, all of them
        assert {f"{s}_{name}_ms" for s in ("mean", "median", "p99")} <= set(report)


def test_one_token_requests_have_no_tpot_and_failures_alone_no_latency():
    one_token = summarize([RequestResult(True, output_tokens=1, ttft_s=0.1, e2el_s=0.1)], 1.0)
    assert one_token["mean_tpot_ms"] is None and one_token["p99_tpot_ms"] is None
    assert one_token["mean_itl_ms"] is None and one_token["mean_ttft_ms"] == pytest.approx(100)
    failed = summarize([RequestResult(False, error="x")] * 3, 1.0)
    assert failed["completed"] == 0 and failed["failed"] == 3 and failed["output_throughput"] == 0
    assert all(failed[f"mean_{name}_ms"] is None for name in LATENCIES)


def test_ratios_pair_rates_and_leave_missing_figures_out():
    a = [{"request_rate": 1.0, "output_throughput": 40.0, "median_tpot_ms": 5.0},
         {"request_rate": "inf", "output_throughput": 90.0, "median_tpot_ms": None}]  # fmt: skip
    b = [{"request_rate": "inf", "output_throughput": 30.0, "median_tpot_ms": 8.0}]
    assert ratios(a, b) == [{"request_rate": "inf", "output_throughput": 3.0, "median_tpot_ms": None}]


# --- schedule -----------------------------------------------------------------------------------


def test_poisson_schedule_is_seeded_with_mean_gap_one_over_rate():
    first = poisson_arrivals(20_000, rate=4.0, seed=3)
    assert first == poisson_arrivals(20_000, rate=4.0, seed=3)
    assert first != poisson_arrivals(20_000, rate=4.0, seed=4)
    gaps = np.diff(first)
    assert first[0] == 0 and (gaps > 0).all()
    assert gaps.mean() == pytest.approx(1 / 4.0, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 4.0, rel=0.05)  # exponential: std = mean
    assert poisson_arrivals(5, rate=float("inf"), seed=0) == [0.0] * 5
    with pytest.raises(ValueError):
        poisson_arrivals(5, rate=0.0, seed=0)


# --- the runner against a fake server -----------------------------------------------------------


def test_runner_counts_completed_and_failed_and_times_chunks(fake_server):
    prompts = [f"prompt {i}" for i in range(8)] + ["FAIL one", "FAIL two"]
    results, duration, not_sent = load(fake_server, prompts, output_tokens=5)
    report = summarize(results, duration)
    assert report["completed"] == 8 and report["failed"] == 2 and not_sent == 0
    assert report["errors"] == {"HTTP 500: fake failure": 2}
    assert report["total_output_tokens"] == 40 and report["total_input_tokens"] == 16  # the server's usage
    ok = [r for r in results if r.ok]
    assert all(len(r.itl_s) == 4 for r in ok)  # five text chunks: four gaps
    assert 0.015 <= report["median_ttft_ms"] / 1000 < 2.0
    assert 0.008 <= report["median_itl_ms"] / 1000 < 1.0
    assert all(r.e2el_s >= r.ttft_s + sum(r.itl_s) - 1e-6 for r in ok)
    assert all(b["ignore_eos"] is True and b["stream"] is True for b in fake_server.bodies)


def test_runner_counts_chunks_when_the_server_sends_no_usage(fake_server):
    results, _, _ = load(fake_server, ["a b c", "d e"], output_tokens=3, usage=False)
    assert [(r.ok, r.output_tokens, r.prompt_tokens) for r in results] == [(True, 3, 3), (True, 3, 2)]


def test_max_concurrency_caps_requests_in_flight(fake_server):
    results, _, _ = load(fake_server, [f"p {i}" for i in range(6)], output_tokens=3, max_concurrency=2)
    assert all(r.ok for r in results) and fake_server.peak_in_flight == 2


def test_deadline_and_request_timeout_bound_a_slow_server(fake_server):
    fake_server.gap_s = 0.2  # 40 tokens: 8 s a request
    began = time.monotonic()
    results, _, not_sent = load(
        fake_server, ["a"] * 4, output_tokens=40, rate=2.0, deadline=time.monotonic() + 0.8
    )
    assert time.monotonic() - began < 3 and not_sent >= 1 and results
    assert all(not r.ok and r.error == "cut off by --max-seconds" for r in results)
    results, _, _ = load(fake_server, ["a"], output_tokens=40, request_timeout_s=0.3)
    assert not results[0].ok and "within 0.3 s" in results[0].error


# --- prompts, server command, CLI ---------------------------------------------------------------


def test_held_out_windows_are_seeded_and_about_the_asked_length():
    from gpthf.data.tokenizer import train_tokenizer

    text = " ".join(f"Sentence number {i} tells of the {i % 7}th hill." for i in range(300))
    words = cut_prompts(text, 20, 12, seed=1)
    assert words == cut_prompts(text, 20, 12, seed=1) and len({p.text for p in words}) == 20
    assert all(len(p.text.split()) == 12 for p in words)
    tokenizer = train_tokenizer(text.split(". "), vocab_size=300)
    tokens = cut_prompts(text, 10, 25, seed=2, tokenizer=tokenizer)
    assert all(abs(len(tokenizer.encode(p.text).ids) - 25) <= 2 and p.tokens == 25 for p in tokens)
    with pytest.raises(DataError, match="fewer than --prompt-tokens"):
        cut_prompts("too short", 1, 12, seed=0)


def test_prompts_file_is_cycled_to_the_asked_number(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("one two\n\nthree\n")
    assert [(p.text, p.tokens) for p in file_prompts(path, 3)] == [
        ("one two", 2),
        ("three", 1),
        ("one two", 2),
    ]


def test_base_url_takes_either_habit_and_refuses_non_urls():
    assert (
        base_url("http://127.0.0.1:8000/v1/") == base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    )
    for bad in ("127.0.0.1:8000", "ftp://host", "http://host:port", "http://:80"):
        with pytest.raises(argparse.ArgumentTypeError):
            base_url(bad)


def test_server_command_starts_our_server_locally_with_the_given_limits():
    command = server_command("runs/gpthf", 8123, max_batch=8, max_state_memory=2**30, dtype="bf16")
    assert command[:4] == [sys.executable, "-m", "gpthf", "serve"]
    flags = dict(zip(command[4::2], command[5::2]))
    assert flags == {"--ckpt": "runs/gpthf", "--host": "127.0.0.1", "--port": "8123", "--max-batch": "8",
                     "--max-state-memory": str(2**30), "--dtype": "bf16"}  # fmt: skip
    assert "--max-queue" not in server_command("x", 1)


def test_running_server_waits_for_health_and_always_stops_it(tmp_path):
    (tmp_path / "health").write_text("ok")  # http.server answers GET /health with this file
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(tmp_path),
    ]
    with pytest.raises(RuntimeError, match="mid-benchmark"):
        with running_server(command, port, tmp_path / "log.txt", startup_timeout_s=20) as url:
            assert httpx.get(f"{url}/health").status_code == 200
            raise RuntimeError("mid-benchmark")
    with pytest.raises(httpx.ConnectError):  # stopped: nothing listens there any more
        httpx.get(f"{url}/health", timeout=1)
    dying = [sys.executable, "-c", "import sys; print('error: no such checkpoint'); sys.exit(2)"]
    with pytest.raises(ServerError, match=r"exited \(2\).*error: no such checkpoint"):
        with running_server(dying, free_port(), tmp_path / "log2.txt", startup_timeout_s=20):
            pass


def _serve_bench_main():
    spec = importlib.util.spec_from_file_location("serve_bench", REPO / "eval" / "serve_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    "argv",
    [
        ["--base-url", "localhost:8000"],
        ["--base-url", "http://127.0.0.1:9", "--request-rates", "2", "0"],
        ["--base-url", "http://127.0.0.1:9", "--request-rates", "-1"],
        ["--base-url", "http://127.0.0.1:9", "--num-prompts", "0"],
        ["--base-url", "http://127.0.0.1:9", "--max-batch", "4"],
        ["--base-url", "http://127.0.0.1:9", "--in-process"],  # a server elsewhere has no engine here
        ["--base-url", "http://127.0.0.1:9", "--ckpt", "runs/x"],
        ["--ckpt", "runs/x", "--model", "m"],
        [],
    ],
)
def test_cli_refuses_bad_arguments_with_one_error_line(argv, tmp_path, capsys):
    assert run_cli(_serve_bench_main(), [*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: serve_bench.py: ")


def test_cli_refuses_an_empty_prompts_file_and_an_absent_server(tmp_path, capsys):
    main = _serve_bench_main()
    (tmp_path / "empty.txt").write_text("\n \n")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    argv = ["--base-url", url, "--prompts-file", str(tmp_path / "empty.txt"), "--out", str(tmp_path)]
    assert run_cli(main, argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: --prompts-file {tmp_path / 'empty.txt'} holds no prompts; write one per line"
    )
    (tmp_path / "prompts.txt").write_text("hello\n")
    assert (
        run_cli(main, [*argv[:2], "--prompts-file", str(tmp_path / "prompts.txt"), "--out", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot list models at {url}/v1/models")


def test_cli_sweeps_rates_against_a_server_and_writes_json_and_plot(fake_server, tmp_path):
    run = run_script(
        "eval/serve_bench.py", "--base-url", fake_server.url + "/v1", "--num-prompts", "6", "--prompt-tokens", "20",
        "--output-tokens", "4", "--request-rates", "50", "inf", "--max-seconds", "60", "--out", str(tmp_path),
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.strip().splitlines()]
    assert [row["request_rate"] for row in lines[:2]] == [50.0, "inf"] and len(lines) == 3
    assert all(
        row["completed"] == 6 and row["failed"] == 0 and row["total_output_tokens"] == 24 for row in lines[:2]
    )
    assert lines[2]["summary"][fake_server.url]["completed"] == 12
    # held-out windows of the default corpus, 20 words each (no tokenizer given); plus the first request
    assert len(fake_server.bodies) == 13 and all(len(b["prompt"].split()) == 20 for b in fake_server.bodies)
    saved = json.loads((tmp_path / "serve_bench.json").read_text())
    assert (
        saved["targets"][0]["model"] == "fake-model"
        and [{"target": fake_server.url, **row} for row in saved["targets"][0]["rates"]] == lines[:2]
    )
    assert (tmp_path / "serve_bench.png").stat().st_size > 5_000


def test_bench_starts_our_server_for_each_checkpoint_and_compares_them(trained_runs, tmp_path):
    """`--ckpt GPTHF GPT --in-process`: our server started on 127.0.0.1 for each, the same fixed
    work sent to both (ignore_eos), every request completed, the servers stopped afterwards, the
    ratios printed; then the same load straight to each engine, and HTTP ÷ in process reported."""
    run = run_script(
        "eval/serve_bench.py", "--ckpt", str(trained_runs["gpthf"]), str(trained_runs["gpt"]),
        "--num-prompts", "6", "--request-rates", "inf", "--prompt-tokens", "12", "--output-tokens", "6",
        "--max-state-memory", "64MiB", "--max-batch", "4", "--max-seconds", "240", "--out", str(tmp_path),
        "--in-process", timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "serve_bench.json").read_text())
    rows = [json.loads(line) for line in run.stdout.strip().splitlines() if line.startswith("{")]
    per_rate = [r for r in rows if "completed" in r]
    assert len(per_rate) == 4 and all(r["completed"] == 6 and r["failed"] == 0 for r in per_rate), per_rate
    assert all(r["output_throughput"] > 0 and r["median_tpot_ms"] > 0 for r in per_rate)
    assert all(r["total_output_tokens"] == 36 for r in per_rate)  # the same work both ways
    assert (
        "gpthf ÷ gpt at rate inf" in run.stderr and "gpthf over HTTP ÷ in process at rate inf" in run.stderr
    )
    for target in results["targets"]:
        (cost,) = target["in_process"]["http_over_in_process"]
        assert 0 < cost["output_throughput"] < 10  # a sane ratio; its size is measured, not tested
    assert all(len(line["http_over_in_process"]) == 1 for line in rows[-1]["summary"].values())
    assert (tmp_path / "serve_bench.png").stat().st_size > 5_000
