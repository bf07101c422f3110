"""The serving benchmark's load sent straight to the engine in this process: what the server's
throughput is measured against, so the HTTP layer's cost is a ratio of two runs of one load.

The same checkpoint loads as `serve` loads it (gpthf.serving.loading), the engine runs in the same
thread with the same hand-off of events to an asyncio loop (gpthf.serving.bridge), each prompt is
encoded when its request arrives (as the server does, off the loop), and the same arrival times,
concurrency cap and timing as the HTTP client (gpthf.measure.serving) apply. What is left out is
exactly the HTTP side: uvicorn, Starlette, JSON, SSE and the client's parsing of them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpthf.measure.serving import RequestResult, send_on_schedule, sweep_rates
from gpthf.measure.serving_prompts import Prompt


def load_served(
    checkpoint: str | Path,
    *,
    max_batch: int | None,
    max_state_memory: int | None,
    max_queue: int | None,
    dtype: str | None,
):
    """The engine `python -m gpthf serve` would build with these options (None: its defaults)."""
    from gpthf.precision import DEFAULT_DTYPE
    from gpthf.serving.loading import load

    options = argparse.Namespace(
        ckpt=str(checkpoint), device="auto", compile=False, dtype=dtype or DEFAULT_DTYPE,
        max_batch=max_batch, max_state_memory=max_state_memory, max_queue=max_queue, model_name=None,
        no_pack=False,
    )  # fmt: skip
    return load(options)


async def _request(runner, served, text: str, settings, start: float) -> RequestResult:
    from gpthf.generation.prompts import encode_prompt
    from gpthf.serving.bridge import Channel
    from gpthf.serving.engine import Finished

    ids = await asyncio.to_thread(
        encode_prompt, text, served.tokenizer, served.splitter, served.max_sentence_len
    )
    channel = Channel(asyncio.get_running_loop())
    handle = runner.add(ids, settings, channel.callback(0))
    ttft = last = None
    itl, tokens = [], 0
    try:
        while True:
            events = await channel.get()
            now = time.perf_counter()
            new = sum(not isinstance(event, Finished) for _, event in events)
            if new:  # one wake-up of the loop is one "chunk", as one SSE event is to the HTTP client
                if ttft is None:
                    ttft = now - start
                else:
                    itl.append(now - last)
                last, tokens = now, tokens + new
            finished = [event for _, event in events if isinstance(event, Finished)]
            if finished:
                break
    except asyncio.CancelledError:
        runner.abort(handle, "client_gone")
        raise
    if finished[0].reason in ("abort", "error") or ttft is None:
        return RequestResult(False, error=f"finished {finished[0].reason}: {finished[0].error or ''}"[:200])
    return RequestResult(
        True,
        prompt_tokens=len(ids),
        output_tokens=tokens,
        ttft_s=ttft,
        e2el_s=time.perf_counter() - start,
        itl_s=itl,
    )


async def run_engine_load(
    runner,
    served,
    prompts: list[Prompt],
    settings,
    *,
    rate: float,
    max_concurrency: int | None,
    seed: int,
    request_timeout_s: float,
    deadline: float,
) -> tuple[list[RequestResult], float, int]:
    """`gpthf.measure.serving.send_on_schedule` straight to the engine: what run_load reports of a server."""

    async def send(i: int) -> RequestResult:
        try:
            return await asyncio.wait_for(
                _request(runner, served, prompts[i].text, settings, time.perf_counter()), request_timeout_s
            )
        except asyncio.TimeoutError:
            return RequestResult(False, error=f"no complete answer within {request_timeout_s:g} s")

    return await send_on_schedule(
        len(prompts), send, rate=rate, max_concurrency=max_concurrency, seed=seed, deadline=deadline
    )


def run_engine_sweep(
    served,
    prompts: list[Prompt],
    *,
    output_tokens: int,
    rates: list[float],
    max_concurrency: int | None,
    seed: int,
    request_timeout_s: float,
    deadline: float,
    report: Callable[[dict], None] = lambda row: None,
) -> list[dict[str, Any]]:
    """One `summarize` row per rate, as gpthf.measure.serving.run_sweep gives for a server: the
    engine's thread started once, warmed up with one request, and stopped at the end."""
    from gpthf.serving.bridge import EngineThread
    from gpthf.serving.engine import RequestSettings
    from gpthf.serving.metrics import ServerMetrics

    settings = RequestSettings(max_tokens=output_tokens, temperature=0.0, ignore_eos=True)
    runner = EngineThread(served.engine, ServerMetrics(), pack=served.pack)
    runner.start()
    try:
        warm = RequestSettings(max_tokens=1, temperature=0.0)
        asyncio.run(_request(runner, served, prompts[0].text, warm, time.perf_counter()))

        def load(rate: float) -> tuple[list[RequestResult], float, int]:
            return asyncio.run(
                run_engine_load(
                    runner, served, prompts, settings, rate=rate, max_concurrency=max_concurrency,
                    seed=seed, request_timeout_s=request_timeout_s, deadline=deadline,
                )
            )  # fmt: skip

        return sweep_rates(rates, deadline, load, max_concurrency, report)
    finally:
        runner.shutdown(timeout=5.0)
