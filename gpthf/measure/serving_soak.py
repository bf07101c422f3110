"""A soak of a running server: many requests, a share of whose clients vanish mid-answer, a burst far
past what the server can hold, and then the checks that nothing leaked: nothing left running or
waiting, no generation state still held, the server healthy, and its memory flat over the run.

Clients vanish two ways, as real ones do: a stream closed after its first chunk, and a plain
request whose connection is dropped while the server is still generating its answer. Every loop is
bounded in count and in time; the burst's refusals (503) are the expected answer, not failures.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DISCONNECT_KINDS = ("stream", "plain")
PLAIN_DISCONNECT_AFTER_S = 0.05  # long enough for the request to be admitted, shorter than its answer
IDLE_WITHIN_S = 30.0  # after the last answer, the engine must be empty within this
RSS_TOLERANCE = 0.05  # relative growth of resident memory allowed from the first sample to the last
RSS_EVERY = 50  # requests between samples of the server's memory (the plot's points)


@dataclass(frozen=True)
class SoakPlan:
    requests: int = 1000
    disconnect_share: float = 0.2
    burst: int = 0  # extra requests sent at once halfway through (10× what the server holds)
    concurrency: int = 8  # clients sending the main requests, one request at a time each
    max_tokens: int = 16  # each request asks for 1 to this many tokens
    rss_from: int = 200  # memory is sampled once this many requests are done, and at the end
    seed: int = 0
    request_timeout_s: float = 60.0


def _body(model: str, prompt: str, rng: random.Random, plan: SoakPlan, disconnect: str | None) -> dict:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": rng.randint(1, plan.max_tokens),
        "temperature": rng.choice([0.0, 1.0]),
        "seed": rng.randrange(2**31),
    }
    if disconnect is not None:  # long enough that the client leaves before the answer is done
        body.update(max_tokens=4 * plan.max_tokens, ignore_eos=True)
    body["stream"] = disconnect == "stream" or (disconnect is None and rng.random() < 0.5)
    return body


async def _send(client, url: str, body: dict, disconnect: str | None) -> str:
    """The request's outcome: ok, disconnected, refused (503), or what else went wrong."""
    import httpx

    try:
        if disconnect == "plain":
            try:
                await asyncio.wait_for(client.post(url, json=body), PLAIN_DISCONNECT_AFTER_S)
            except asyncio.TimeoutError:
                return "disconnected"
            return "ok"  # answered before the client left: a finished request, as good
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                return "refused" if response.status_code == 503 else f"status {response.status_code}"
            if not body["stream"]:
                answer = json.loads(await response.aread())
                return "ok" if answer.get("choices") else f"an answer without choices: {answer}"[:200]
            async for line in response.aiter_lines():
                if line.startswith("data:") and disconnect == "stream":
                    return "disconnected"  # leaving the block closes the connection mid-stream
                if line.strip() == "data: [DONE]":
                    return "ok"
        return "stream ended without [DONE]"
    except httpx.HTTPError as err:
        return type(err).__name__


async def _burst(client, url: str, model: str, prompt: str, count: int) -> Counter:
    async def one() -> str:
        response = await client.post(url, json={"model": model, "prompt": prompt, "max_tokens": 2})
        return {200: "ok", 503: "refused"}.get(response.status_code, f"status {response.status_code}")

    import httpx

    outcomes: Counter = Counter()
    for result in await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True):
        outcomes[type(result).__name__ if isinstance(result, httpx.HTTPError) else str(result)] += 1
    return outcomes


