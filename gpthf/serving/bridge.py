"""Between the engine thread and the event loop: the thread that decodes, the hand-off of its events,
and what each choice of an HTTP request makes of them.

The engine calls `on_event` from its own thread for every token; the event loop must not be woken
once per token of every request (at 64 requests that is most of its work), so a request's events
gather in a deque and one wake-up is scheduled per batch of them (`Channel`). When the engine thread
dies, every request it had not finished is finished here with an error, so no client waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gpthf.serving.detokenize import IncrementalText, StopText
from gpthf.serving.engine import Finished, Token
from gpthf.serving.metrics import ServerMetrics
from gpthf.serving.openai_api import FINISH_REASONS, ApiError

log = logging.getLogger(__name__)


class Channel:
    """One HTTP request's engine events, tagged with their choice index, from the engine thread to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[int, Token | Finished]] = deque()
        self.ready = asyncio.Event()
        self.scheduled = False

    def callback(self, index: int) -> Callable[[Token | Finished], None]:
        return lambda event: self.push(index, event)

    def push(self, index: int, event: Token | Finished) -> None:
        """Engine thread. A wake-up already scheduled and not yet run will see this event too."""
        self.items.append((index, event))
        if not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: the server has stopped, nobody reads this
                pass

    def _wake(self) -> None:
        self.scheduled = False
        self.ready.set()

    async def get(self) -> list[tuple[int, Token | Finished]]:
        """The events that arrived since the last call, waiting for at least one."""
        while not self.items:
            self.ready.clear()
            if not self.items:
                await self.ready.wait()
        events = []
        while self.items:
            events.append(self.items.popleft())
        return events


@dataclass
class Handle:
    """An engine request as the server knows it: its own key and the engine's id."""

    key: int
    request_id: int


PACK_ROWS = 8  # decode steps of at least this many rows multiply from packed weights (CPU)


class EngineThread:
    """The engine's `run` loop in a daemon thread, and the server's record of unfinished requests.

    With `pack`, the model's linear weights are packed for the CPU's kernels while the loop runs
    (gpthf.generation.packed, as generate.py does): for min(max batch, PACK_ROWS) rows, so every
    step of a busy server gains and a lone request keeps the plain path."""

    def __init__(self, engine, metrics: ServerMetrics, pack: bool = False) -> None:
        self.engine, self.metrics, self.pack = engine, metrics, pack
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.live: dict[int, Callable[[Token | Finished], None]] = {}
        self.ids: dict[int, int] = {}  # key -> the engine's request id, once add returned
        self.causes: dict[int, str] = {}  # key -> why the server aborted it (metrics label)
        self.keys = 0
        self.failure: str | None = None
        self.ready = False  # the warm-up request came back
        self.thread = threading.Thread(target=self._run, name="gpthf-engine", daemon=True)

    @property
    def healthy(self) -> bool:
        return self.ready and self.failure is None and self.thread.is_alive()

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        from gpthf.generation.packed import packed_linears

        try:
            rows = min(self.engine.max_batch, PACK_ROWS)
            with packed_linears(self.engine.model, rows, enabled=self.pack):
                self.engine.run(self.stop)
        except BaseException as err:  # whatever it was, the requests waiting on it must hear of it
            log.exception("the engine thread died")
            self.fail(f"{type(err).__name__}: {err}")
        else:
            if not self.stop.is_set():
                self.fail("the engine thread returned without being stopped")

    def fail(self, why: str) -> None:
        """Mark the engine dead and finish every request it still owed an answer, with an error."""
        with self.lock:
            self.failure = why
            orphans = list(self.live.values())
        for on_event in orphans:  # each removes itself; one the engine already finished is skipped
            on_event(Finished("error", 0, 0, error=why))

    def check(self) -> None:
        """Refuse new work the engine cannot do: 500 once it died, 503 while it warms up."""
        if self.failure is not None or (self.ready and not self.thread.is_alive()):
            raise self._dead()
        if not self.ready:
            raise ApiError(
                503, "the model is still loading; retry shortly", code="loading", headers={"Retry-After": "1"}
            )

    def _dead(self) -> ApiError:
        return ApiError(500, f"the engine failed ({self.failure}); restart the server", code="engine_failed")

    def add(self, prompt: list[int], settings, on_event: Callable[[Token | Finished], None]) -> Handle:
        """`Engine.add`, with the request recorded so that the engine's death finishes it."""
        with self.lock:  # a death after this sees the request; a death before it is refused here
            if self.failure is not None:
                raise self._dead()
            key = self.keys = self.keys + 1
            self.live[key] = lambda event: self._deliver(key, event, on_event)
            deliver = self.live[key]
        try:
            request_id = self.engine.add(prompt, settings, deliver)
        except BaseException:
            with self.lock:
                self.live.pop(key, None)
            raise
        with self.lock:
            if key in self.live:
                self.ids[key] = request_id
        return Handle(key, request_id)

    def _deliver(
        self, key: int, event: Token | Finished, on_event: Callable[[Token | Finished], None]
    ) -> None:
        if isinstance(event, Finished):
            with self.lock:
                if self.live.pop(key, None) is None:
                    return  # already finished (by `fail`, or a duplicate)
                self.ids.pop(key, None)
                cause = self.causes.pop(key, None)
            self.metrics.count_finished(cause if event.reason == "abort" and cause else event.reason)
        on_event(event)

    def abort(self, handle: Handle, cause: str) -> None:
        """Ask the engine to drop a request; `cause` labels it in /metrics (client_gone, stop_string...)."""
        with self.lock:
            if handle.key not in self.live:
                return
            self.causes[handle.key] = cause
        self.engine.abort(handle.request_id)

    def shutdown(self, timeout: float) -> None:
        """Abort what is left, stop the loop, and wait a bounded time for the thread to end."""
        with self.lock:
            left = [(key, self.ids[key]) for key in self.live if key in self.ids]
            for key, _ in left:
                self.causes.setdefault(key, "shutdown")
        for _, request_id in left:
            self.engine.abort(request_id)
        self.stop.set()
        self.thread.join(timeout)


