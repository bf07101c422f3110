"""Load on an OpenAI-compatible server, measured as `vllm bench serve` measures it.

Requests arrive as a Poisson process (exponential gaps at a given rate; `inf` sends them all at
once), optionally capped at a number in flight, each streaming a fixed number of tokens
(`ignore_eos`), so two servers are compared on the same work rather than on where their models
happen to stop. The client times every streamed chunk: TTFT (send to first text), ITL (the gaps
between text chunks), TPOT ((E2EL - TTFT) / (output tokens - 1)) and E2EL (send to the end of the
stream). A failed request is counted but never timed, so errors cannot flatter the latencies.
Every request has a deadline and every run an end: a stalled server costs a bounded wait.

The server under test can be any at a base URL: ours (gpthf.measure.serving_process starts it for a
checkpoint) or another serving an exported GPT. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gpthf.errors import GpthfError
from gpthf.measure.serving_prompts import Prompt

LATENCIES = ("ttft", "tpot", "itl", "e2el")  # vLLM's metric names, each reported in ms


class ServerError(GpthfError):
    """The server under test could not be reached, started or asked a first question."""


@dataclass
class RequestResult:
    """One request as the client saw it; `ok` False means counted as failed and never timed."""

    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2el_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""


def base_url(text: str) -> str:
    """`--base-url`: http(s)://host[:port][/path], taken with or without the trailing /v1 that OpenAI
    clients' base URLs carry (vLLM's do not); given back without it."""
    parts = urlsplit(text.strip())
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{text!r} is not a server URL such as http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path[:-3] if path.endswith("/v1") else path, "", ""))


def completions_url(base: str) -> str:
    return f"{base}/v1/completions"


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Send times in seconds from the start: the first at 0, then exponential gaps of mean 1/rate,
    the same for the same seed, so every server and every rerun meets the same schedule."""
    if not rate > 0:
        raise ValueError(f"a request rate must be > 0 (or inf), not {rate}")
    if math.isinf(rate):
        return [0.0] * n
    rng, now, times = random.Random(seed), 0.0, []
    for _ in range(n):
        times.append(now)
        now += rng.expovariate(rate)
    return times


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(results: list[RequestResult], duration_s: float) -> dict[str, Any]:
    """vLLM's report fields. TPOT needs two tokens, so a one-token request has none; a latency no
    completed request has is None rather than a 0 that would read as fast."""
    ok = [r for r in results if r.ok]
    input_tokens, output_tokens = sum(r.prompt_tokens for r in ok), sum(r.output_tokens for r in ok)
    per_s = (lambda count: count / duration_s) if duration_s > 0 else (lambda count: None)
    report: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration": duration_s,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(output_tokens),
        "total_token_throughput": per_s(input_tokens + output_tokens),
    }
    seconds = {
        "ttft": [r.ttft_s for r in ok],
        "tpot": [(r.e2el_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1],
        "itl": [gap for r in ok for gap in r.itl_s],
        "e2el": [r.e2el_s for r in ok],
    }
    for name in LATENCIES:
        ms = [1000 * s for s in seconds[name]]
        report[f"mean_{name}_ms"] = statistics.fmean(ms) if ms else None
        report[f"median_{name}_ms"] = statistics.median(ms) if ms else None
        report[f"std_{name}_ms"] = statistics.pstdev(ms) if ms else None
        report[f"p99_{name}_ms"] = percentile(ms, 99) if ms else None
    report["errors"] = dict(Counter(r.error for r in results if not r.ok).most_common(5))
    return report


def completion_body(model: str, prompt: str, output_tokens: int) -> dict[str, Any]:
    """A streamed greedy completion of exactly `output_tokens` tokens (`ignore_eos`: not stopping at
    the end of a document), with the usage chunk asked for, which counts tokens better than chunks."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def _error_text(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")
    return f"HTTP {status}: {' '.join(str(message).split())[:200]}"


def _chunk_text(choice: dict) -> str:
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def _stream(client, url: str, body: dict, prompt_tokens: int, start: float) -> RequestResult:
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            return RequestResult(False, error=_error_text(response.status_code, await response.aread()))
        ttft = last = first_choice = None
        itl, chunks, usage, done = [], 0, None, False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, SSE comments (keep-alives)
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            now = time.perf_counter()
            event = json.loads(data)
            if event.get("error"):
                return RequestResult(False, error=f"error in stream: {event['error']}"[:200])
            usage = event.get("usage") or usage
            if event.get("choices") and first_choice is None:
                first_choice = now - start
            if any(_chunk_text(c) for c in event.get("choices") or []):
                if ttft is None:
                    ttft = now - start
                else:
                    itl.append(now - last)
                last, chunks = now, chunks + 1
        end = time.perf_counter()
    if not done:
        return RequestResult(False, error="the stream ended without data: [DONE]")
    usage = usage or {}
    if ttft is None:
        # Tokens that print nothing (a model's special tokens: a GPTHF asked to go on past <eod> with
        # ignore_eos emits <eod> after <eod>) are still work done: with the server's usage saying so,
        # the request completed, its first token timed at its first chunk.
        if not usage.get("completion_tokens") or first_choice is None:
            return RequestResult(False, error="the stream carried no text")
        ttft = first_choice
    return RequestResult(
        True,
        prompt_tokens=usage.get("prompt_tokens", prompt_tokens),
        output_tokens=usage.get("completion_tokens", chunks),
        ttft_s=ttft,
        e2el_s=end - start,
        itl_s=itl,
    )


async def stream_completion(
    client, url: str, body: dict, prompt_tokens: int, timeout_s: float
) -> RequestResult:
    """One streamed request, timed from just before it is sent; every failure (status, broken
    stream, timeout) comes back as a failed result with its reason, never as an exception."""
    import httpx

    start = time.perf_counter()
    try:
        return await asyncio.wait_for(_stream(client, url, body, prompt_tokens, start), timeout_s)
    except asyncio.TimeoutError:
        return RequestResult(False, error=f"no complete answer within {timeout_s:g} s")
    except httpx.HTTPError as err:
        return RequestResult(False, error=f"{type(err).__name__}: {err}"[:200])
    except (ValueError, AttributeError) as err:  # a chunk that is not JSON, or not an object
        return RequestResult(False, error=f"malformed stream chunk ({err})"[:200])


async def send_on_schedule(
    count: int,
    send: Callable[[int], Awaitable[RequestResult]],
    *,
    rate: float,
    max_concurrency: int | None,
    seed: int,
    deadline: float,
) -> tuple[list[RequestResult], float, int]:
    """The benchmark's one arrival schedule: request i goes out through `send(i)` at its Poisson
    arrival time, at most `max_concurrency` in flight. (results of the requests sent, seconds from
    the first arrival to the last answer, requests never sent). At `deadline` (time.monotonic())
    requests in flight are cut off as failed and the rest are not sent; a `send` that raises is a
    failed request, never the end of the run."""
    arrivals = poisson_arrivals(count, rate, seed)
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    sent = [False] * count
    start = time.perf_counter()

    async def one(i: int) -> RequestResult:
        await asyncio.sleep(max(0.0, start + arrivals[i] - time.perf_counter()))
        async with gate:
            sent[i] = True
            return await send(i)

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    duration = time.perf_counter() - start
    results = [_outcome(task, task in late) for task, was_sent in zip(tasks, sent) if was_sent]
    return results, duration, sent.count(False)


async def run_load(
    url: str,
    bodies: list[dict],
    prompt_tokens: list[int],
    *,
    rate: float,
    max_concurrency: int | None,
    seed: int,
    request_timeout_s: float,
    deadline: float,
) -> tuple[list[RequestResult], float, int]:
    """`send_on_schedule` over a server: each request a streamed completion of `bodies[i]`."""
    import httpx

    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    async with httpx.AsyncClient(timeout=request_timeout_s, limits=limits) as client:
        return await send_on_schedule(
            len(bodies),
            lambda i: stream_completion(client, url, bodies[i], prompt_tokens[i], request_timeout_s),
            rate=rate, max_concurrency=max_concurrency, seed=seed, deadline=deadline,
        )  # fmt: skip


def _outcome(task: asyncio.Task, cut_off: bool) -> RequestResult:
    if cut_off:
        return RequestResult(False, error="cut off by --max-seconds")
    if task.exception() is not None:  # a client bug must not stop the sweep: it is counted as failed
        return RequestResult(False, error=f"{type(task.exception()).__name__}: {task.exception()}"[:200])
    return task.result()


def rate_label(rate: float) -> float | str:
    """A rate as JSON can hold it: `inf` is not a JSON number."""
    return "inf" if math.isinf(rate) else rate


def sweep_rates(
    rates: list[float],
    deadline: float,
    load: Callable[[float], tuple[list[RequestResult], float, int]],
    max_concurrency: int | None,
    report: Callable[[dict], None] = lambda row: None,
) -> list[dict]:
    """One `summarize` row per rate of `load(rate)` (results, duration, requests never sent), each
    told to `report` as it is done; rates not begun by `deadline` (time.monotonic()) are skipped.
    The one loop of a server's sweep and of the same load sent to an engine in process."""
    rows = []
    for rate in rates:
        if time.monotonic() >= deadline:
            break
        results, duration, not_sent = load(rate)
        row = {"request_rate": rate_label(rate), "max_concurrency": max_concurrency}
        rows.append({**row, **summarize(results, duration), "not_sent": not_sent})
        report(rows[-1])
    return rows


def run_sweep(
    url: str,
    prompts: list[Prompt],
    *,
    model: str,
    output_tokens: int,
    rates: list[float],
    max_concurrency: int | None,
    seed: int,
    request_timeout_s: float,
    deadline: float,
    report: Callable[[dict], None] = lambda row: None,
) -> list[dict]:
    """`sweep_rates` over a server: the same prompts and arrival schedule at every rate."""
    bodies = [completion_body(model, p.text, output_tokens) for p in prompts]

    def load(rate: float) -> tuple[list[RequestResult], float, int]:
        return asyncio.run(
            run_load(
                url, bodies, [p.tokens for p in prompts], rate=rate, max_concurrency=max_concurrency,
                seed=seed, request_timeout_s=request_timeout_s, deadline=deadline,
            )
        )  # fmt: skip

    return sweep_rates(rates, deadline, load, max_concurrency, report)


def ratios(numerator: list[dict], denominator: list[dict]) -> list[dict]:
    """numerator ÷ denominator at each rate both reached: output throughput (above 1: the
    numerator serves more) and median TPOT (below 1: its tokens come faster); None where a side has
    no figure."""
    other = {row["request_rate"]: row for row in denominator}
    rows = []
    for row in numerator:
        if row["request_rate"] in other:
            pair = (row, other[row["request_rate"]])
            rows.append(
                {"request_rate": row["request_rate"]}
                | {key: _ratio(*(r[key] for r in pair)) for key in ("output_throughput", "median_tpot_ms")}
            )
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


async def _single(url: str, body: dict, prompt_tokens: int, timeout_s: float) -> RequestResult:
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s) as client:
        return await stream_completion(client, url, body, prompt_tokens, timeout_s)


def first_request(url: str, body: dict, prompt_tokens: int, timeout_s: float) -> RequestResult:
    """One request before the timed ones: a wrong URL, model or request shape becomes one clear
    error instead of a sweep of failures, and a server's first-call costs (compilation, lazy
    allocation) stay out of the figures."""
    result = asyncio.run(_single(url, body, prompt_tokens, timeout_s))
    if not result.ok:
        raise ServerError(f"{url} failed a first request ({result.error})")
    return result


def served_model(base_url: str, timeout_s: float = 10.0) -> str:
    """The first model the server lists at /v1/models: the name its requests must carry."""
    import httpx

    try:
        response = httpx.get(f"{base_url}/v1/models", timeout=timeout_s)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except httpx.HTTPError as err:
        raise ServerError(
            f"cannot list models at {base_url}/v1/models ({err}); is the server up? or give --model"
        ) from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise ServerError(f"{base_url}/v1/models lists no model; give --model") from None