async def run_soak(
    base: str, model: str, prompts: list[str], plan: SoakPlan, rss: Callable[[], int | None], deadline: float
) -> dict[str, Any]:
    """The main requests through `plan.concurrency` clients, the burst halfway, memory sampled by
    `rss`; stops sending at `deadline` (time.monotonic())."""
    import httpx

    rng = random.Random(plan.seed)
    leaving = [rng.random() < plan.disconnect_share for _ in range(plan.requests)]
    disconnects = [rng.choice(DISCONNECT_KINDS) if leave else None for leave in leaving]
    bodies = [
        _body(model, prompts[i % len(prompts)], rng, plan, disconnects[i]) for i in range(plan.requests)
    ]
    url = f"{base}/v1/completions"
    outcomes: Counter = Counter()
    burst: Counter = Counter()
    memory: dict[str, Any] = {"trace": []}  # trace: (requests done, bytes)
    state = {"next": 0, "done": 0}
    limits = httpx.Limits(max_connections=plan.concurrency + plan.burst + 1)
    async with httpx.AsyncClient(timeout=plan.request_timeout_s, limits=limits) as client:

        async def client_loop() -> None:
            while state["next"] < plan.requests and time.monotonic() < deadline:
                i = state["next"]
                state["next"] += 1
                if i == plan.requests // 2 and plan.burst:
                    burst.update(await _burst(client, url, model, prompts[0], plan.burst))
                outcomes[await _send(client, url, bodies[i], disconnects[i])] += 1
                state["done"] += 1
                if state["done"] == plan.rss_from:
                    memory["at_rss_from"] = rss()
                if state["done"] % RSS_EVERY == 0:
                    memory["trace"].append((state["done"], rss()))

        await asyncio.gather(*(client_loop() for _ in range(plan.concurrency)))
        after = await _idle_metrics(client, base, IDLE_WITHIN_S)
        health = (await client.get(f"{base}/health")).status_code
    memory["at_end"] = rss()
    return {
        "sent": state["done"],
        "disconnects": sum(d is not None for d in disconnects[: state["done"]]),
        "outcomes": dict(outcomes),
        "burst_outcomes": dict(burst),
        "memory": memory,
        "after": {**after, "health": health},
    }


async def _idle_metrics(client, base: str, within_s: float) -> dict[str, float]:
    """The engine's gauges once nothing runs or waits (or as they stand after `within_s`)."""
    names = {
        "gpthf_requests_running": "running",
        "gpthf_requests_waiting": "waiting",
        "gpthf_state_in_use_bytes": "state_in_use_bytes",
    }
    give_up = time.monotonic() + within_s
    while True:
        text = (await client.get(f"{base}/metrics")).text
        found = {
            names[name]: float(value)
            for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
            if name in names
        }
        if (found.get("running"), found.get("waiting")) == (0, 0) or time.monotonic() > give_up:
            return found
        await asyncio.sleep(0.05)


def verdict(report: dict[str, Any], plan: SoakPlan) -> list[str]:
    """Why the soak failed; empty when it passed."""
    problems = []
    if report["sent"] != plan.requests:
        problems.append(f"only {report['sent']} of {plan.requests} requests were sent before the deadline")
    # A 503 while the burst fills the queue is the server's right answer to a main request too.
    unexpected = {k: v for k, v in report["outcomes"].items() if k not in ("ok", "disconnected", "refused")}
    if unexpected:
        problems.append(
            f"requests that neither finished, nor were refused, nor were left by their client: {unexpected}"
        )
    burst_other = {k: v for k, v in report["burst_outcomes"].items() if k not in ("ok", "refused")}
    if burst_other:
        problems.append(f"burst requests answered other than 200 or 503: {burst_other}")
    after = report["after"]
    for name in ("running", "waiting", "state_in_use_bytes"):
        if after.get(name) != 0:
            problems.append(f"{name} is {after.get(name)} after the soak, not 0")
    if after["health"] != 200:
        problems.append(f"/health answers {after['health']} after the soak")
    start, end = report["memory"].get("at_rss_from"), report["memory"].get("at_end")
    if start and end and abs(end / start - 1) > RSS_TOLERANCE:
        problems.append(
            f"resident memory went from {start / 2**20:.1f} MiB (request {plan.rss_from}) to "
            f"{end / 2**20:.1f} MiB (the end): more than {RSS_TOLERANCE:.0%}"
        )
    return problems