class Choice:
    """One choice of a request: its text so far, cut at stop strings, and its timings."""

    def __init__(
        self, index: int, prompt_tokens: int, tokenizer, stops, chat: bool, arrived: float, metrics
    ) -> None:
        self.index, self.prompt_tokens, self.chat, self.arrived = index, prompt_tokens, chat, arrived
        self.text, self.stop = IncrementalText(tokenizer), StopText(stops)
        self.metrics = metrics
        self.handle: Handle | None = None
        self.pieces: list[str] = []
        self.tokens = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.reason: str | None = None  # the engine's reason, or "stop_string"
        self.error: str | None = None
        self.started = False  # chat: leading spaces of the reply dropped until its first character

    @property
    def done(self) -> bool:
        return self.reason is not None

    @property
    def finish_reason(self) -> str:
        """As OpenAI names it: stop | length."""
        return "stop" if self.reason == "stop_string" else FINISH_REASONS.get(self.reason, self.reason)

    def take(self, event: Token | Finished) -> str:
        """The text this event adds (already cut at a stop string); sets `reason` when the choice ends."""
        if self.done:
            return ""  # a token decoded after a stop string, or the engine's answer to our abort
        if isinstance(event, Token):
            now = time.perf_counter()
            if self.first_at is None:
                self.first_at = now
                self.metrics.observe_first_token(now - self.arrived)
            self.last_at, self.tokens = now, self.tokens + 1
            piece = self.stop.feed(self.text.push(event.token_id))
            if self.stop.stopped:
                self._finish("stop_string")
            return self._show(piece)
        if event.reason in ("abort", "error"):
            self.reason, self.error = event.reason, event.error
            return ""
        piece = self.stop.feed(self.text.flush())
        piece += self.stop.flush()
        self._finish("stop_string" if self.stop.stopped else event.reason)
        return self._show(piece)

    def _finish(self, reason: str) -> None:
        self.reason = reason
        self.metrics.observe_finished(
            self.first_at, self.last_at, self.tokens, time.perf_counter() - self.arrived
        )

    def _show(self, piece: str) -> str:
        if self.chat and not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        self.pieces.append(piece)
        return piece
