"""The one decoding loop: requests join a running batch and leave it between decode steps.

`Engine.add` queues a request (its prompt's token ids, its own sampling and stop settings and a
callback); `step()` admits waiting requests into free slots, samples and decodes one token for every
running row and hands each request its events (`Token`s, then one `Finished`); `abort` takes a
request out at the next step boundary. `generate()`, batch jobs, the lm-eval adapter and the HTTP
server (gpthf.serving) are clients of it.

A step reads the device once: the new tokens, each row's stop (if any) and what the strategy's next
step must know on the host, packed into one tensor and read with one `.tolist()`. Everything else
(sampling, counters, stop conditions, which rows stay active) is computed on the device, so a GPU
step never waits for the host in between; the host mirrors which rows are live from the stops it
reads. Each row carries its own settings (`SlotRows`, `RowSampling`) and its own random stream, seeded
by its request alone: a request's tokens do not depend on what else runs.

Admission is by slots (`max_batch`) and by generation state memory (`max_state_bytes`): a request is
counted at its horizon, the most state its row can come to hold (gpthf.generation.state_size), from
its prefill until it leaves. Requests are admitted in arrival order (none overtakes a larger one
waiting for memory). The count is what the rows hold; the batch's buffers are padded to its longest
row (a KV cache's capacity is one for all rows), so what they allocate can be more when rows of very
different horizons run together. The batch grows to the rows admitted; while nothing records its rows by slot
(`record_logits`) or holds its shape (`compile`), it shrinks again when half its rows stand empty
with nobody waiting, so a lull after a burst does not decode idle rows.

Threads: `add`, `abort` and `stats` may be called from any thread; `step` and `run` from one engine
thread, which calls every `on_event`. An `on_event` that raises stops the engine (its error finishes
every request); a server's callbacks hand events over and return.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence

import torch

from gpthf.errors import ConfigError
from gpthf.generation.compiled import Horizon
from gpthf.generation.limits import ContextLimit, GenerationError, PromptError, prompt_problem, stopping_limit
from gpthf.generation.requests import (  # noqa: F401  (the engine's vocabulary, imported from here too)
    ABORT,
    ERROR,
    FINISH_REASONS,
    EngineStats,
    EngineStopped,
    Event,
    Finished,
    QueueFull,
    Request,
    RequestSettings,
    RequestTooLarge,
    Token,
)
from gpthf.generation.rows import put_rows, take_rows
from gpthf.generation.sampling import PromptStreams, RowSampling, stream_seed
from gpthf.generation.slots import Prefilled, SlotRows
from gpthf.generation.state_size import StateSize, row_horizon
from gpthf.generation.strategies import get_strategy, pad_rows
from gpthf.models import LanguageModel
from gpthf.settings import MAX_BATCH, MAX_QUEUE, MAX_STATE_BYTES

STOP_POLL_S = 0.05  # how often an idle `run` looks at its stop event


class Engine:
    """Continuous batching over one model's strategy; see the module's docstring."""

    def __init__(
        self,
        model: LanguageModel,
        *,
        limit: ContextLimit,
        max_sentence_len: int | None,
        max_batch: int = 16,
        max_state_bytes: int | None = None,
        max_queue: int = 256,
        compile: bool = False,
        strategy: str = "cached",
        horizon: Horizon | None = None,
        record_logits: bool = False,
    ):
        """`strategy` "full" recomputes every step (the oracle); `compile` compiles the decode step
        over caches of a fixed size: `horizon`, or what `limit` and `max_sentence_len` allow, and
        refuses requests that could outgrow it. `record_logits` keeps every step's (B, V) logits in
        `step_logits`, rows by slot."""
        for setting, value in ((MAX_BATCH, max_batch), (MAX_STATE_BYTES, max_state_bytes), (MAX_QUEUE, max_queue)):
            setting.check(value)
        self.model = model
        self.limit = stopping_limit(model, limit)
        self.max_sentence_len = max_sentence_len
        self.max_batch, self.max_state_bytes, self.max_queue = max_batch, max_state_bytes, max_queue
        self.record_logits = record_logits
        self.device = model.embed.weight.device
        self._size = StateSize(model, strategy)
        self._horizon = None
        if compile:  # (a strategy other than cached is refused by get_strategy)
            self._horizon = self._compiled_horizon(horizon) if strategy == "cached" else Horizon(0, 0, 0)
        self._runner = get_strategy(model, strategy, compile_for=self._horizon)
        self._resizable = not compile and not record_logits
        self.step_logits: list[torch.Tensor] = []
        self.idle_state_bytes = 0  # the strategy's state.nbytes() when the batch last emptied

        # Shared with other threads, under the lock.
        self._lock = threading.Condition()
        self._queue: deque[Request] = deque()
        self._requests: dict[int, Request] = {}  # every request not finished
        self._aborted: list[Request] = []
        self._next_id = 0
        self._counts = {"running": 0, "ready": 0, "bytes": 0, "prompt_tokens": 0, "generated": 0}
        self._stopped: tuple[str | None] | None = None  # set when run() ended: (its error,)

        # The engine thread's own.
        self._slots: list[Request | None] = []
        self._rows: SlotRows | None = None
        self._state = None
        self._logits: torch.Tensor | None = None
        self._streams = PromptStreams(0, 0, self.device)
        self._sampling_flags = (False, 0, False)
        self._ready = Prefilled.none()

    def _compiled_horizon(self, given: Horizon | None) -> Horizon:
        """`given`, or the largest caches this engine's requests can need."""
        if given is not None:
            return given
        known = {
            "tokens": (self.limit.tokens, "the context limit in tokens"),
            "sentences": (self.limit.sentences, "the context limit in sentences"),
            "sentence_tokens": (self.max_sentence_len, "max_sentence_len"),
        }
        for field in self._sized_by():
            if known[field][0] is None:
                raise ConfigError(
                    f"compile sizes the caches for {known[field][1]}, which this model's checkpoint does not give"
                )
        return Horizon(**{field: value or 0 for field, (value, _) in known.items()})

    def _sized_by(self) -> list[str]:
        """The Horizon fields this model's state grows with."""
        size = self._size
        per = {
            "tokens": size.per_token,
            "sentences": size.per_sentence,
            "sentence_tokens": size.per_sentence_token,
        }
        return [field for field, bytes_each in per.items() if bytes_each]

    # ---- any thread ----

    def add(
        self,
        prompt: Sequence[int],
        settings: RequestSettings,
        on_event: Callable[[Event], None],
        *,
        sampling_key: int | None = None,
    ) -> int:
        """Thread-safe. Raises PromptError (an empty prompt, or one over the model's context:
        sentences for GPTHF, tokens for the others), RequestTooLarge, QueueFull or EngineStopped;
        returns the request's id. `on_event` is called from the engine thread for each token, then
        once with Finished. `sampling_key` (a job's prompt index) joins the seed in choosing the
        random stream, so the prompts of one job with one seed draw differently."""
        problem = prompt_problem(self.model, prompt, self.limit)
        if problem is not None:
            raise PromptError(None, problem)
        reach = self._reach(prompt, settings)
        self._check_fits_compiled(reach)
        size = self._size(reach)
        if self.max_state_bytes is not None and size > self.max_state_bytes:
            raise RequestTooLarge(
                f"this request needs {size:,} bytes of generation state ({len(prompt)} prompt tokens, "
                f"max_tokens {settings.max_tokens}) and the engine holds at most {self.max_state_bytes:,}; "
                "ask for fewer tokens or give the server more state memory"
            )
        stream = None
        if settings.temperature > 0:
            seed = settings.seed if settings.seed is not None else secrets.randbits(63)
            stream = stream_seed(seed, sampling_key)
        with self._lock:
            if self._stopped is not None:
                raise EngineStopped(self._stopped[0])
            # Waiting means beyond the free slots: requests sent together to an idle engine are not
            # refused before its thread has had a step to place them.
            free_slots = max(self.max_batch - self._counts["running"], 0)
            if len(self._queue) + self._counts["ready"] - free_slots >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests already wait (max_queue); retry later")
            request = Request(self._next_id, prompt, settings, on_event, stream, size)
            self._next_id += 1
            self._queue.append(request)
            self._requests[request.id] = request
            self._lock.notify_all()
        return request.id

    def state_bytes(self, prompt: Sequence[int], settings: RequestSettings) -> int:
        """Bytes of generation state a request holds at its horizon: what admission counts, so a
        server can refuse to start with a state memory that holds no request at all."""
        return self._size(self._reach(prompt, settings))

    def _reach(self, prompt: Sequence[int], settings: RequestSettings) -> Horizon:
        return row_horizon(prompt, settings.max_tokens, self.max_sentence_len, self.limit, settings.max_sentences)

    def _check_fits_compiled(self, reach: Horizon) -> None:
        fixed = self._horizon
        for field in self._sized_by() if fixed is not None else ():
            if getattr(reach, field) > getattr(fixed, field):
                raise GenerationError(
                    f"this request can reach {getattr(reach, field)} {field.replace('_', ' ')}; the compiled "
                    f"step's caches hold {getattr(fixed, field)} (sized by the model's limits): ask for fewer tokens "
                    "or give a shorter prompt"
                )

    def abort(self, request_id: int) -> None:
        """Thread-safe; unknown or finished ids are ignored. The request leaves at the next step
        boundary: its slot and state are free within one decode step; its `on_event` gets
        Finished('abort')."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is not None and not request.aborted:
                request.aborted = True
                self._aborted.append(request)
                self._lock.notify_all()

    def stats(self) -> EngineStats:
        """Thread-safe snapshot."""
        with self._lock:
            counts = self._counts
            free = None if self.max_state_bytes is None else self.max_state_bytes - counts["bytes"]
            return EngineStats(
                running=counts["running"],
                waiting=len(self._queue) + counts["ready"],
                state_bytes_in_use=counts["bytes"],
                state_bytes_free=free,
                prompt_tokens_total=counts["prompt_tokens"],
                generated_tokens_total=counts["generated"],
            )

    # ---- the engine thread ----

    def run(self, stop: threading.Event) -> None:
        """The engine thread's loop: step() while there is work, otherwise wait (woken by add and
        abort) until work or `stop`. On `stop`, requests still in flight finish with 'abort'. An
        exception inside a step finishes every running and waiting request with
        Finished('error', error=str(exc)) and is raised again; either way later adds are refused."""
        try:
            while not stop.is_set():
                if not self.step():
                    with self._lock:
                        self._lock.wait_for(lambda: self._has_work() or stop.is_set(), timeout=STOP_POLL_S)
        except BaseException as exc:
            self._finish_everything(ERROR, f"{type(exc).__name__}: {exc}")
            raise
        self._finish_everything(ABORT, None)

    def _has_work(self) -> bool:  # under the lock
        return bool(self._queue or self._aborted or self._counts["ready"] or self._counts["running"])

    def _finish_everything(self, reason: str, error: str | None) -> None:
        with self._lock:
            self._stopped = (error,)
            left = list(self._requests.values())
            self._requests.clear()
            self._queue.clear()
            self._aborted.clear()
            self._counts.update(running=0, ready=0, bytes=0)
        self._slots, self._rows, self._state, self._logits, self._ready = (
            [],
            None,
            None,
            None,
            Prefilled.none(),
        )
        for request in left:
            request.where = "done"
            try:
                request.on_event(request.finished(reason, error))
            except Exception:  # noqa: BLE001  (one client's broken callback must not keep the others waiting)
                pass

    @torch.inference_mode()
    def step(self) -> bool:
        """One iteration (engine thread only): aborted requests leave, waiting requests take free
        slots (by max_batch and by state memory at each row's horizon), every running row samples
        its token, events go out, then the state advances by those tokens. Returns True while
        requests are running or waiting."""
        events = self._leave_aborted()
        self._admit()
        advance = None
        if any(request is not None for request in self._slots):
            sampled, advance = self._sample()
            events += sampled
        generated = sum(1 for _, event in events if isinstance(event, Token))
        with self._lock:
            self._counts["running"] = sum(1 for request in self._slots if request is not None)
            self._counts["generated"] += generated
            for request, event in events:
                if isinstance(event, Finished):
                    self._requests.pop(request.id, None)
            busy = self._has_work()
        for request, event in events:
            request.on_event(event)
        if advance is not None:
            advance()
        self._tidy()
        return busy

    def _release(self, requests: list[Request]) -> None:
        """Their state memory is free again (they were admitted)."""
        with self._lock:
            self._counts["bytes"] -= sum(r.state_bytes for r in requests)

    def _leave_aborted(self) -> list[tuple[Request, Event]]:
        with self._lock:
            aborted, self._aborted = self._aborted, []
            queued = {r.id for r in aborted if r.where == "queued"}
            if queued:
                self._queue = deque(r for r in self._queue if r.id not in queued)
        events: list[tuple[Request, Event]] = []
        freed = []
        for request in aborted:
            if request.where == "done":  # finished in the step that was running when it was aborted
                continue
            if request.where == "running":
                self._slots[request.slot] = None
                self._rows.active[request.slot] = False
            if request.where in ("running", "ready"):
                freed.append(request)
            if request.where == "ready":
                with self._lock:
                    self._counts["ready"] -= 1
            request.where = "done"
            events.append((request, request.finished(ABORT)))
        self._release(freed)
        if freed:
            self._update_sampling_flags()
        return events

    def _admit(self) -> None:
        """Prefilled requests, then waiting ones that fit the state memory, into free slots; a
        strategy whose batched prefill computes no padding (GPTHF's sentence-packed one) prefills a
        whole batch ahead: one call for many prompts costs far less per prompt than one call each
        (measured on the sweep's gpthf-5m: 4.4 against 10 ms for prompts of 4-128 tokens); others
        prefill only what is needed, as padding prompts of mixed lengths to the longest would cost
        more than the calls it saves."""
        room = self.max_batch - len(self._slots) + self._slots.count(None)
        room -= self._place_ready(room)
        if room <= 0:
            return
        ahead = self.max_batch if getattr(self._runner, "prefills_without_padding", False) else 0
        arrivals: list[Request] = []
        with self._lock:
            used = self._counts["bytes"]
            while self._queue and len(arrivals) < max(room, ahead):
                request = self._queue[0]
                if self.max_state_bytes is not None and used + request.state_bytes > self.max_state_bytes:
                    break
                used += request.state_bytes
                arrivals.append(self._queue.popleft())
                request.where = "ready"
            self._counts.update(
                bytes=used,
                ready=self._counts["ready"] + len(arrivals),
                prompt_tokens=self._counts["prompt_tokens"] + sum(len(r.prompt) for r in arrivals),
            )
        if arrivals:
            tokens, lengths = pad_rows([r.prompt for r in arrivals], self.device)
            logits, state = self._runner.prefill(self.model, tokens, lengths)
            self._ready = Prefilled(arrivals, tokens, lengths, logits, state)
            self._place_ready(room)

    def _place_ready(self, room: int) -> int:
        """Up to `room` prefilled requests into free slots (the batch grown if needed); how many."""
        placed = 0
        while placed < room and len(self._ready):
            rows = self._ready.take(room - placed)
            keep = [i for i, r in enumerate(rows.requests) if r.where == "ready"]  # not aborted since
            if len(keep) < len(rows.requests):
                rows = rows.select(keep)
            if rows.requests:
                self._place(rows)
                placed += len(rows.requests)
        if not len(self._ready):
            self._ready = Prefilled.none()
        with self._lock:
            self._counts["ready"] -= placed
        return placed

    def _place(self, rows: Prefilled) -> None:
        count = len(rows.requests)
        if self._state is None:  # an empty engine: the prefilled rows are the batch
            self._state, self._logits = rows.state, rows.logits
            self._rows = SlotRows.empty(count, self.device)
            self._slots = [None] * count
            self._streams = PromptStreams(0, count, self.device)
            free = list(range(count))
            index = torch.arange(count, device=self.device)
        else:
            free = [slot for slot, request in enumerate(self._slots) if request is None][:count]
            if len(free) < count:
                free += self._grow(count - len(free))
            index = torch.tensor(free, device=self.device)
            self._state = put_rows(self._state, index, rows.state)
            self._logits[index] = rows.logits.to(self._logits.dtype)
        self._rows.start(index, rows)
        for slot, request in zip(free, rows.requests):
            self._slots[slot] = request
            request.where, request.slot = "running", slot
            self._streams.start(slot, request.stream)
        self._update_sampling_flags()

    def _grow(self, more: int) -> list[int]:
        """`more` new slots at the batch's end (their rows copies of row 0, inactive)."""
        width = len(self._slots)
        new_width = width + more
        if not self._resizable:  # a compiled step keeps a graph per batch size: few sizes, doubling
            new_width = min(self.max_batch, max(new_width, 2 * width))
        index = torch.cat([torch.arange(width), torch.zeros(new_width - width, dtype=torch.long)])
        self._state = take_rows(self._state, index.to(self.device))
        self._logits = self._logits[index.to(self._logits.device)]
        self._rows = self._rows.extended(new_width - width)
        self._slots += [None] * (new_width - width)
        self._streams.resize(new_width)
        return list(range(width, width + more))

    def _update_sampling_flags(self) -> None:
        """What the host knows of the running rows' sampling (which work a step can skip)."""
        self._sampling_flags = RowSampling.host_flags(
            [r.settings.sampling for r in self._slots if r is not None]
        )

    def _sample(self) -> tuple[list[tuple[Request, Event]], Callable[[], None] | None]:
        """One token for every running row, with the step's one device read: their events, and
        what advances the state by those tokens (None when no row goes on)."""
        rows, logits, state = self._rows, self._logits, self._state
        if self.record_logits:
            self.step_logits.append(logits.float().cpu())
        uniforms = self._streams.uniforms() if self._sampling_flags[0] else None
        next_token, stopped_by = rows.next_tokens(
            logits, self._sampling_flags, uniforms, self.max_sentence_len, self.limit
        )
        active = rows.active
        read = torch.cat([next_token, stopped_by, state.host_query(active)]).tolist()  # the step's one sync

        width = len(self._slots)
        events: list[tuple[Request, Event]] = []
        for slot, request in enumerate(self._slots):
            if request is not None:
                request.generated += 1
                events.append((request, Token(read[slot])))
        finished = []
        for number, reason in enumerate(FINISH_REASONS, start=1):  # by reason, then by slot
            for slot in range(width):
                if read[width + slot] == number:
                    request = self._slots[slot]
                    self._slots[slot] = None
                    request.where = "done"
                    finished.append(request)
                    events.append((request, request.finished(reason)))
        if finished:
            self._release(finished)
            self._update_sampling_flags()
        if not any(request is not None for request in self._slots):
            return events, None

        def advance() -> None:
            state.host_answer(read[2 * width :])
            self._logits = self._runner.decode(self.model, state, next_token, active)

        return events, advance

    def _tidy(self) -> None:
        """An empty engine lets its batch go; a half-empty one with nobody waiting shrinks to its
        running rows (see the module's docstring for when it may)."""
        live = [slot for slot, request in enumerate(self._slots) if request is not None]
        if self._state is None or len(self._ready):
            return
        with self._lock:
            waiting = bool(self._queue)
        if waiting:
            return
        if not live:
            self.idle_state_bytes = self._state.nbytes()
            self._slots, self._rows, self._state, self._logits = [], None, None, None
            self._streams = PromptStreams(0, 0, self.device)
            return
        if self._resizable and len(live) <= len(self._slots) // 2:
            index = torch.tensor(live, device=self.device)
            self._state = take_rows(self._state, index)
            self._logits = self._logits[index]
            self._rows = self._rows.select(index)
            self._streams.resize(len(live), kept=live)
            self._slots = [self._slots[slot] for slot in live]
            for slot, request in enumerate(self._slots):
                request.slot = slot
