"""The HTTP routes: OpenAI's /v1/completions, /v1/chat/completions and /v1/models, plus /health and /metrics.

A generation request is checked whole before the engine sees it (a bad body costs no decoding):
body size, JSON, types, the model's name, the prompts' tokens and every choice's settings; then
its choices are added to the engine at once, or none is. A client that goes away aborts its
engine requests: a stream is cancelled by Starlette when its connection drops, and a plain
request is watched for the disconnect message while it waits (Starlette does not cancel those).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpthf.errors import GpthfError
from gpthf.generation import encode_prompt
from gpthf.generation.prompts import check_token_prompt
from gpthf.serving.bridge import Channel, Choice, EngineThread
from gpthf.serving.engine import EngineStopped, Finished, PromptError, QueueFull, RequestSettings
from gpthf.serving.loading import WARM_UP_PROMPT, Served, warm_up_settings
from gpthf.serving.metrics import CONTENT_TYPE, ServerMetrics
from gpthf.serving.openai_api import (
    ApiError,
    GenerationRequest,
    chunk,
    models_response,
    new_id,
    param_of,
    parse_chat,
    parse_completion,
    parse_json,
    response,
    sse,
    usage_chunk,
)

log = logging.getLogger(__name__)

DRAIN_FACTOR = 8  # an oversized body is read (and dropped) up to this many limits, so the client hears 413
RETRY_AFTER = {"Retry-After": "1"}
SHUTDOWN_JOIN_S = 5.0


def build_app(served: Served, *, api_key: str | None, max_body: int, grace: float) -> Starlette:
    api = Api(served, api_key=api_key, max_body=max_body)
    routes = [
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
    ]
    handlers = {ApiError: api.api_error, HTTPException: api.http_error, Exception: api.crash}
    app = Starlette(routes=routes, lifespan=api.lifespan, exception_handlers=handlers)
    return app


class Api:
    """The routes, over one engine thread and the metrics they share."""

    def __init__(self, served: Served, *, api_key: str | None, max_body: int) -> None:
        self.served, self.api_key, self.max_body = served, api_key, max_body
        self.metrics = ServerMetrics()
        self.runner = EngineThread(served.engine, self.metrics, pack=served.pack)
        self.created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.runner.start()
        warm_up = asyncio.create_task(self.warm_up())
        try:
            yield
        finally:
            warm_up.cancel()
            await asyncio.to_thread(self.runner.shutdown, SHUTDOWN_JOIN_S)

    async def warm_up(self) -> None:
        """One greedy token through the engine (and its compilation, with --compile) before /health says 200."""
        try:
            prompt = await asyncio.to_thread(self.encode_text, WARM_UP_PROMPT)
            channel = Channel(asyncio.get_running_loop())
            self.runner.add(prompt, warm_up_settings(), channel.callback(0))
            while True:
                for _, event in await channel.get():
                    if isinstance(event, Finished):
                        if event.reason == "error":
                            self.runner.fail(f"the warm-up request failed: {event.error}")
                        else:
                            self.runner.ready = True
                            log.info("ready: the warm-up request came back (%s)", event.reason)
                        return
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the server stays up and says why in /health
            log.exception("the warm-up request failed")
            self.runner.fail(f"the warm-up request failed: {type(err).__name__}: {err}")

    # Routes --------------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        return await self.generate(request, parse_completion)

    async def chat(self, request: Request) -> Response:
        return await self.generate(request, parse_chat)

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        details = {"arch": self.served.arch, "context": self.served.context}
        return JSONResponse(models_response(self.served.name, self.created, **details))

    async def health(self, _request: Request) -> Response:
        if self.runner.healthy:
            return JSONResponse({"status": "ok"})
        if self.runner.failure is not None or self.runner.ready:
            return JSONResponse({"status": "failed", "error": self.runner.failure}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers=RETRY_AFTER)

    async def metrics_text(self, _request: Request) -> Response:
        text = self.metrics.render(self.served.engine.stats(), self.runner.healthy)
        return Response(text, media_type=CONTENT_TYPE)

    # Generation ----------------------------------------------------------------------------------

    async def generate(self, request: Request, parse: Callable[[dict, str], GenerationRequest]) -> Response:
        arrived = time.perf_counter()
        self.authorize(request)
        body = parse_json(await read_body(request, self.max_body))
        wanted = parse(body, self.served.name)
        self.check_capacity(wanted)
        self.runner.check()
        prompts = await asyncio.to_thread(self.encode, wanted)
        settings = [self.settings(wanted, j) for j in range(wanted.n)]
        channel = Channel(asyncio.get_running_loop())
        choices = [  # choice i answers prompt i // n, as OpenAI orders them
            Choice(
                i,
                len(prompts[i // wanted.n]),
                self.served.tokenizer,
                wanted.stop,
                wanted.chat,
                arrived,
                self.metrics,
            )
            for i in range(len(prompts) * wanted.n)
        ]
        self.submit(wanted, prompts, settings, choices, channel)
        request_id = new_id(wanted.chat)
        if wanted.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            stream = self.stream(wanted, request_id, choices, channel)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        return await self.collect(request, wanted, request_id, choices, channel)

    def encode(self, wanted: GenerationRequest) -> list[list[int]]:
        """Token ids of each prompt, as generate.py encodes them (runs in a worker thread)."""
        encoded = []
        for i, prompt in enumerate(wanted.prompts):
            try:
                encoded.append(
                    self.encode_text(prompt) if isinstance(prompt, str) else self.check_ids(prompt)
                )
            except GpthfError as err:
                where = "" if len(wanted.prompts) == 1 else f"prompt {i}: "
                raise ApiError(400, f"{where}{err}", param=self.prompt_param(wanted)) from None
        return encoded

    def encode_text(self, text: str) -> list[int]:
        served = self.served
        return encode_prompt(text, served.tokenizer, served.splitter, served.max_sentence_len)

    def check_ids(self, ids: list[int]) -> list[int]:
        served = self.served
        check_token_prompt(ids, served.tokenizer.get_vocab_size(), served.max_sentence_len)
        return ids

    def check_capacity(self, wanted: GenerationRequest) -> None:
        """A request of more engine requests (prompts × n) than the engine can hold at once, running
        and queued, can never be admitted: 400, not a 503 that asks the client to retry it."""
        engine = self.served.engine
        asked, holds = len(wanted.prompts) * wanted.n, engine.max_batch + engine.max_queue
        if asked > holds:
            raise ApiError(
                400,
                f"this request asks for {asked} completions ({len(wanted.prompts)} prompts × n={wanted.n}); "
                f"this server holds at most {holds} at once ({engine.max_batch} running, {engine.max_queue} "
                "queued): split it",
                param="n",
            )

    def settings(self, wanted: GenerationRequest, choice: int) -> RequestSettings:
        try:
            return RequestSettings(**wanted.sampling, seed=wanted.choice_seed(choice), **wanted.extras)
        except TypeError:  # an extra (ignore_eos) this engine's settings do not have
            name = next(iter(wanted.extras))
            raise ApiError(
                400, f"'{name}' is not supported by this engine; leave it out", param=name
            ) from None
        except GpthfError as err:
            raise ApiError(400, str(err), param=param_of(str(err), wanted)) from None

    def submit(
        self, wanted: GenerationRequest, prompts, settings, choices: list[Choice], channel: Channel
    ) -> None:
        """Every choice into the engine, or (on the first refusal) none of them."""
        added: list[Choice] = []
        try:
            for choice in choices:
                prompt = choice.index // wanted.n
                choice.handle = self.runner.add(
                    prompts[prompt], settings[choice.index % wanted.n], channel.callback(choice.index)
                )
                added.append(choice)
        except QueueFull as err:
            self.abort(added, "refused")
            raise ApiError(
                503, f"the server is busy: {err}", code="queue_full", headers=RETRY_AFTER
            ) from None
        except EngineStopped as err:
            self.abort(added, "refused")
            raise ApiError(500, f"{err}; restart the server", code="engine_failed") from None
        except PromptError as err:
            self.abort(added, "refused")
            where = self.name_prompt(wanted, len(added) // wanted.n)
            raise ApiError(
                400, f"{where} {err.problem}", self.prompt_param(wanted), "context_length_exceeded"
            ) from None
        except GpthfError as err:
            self.abort(added, "refused")
            raise ApiError(400, str(err), param=param_of(str(err), wanted)) from None
        except BaseException:
            self.abort(added, "refused")
            raise

    @staticmethod
    def name_prompt(wanted: GenerationRequest, index: int) -> str:
        if wanted.chat:
            return "the conversation (as the chat template writes it)"
        return "the prompt" if len(wanted.prompts) == 1 else f"prompt {index}"

    @staticmethod
    def prompt_param(wanted: GenerationRequest) -> str:
        return "messages" if wanted.chat else "prompt"

    def abort(self, choices: list[Choice], cause: str) -> None:
        for choice in choices:
            if not choice.done and choice.handle is not None:
                self.runner.abort(choice.handle, cause)

    async def events(self, choices: list[Choice], channel: Channel) -> AsyncIterator[tuple[Choice, str]]:
        """(choice, new text) as the engine's events arrive, until every choice is done; a choice cut
        by a stop string is aborted in the engine at once."""
        pending = len(choices)
        while pending:
            for index, event in await channel.get():
                choice = choices[index]
                if choice.done:
                    continue
                piece = choice.take(event)
                if choice.reason == "stop_string":
                    self.runner.abort(choice.handle, "stop_string")
                pending -= choice.done
                yield choice, piece

    async def stream(
        self, wanted: GenerationRequest, request_id: str, choices: list[Choice], channel: Channel
    ) -> AsyncIterator[bytes]:
        name = self.served.name
        try:
            if wanted.chat:
                for choice in choices:
                    yield sse(chunk(wanted, request_id, name, choice.index, None, first=True))
            async for choice, piece in self.events(choices, channel):
                if piece:
                    yield sse(chunk(wanted, request_id, name, choice.index, piece))
                if choice.reason in ("error", "abort"):
                    failure = self.failed(choice)
                    self.metrics.count_rejected(str(failure.status))
                    yield sse(failure.body())
                    return  # no [DONE]: the client can tell the stream was cut
                if choice.done:
                    yield sse(chunk(wanted, request_id, name, choice.index, None, choice.finish_reason))
            if wanted.include_usage:
                yield sse(usage_chunk(wanted, request_id, name, self.token_counts(wanted, choices)))
            yield sse("[DONE]")
        finally:  # also when the client disconnected and Starlette cancelled this stream
            self.abort(choices, "client_gone")

    async def collect(
        self,
        request: Request,
        wanted: GenerationRequest,
        request_id: str,
        choices: list[Choice],
        channel: Channel,
    ) -> Response:
        gone = asyncio.Event()
        watcher = asyncio.create_task(self.watch(request, choices, gone))
        try:
            async for _ in self.events(choices, channel):
                pass
        finally:
            watcher.cancel()
            self.abort(choices, "client_gone")
        if gone.is_set():
            return Response(status_code=499)  # nobody reads it
        for choice in choices:
            if choice.reason in ("error", "abort"):
                raise self.failed(choice)
        tokens = self.token_counts(wanted, choices)
        texts = [("".join(c.pieces), c.finish_reason) for c in choices]
        return JSONResponse(response(wanted, request_id, self.served.name, texts, tokens))

    async def watch(self, request: Request, choices: list[Choice], gone: asyncio.Event) -> None:
        """Abort the request's choices when its client disconnects (the body is read: the next
        message the server gets for this request is the disconnect)."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                self.abort(choices, "client_gone")
                return

    @staticmethod
    def failed(choice: Choice) -> ApiError:
        if choice.reason == "error":
            return ApiError(500, f"generation failed: {choice.error}", code="engine_failed")
        return ApiError(503, "the request was cancelled: the server is shutting down", code="cancelled")

    @staticmethod
    def token_counts(wanted: GenerationRequest, choices: list[Choice]) -> tuple[int, int]:
        """(prompt, completion) tokens: each prompt counted once, however many choices it has."""
        prompt_tokens = sum(c.prompt_tokens for c in choices[:: wanted.n])
        return prompt_tokens, sum(c.tokens for c in choices)

    # Errors and access ---------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if not authorized(request.headers.get("authorization"), self.api_key):
            raise ApiError(
                401,
                "a valid API key is needed: send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def api_error(self, _request: Request, error: ApiError) -> Response:
        self.metrics.count_rejected(str(error.status))
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def http_error(self, _request: Request, error: HTTPException) -> Response:
        return await self.api_error(
            _request, ApiError(error.status_code, str(error.detail), headers=error.headers)
        )

    async def crash(self, _request: Request, error: Exception) -> Response:
        log.error("request failed: %s: %s", type(error).__name__, error)
        return await self.api_error(
            _request, ApiError(500, f"internal error: {type(error).__name__}: {error}")
        )


def authorized(header: str | None, api_key: str | None) -> bool:
    """`Authorization: Bearer KEY`, compared in constant time."""
    if api_key is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), api_key.encode())


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 past `limit` bytes. An oversized body is still read (and dropped) up to a
    bound, so the client, still sending, gets the 413 rather than a reset connection."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > DRAIN_FACTOR * limit:
            break
        if size <= limit:
            chunks.append(part)
    if size > limit:
        raise too_large(limit)
    return b"".join(chunks)


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"the request body is over {limit:,} bytes (the server's --max-body)", code="request_too_large"
    )
