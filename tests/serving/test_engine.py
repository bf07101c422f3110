"""The engine, the one decoding loop: requests that join and leave a running batch get what they would
get alone, each with its own sampling; aborts free their slot at once; admission by slots, by state
memory and by queue length; a thread of its own, and errors that finish every request."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gpthf.data.special_tokens import EOD_ID, EOS_ID
from gpthf.generation import GenerationSettings, SamplingSettings, generate
from gpthf.generation.compiled import Horizon
from gpthf.generation.state_size import StateSize, row_horizon
from gpthf.generation.strategies import get_strategy, pad_rows
from gpthf.serving.engine import (
    ContextLimit,
    Engine,
    EngineStopped,
    Finished,
    GenerationError,
    PromptError,
    QueueFull,
    RequestSettings,
    RequestTooLarge,
    Token,
)
from tests.models.helpers import synthetic_rows, tiny_model

GREEDY = SamplingSettings(temperature=0)
MAX_STEPS = 2_000  # every loop here stops by itself long before


class Client:
    """Collects each request's events (from any thread); `done(id)` once its Finished came."""

    def __init__(self) -> None:
        self.events: dict[int, list] = {}
        self.finished: dict[int, threading.Event] = {}
        self.lock = threading.Lock()

    def add(self, engine: Engine, prompt: list[int], settings: RequestSettings, **kwargs) -> int:
        box: list = []
        done = threading.Event()

        def on_event(event) -> None:
            box.append(event)
            if isinstance(event, Finished):
                done.set()

        request = engine.add(prompt, settings, on_event, **kwargs)
        with self.lock:
            self.events[request], self.finished[request] = box, done
        return request

    def tokens(self, request: int) -> list[int]:
        return [e.token_id for e in self.events[request] if isinstance(e, Token)]

    def end(self, request: int) -> Finished:
        last = self.events[request][-1]
        assert isinstance(last, Finished), "a request's last event is its Finished"
        assert sum(isinstance(e, Finished) for e in self.events[request]) == 1
        return last


def drain(engine: Engine) -> int:
    """Steps until the engine has nothing left; how many."""
    for steps in range(1, MAX_STEPS):
        if not engine.step():
            return steps
    raise AssertionError("the engine never ran out of work")


def prompts(count: int, seed: int = 5) -> list[list[int]]:
    ids, _ = synthetic_rows(count, 48, seed=seed)
    return [ids[i, : 2 + (i * 13) % 40].tolist() for i in range(count)]


def engine_for(model, **kwargs) -> Engine:
    kwargs.setdefault("limit", ContextLimit())
    kwargs.setdefault("max_sentence_len", 8)
    return Engine(model, **kwargs)


def as_generation(settings: RequestSettings, max_sentence_len: int | None = 8) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=settings.max_tokens,
        max_sentences=settings.max_sentences,
        sampling=SamplingSettings(settings.temperature, settings.top_k, settings.top_p),
        seed=settings.seed,
        max_sentence_len=max_sentence_len,
    )


@pytest.mark.parametrize("kind", ["gpthf", "gpt", "linear", "lstm", "block_recurrent"])
def test_64_concurrent_greedy_requests_each_equal_generate_alone(kind):
    """Eight slots, 64 requests of different lengths and limits: they queue, join between steps as
    slots free up, leave at different steps; each gets exactly the tokens and the finish of its prompt
    through `generate()` alone."""
    model = tiny_model(kind, seed=3)
    engine, client = engine_for(model, max_batch=8, max_queue=64), Client()
    asked = [
        RequestSettings(max_tokens=3 + i % 11, temperature=0, max_sentences=None if i % 3 else 1 + i % 2)
        for i in range(64)
    ]
    texts = prompts(64)
    ids = [client.add(engine, p, s) for p, s in zip(texts[:20], asked[:20])]
    engine.step()
    assert engine.stats().running == 8 and engine.stats().waiting == 12
    ids += [client.add(engine, p, s) for p, s in zip(texts[20:], asked[20:])]  # arrive mid-flight
    drain(engine)
    reasons = set()
    for request, prompt, settings in zip(ids, texts, asked):
        alone = generate(model, [prompt], as_generation(settings))
        assert client.tokens(request) == alone.tokens[0], f"request {request}"
        end = client.end(request)
        reasons.add(end.reason)
        assert {"max_tokens": "max_new_tokens"}.get(end.reason, end.reason) == alone.finish_reasons[0]
        assert (end.prompt_tokens, end.completion_tokens) == (len(prompt), len(alone.tokens[0]))
    assert reasons >= {"max_tokens", "max_sentences"}
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.state_bytes_in_use) == (0, 0, 0)
    assert stats.generated_tokens_total == sum(len(client.tokens(r)) for r in ids)
    assert stats.prompt_tokens_total == sum(map(len, texts))


@pytest.mark.parametrize("kind", ["gpthf", "gpt"])
def test_a_seeded_request_samples_the_same_alone_and_among_63_others(kind):
    model = tiny_model(kind, seed=3)
    texts = prompts(64, seed=8)
    mine = RequestSettings(
        max_tokens=24, temperature=1.0, top_k=30, top_p=0.95, seed=1234
    )  # outlives the rest
    others = [  # greedy, sampled, top-k, top-p (with a random seed), of various lengths
        [
            RequestSettings(max_tokens=4 + i % 13, temperature=0.0),
            RequestSettings(max_tokens=4 + i % 13, temperature=1.3, seed=i),
            RequestSettings(max_tokens=4 + i % 13, temperature=0.7, top_k=5, seed=i),
            RequestSettings(max_tokens=4 + i % 13, temperature=1.0, top_p=0.5),
        ][i % 4]
        for i in range(63)
    ]
    alone_engine, alone = engine_for(model, max_batch=8), Client()
    request = alone.add(alone_engine, texts[0], mine)
    drain(alone_engine)
    expected = alone.tokens(request)
    assert len(expected) == 24 and len(set(expected)) > 3, "a sampled stream, not one repeated token"

    crowd_engine, crowd = engine_for(model, max_batch=16, max_queue=64), Client()
    for i in range(30):
        crowd.add(crowd_engine, texts[1 + i], others[i])
    for _ in range(3):
        crowd_engine.step()
    for i in range(30, 63):
        crowd.add(crowd_engine, texts[1 + i], others[i])
    request = crowd.add(crowd_engine, texts[0], mine)  # the last to join a running batch
    widths = []
    while crowd_engine.step():
        widths.append(len(crowd_engine._slots))
    assert crowd.tokens(request) == expected
    assert max(widths) == 16 and widths[-1] < 4, "it ran in a full batch, then in one shrunk around it"
    other_seed = engine_for(model), Client()
    changed = other_seed[1].add(other_seed[0], texts[0], RequestSettings(**{**mine.__dict__, "seed": 4321}))
    drain(other_seed[0])
    assert other_seed[1].tokens(changed) != expected, "the seed decides the stream"


def test_generate_through_the_engine_is_its_prompts_one_by_one():
    """generate()'s job-wide seed and prompt keys are an engine request's (seed, sampling_key)."""
    model = tiny_model("gpthf", seed=3)
    texts = prompts(6)
    settings = GenerationSettings(
        max_new_tokens=9, sampling=SamplingSettings(0.9, 20, None), seed=3, max_sentence_len=8
    )
    together = generate(model, texts, settings, slots=2)
    engine, client = engine_for(model, max_batch=3), Client()
    asked = RequestSettings(max_tokens=9, temperature=0.9, top_k=20, seed=3)
    ids = [client.add(engine, p, asked, sampling_key=key) for key, p in enumerate(texts)]
    drain(engine)
    assert [client.tokens(r) for r in ids] == together.tokens


def test_an_abort_finishes_the_request_and_its_slot_takes_the_next_at_once():
    model = tiny_model("gpt", seed=3)
    engine, client = engine_for(model, max_batch=2), Client()
    settings = RequestSettings(max_tokens=30, temperature=0)
    first, second, third = (client.add(engine, p, settings) for p in prompts(3))
    for _ in range(4):
        engine.step()
    assert client.tokens(third) == [] and engine.stats().waiting == 1
    engine.abort(first)
    engine.abort(first)  # twice: still one Finished
    engine.step()
    end = client.end(first)
    assert (end.reason, end.completion_tokens) == ("abort", 4) and len(client.tokens(first)) == 4
    assert len(client.tokens(third)) == 1, "the freed slot decoded the waiting request in the same step"
    assert engine.stats().running == 2 and engine.stats().waiting == 0
    engine.abort(first)  # finished: ignored
    engine.abort(12345)  # unknown: ignored
    queued = client.add(engine, prompts(4)[3], settings)
    engine.abort(queued)  # aborted while waiting: never runs
    engine.step()
    assert client.end(queued).reason == "abort" and client.tokens(queued) == []
    drain(engine)
    assert [client.end(r).reason for r in (second, third)] == ["max_tokens", "max_tokens"]
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.state_bytes_in_use) == (0, 0, 0)


def test_prefilled_requests_all_aborted_before_a_slot_frees_leave_cleanly():
    """GPTHF prefills a whole batch ahead; every request prefilled but not yet placed is aborted (its
    clients left): when a slot frees, nothing is left to place, and the engine goes on (the soak
    found this as an IndexError that killed the engine thread)."""
    model = tiny_model("gpthf", seed=3)
    engine, client = engine_for(model, max_batch=1), Client()
    settings = RequestSettings(max_tokens=3, temperature=0)
    first, *ahead = (client.add(engine, p, settings) for p in prompts(3))
    engine.step()  # all three prefilled; the first placed
    assert engine.stats().running == 1
    for request in ahead:
        engine.abort(request)
    drain(engine)
    assert client.end(first).reason == "max_tokens" and [client.end(r).reason for r in ahead] == ["abort"] * 2
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.state_bytes_in_use) == (0, 0, 0)
    later = client.add(engine, prompts(1)[0], settings)  # and the engine still serves
    drain(engine)
    assert client.end(later).reason == "max_tokens"


@pytest.mark.parametrize("kind", ["gpt", "gpthf", "linear", "lstm", "block_recurrent"])
def test_state_size_is_what_the_strategy_holds_for_a_row_of_that_shape(kind):
    """The admission estimate of a horizon equals the strategy's own bytes for a row that size."""
    model = tiny_model(kind, seed=3)
    ids, _ = synthetic_rows(1, 40, seed=5)
    row = ids[0].tolist()
    filled = row[: len(row) - row[::-1].index(EOS_ID) + 2]  # finished sentences, then 2 tokens of one
    finished = filled.count(EOS_ID)
    assert finished >= 2
    tokens, lengths = pad_rows([filled])
    with torch.inference_mode():
        _, state = get_strategy(model, "cached").prefill(model, tokens, lengths)
    shape = Horizon(tokens=len(filled), sentence_tokens=2, sentences=finished)
    assert StateSize(model)(shape) == state.nbytes() > 0


def test_a_rows_horizon_is_bounded_by_whatever_stops_it_first():
    prompt = [5, EOS_ID, 6, EOS_ID, 7, 8]  # 2 finished sentences, 2 tokens of the third
    assert row_horizon(prompt, 10, None) == Horizon(tokens=16, sentence_tokens=12, sentences=12)
    assert row_horizon(prompt, 10, 5).sentence_tokens == 5, "a forced <eos> bounds the open sentence"
    assert row_horizon([9] * 7, 10, 5).sentence_tokens == 8, "an open sentence past the cap, plus one"
    assert row_horizon(prompt, 10, None, max_sentences=3).sentences == 5
    capped = row_horizon(prompt, 10, None, ContextLimit(tokens=9, sentences=4))
    assert (capped.tokens, capped.sentences) == (9, 4)


def test_admission_waits_for_state_memory_and_refuses_what_never_fits():
    model = tiny_model("gpt", seed=3)
    texts = prompts(3)
    texts = [texts[2][:20]] * 3
    short, long = RequestSettings(max_tokens=3, temperature=0), RequestSettings(max_tokens=12, temperature=0)
    per_row = StateSize(model)(row_horizon(texts[0], 12, 8))
    engine, client = engine_for(model, max_batch=8, max_state_bytes=int(2.5 * per_row)), Client()
    first = client.add(engine, texts[0], short)
    second, third = client.add(engine, texts[1], long), client.add(engine, texts[2], long)
    engine.step()
    stats = engine.stats()
    assert (stats.running, stats.waiting) == (2, 1), "two rows fit the memory, the third waits"
    in_use = StateSize(model)(row_horizon(texts[0], 3, 8)) + per_row
    assert stats.state_bytes_in_use == in_use and stats.state_bytes_free == int(2.5 * per_row) - in_use
    while not client.finished[first].is_set():
        engine.step()
        assert client.tokens(third) == [], "it waits while the first runs"
    engine.step()
    assert engine.stats().running == 2 and len(client.tokens(third)) == 1, "the first's memory took it in"
    drain(engine)
    assert [client.end(r).reason for r in (first, second, third)] == ["max_tokens"] * 3
    assert engine.stats().state_bytes_in_use == 0
    with pytest.raises(RequestTooLarge, match=r"needs [\d,]+ bytes of generation state .* at most [\d,]+"):
        engine.add(texts[0], RequestSettings(max_tokens=200, temperature=0), lambda event: None)


def test_queue_full_when_max_queue_requests_wait():
    model = tiny_model("gpthf", seed=3)
    engine, client = engine_for(model, max_batch=1, max_queue=3), Client()
    settings = RequestSettings(max_tokens=2, temperature=0)
    for prompt in prompts(4):  # the free slot's request is not counted as waiting
        client.add(engine, prompt, settings)
    with pytest.raises(QueueFull, match="3 requests already wait"):
        client.add(engine, prompts(5)[4], settings)
    engine.step()  # one runs, three wait
    assert engine.stats().waiting == 3
    with pytest.raises(QueueFull):
        client.add(engine, prompts(5)[4], settings)
    drain(engine)
    assert all(client.end(r).reason == "max_tokens" for r in client.events)


def test_prompts_and_settings_are_checked_when_added():
    gpt, gpthf = tiny_model("gpt", seed=3), tiny_model("gpthf", seed=3)
    ignore = lambda event: None  # noqa: E731
    settings = RequestSettings(max_tokens=2)
    with pytest.raises(PromptError, match="the prompt is empty"):
        engine_for(gpt).add([], settings, ignore)
    with pytest.raises(
        PromptError, match="has 30 tokens; this gpt model was trained on 30-token rows"
    ) as err:
        engine_for(gpt, limit=ContextLimit(tokens=30)).add([7] * 30, settings, ignore)
    assert err.value.problem.startswith("has 30 tokens")
    with pytest.raises(PromptError, match="has 3 sentences; this GPTHF was trained with at most 3 per row"):
        engine_for(gpthf, limit=ContextLimit(sentences=3)).add([7, EOS_ID] * 3, settings, ignore)
    from gpthf.errors import ConfigError
    from gpthf.generation import GenerationError

    for bad in ({"max_tokens": 0}, {"max_tokens": 2.5}, {"max_tokens": 3, "max_sentences": 0}):
        with pytest.raises(GenerationError):
            RequestSettings(**bad)
    for bad in (
        {"temperature": float("nan")},
        {"temperature": -1},
        {"top_k": 0},
        {"top_p": 1.5},
        {"top_k": 2.5},
    ):
        with pytest.raises(ConfigError):
            RequestSettings(max_tokens=3, **bad)


def test_finishes_by_max_sentences_context_and_eod(monkeypatch):
    gpthf, gpt = tiny_model("gpthf", seed=3), tiny_model("gpt", seed=3)
    prompt = prompts(6)[5]
    engine, client = engine_for(gpthf, max_sentence_len=4), Client()
    two = client.add(engine, prompt, RequestSettings(max_tokens=40, temperature=0, max_sentences=2))
    drain(engine)
    assert client.end(two).reason == "max_sentences"
    assert client.tokens(two).count(EOS_ID) == 2 and client.tokens(two)[-1] == EOS_ID

    sentences = prompt.count(EOS_ID)
    engine, client = (
        engine_for(gpthf, max_sentence_len=4, limit=ContextLimit(sentences=sentences + 1)),
        Client(),
    )
    full = client.add(engine, prompt, RequestSettings(max_tokens=40, temperature=0))
    drain(engine)
    assert client.end(full).reason == "context" and client.tokens(full)[-1] == EOS_ID

    engine, client = engine_for(gpt, limit=ContextLimit(tokens=len(prompt) + 3)), Client()
    full = client.add(engine, prompt, RequestSettings(max_tokens=40, temperature=0))
    drain(engine)
    assert client.end(full).reason == "context" and len(client.tokens(full)) == 3

    engine, client = engine_for(gpt, max_batch=4), Client()
    decode = engine._runner.decode

    def eod_for_row_zero(*args):  # the model "chooses" <eod> for slot 0 from its second token on
        logits = decode(*args)
        logits[0, EOD_ID] = logits.max() + 10
        return logits

    monkeypatch.setattr(engine._runner, "decode", eod_for_row_zero)
    ended = client.add(engine, prompt, RequestSettings(max_tokens=40, temperature=0))
    other = client.add(engine, prompt, RequestSettings(max_tokens=2, temperature=0))  # ends in the same step
    drain(engine)
    assert client.end(ended).reason == "eod" and client.tokens(ended)[-1] == EOD_ID
    assert len(client.tokens(ended)) == 2 and client.end(other).reason == "max_tokens"
    assert client.tokens(other)[-1] != EOD_ID

    # ignore_eos (a benchmark's fixed work): the same <eod>-choosing row goes on to max_tokens
    engine, client = engine_for(gpt, max_batch=4), Client()
    decode = engine._runner.decode
    monkeypatch.setattr(engine._runner, "decode", eod_for_row_zero)
    onward = client.add(engine, prompt, RequestSettings(max_tokens=6, temperature=0, ignore_eos=True))
    drain(engine)
    assert client.end(onward).reason == "max_tokens" and len(client.tokens(onward)) == 6
    assert client.tokens(onward)[1:].count(EOD_ID) == 5, "it chose <eod> and was not stopped by it"
    with pytest.raises(GenerationError, match="ignore_eos"):
        RequestSettings(max_tokens=3, ignore_eos="yes")


def run_in_thread(engine: Engine) -> tuple[threading.Thread, threading.Event, list]:
    stop, raised = threading.Event(), []

    def target() -> None:
        try:
            engine.run(stop)
        except Exception as exc:  # noqa: BLE001
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, stop, raised


def test_requests_added_from_many_threads_while_the_engine_runs_in_its_own():
    model = tiny_model("gpthf", seed=3)
    engine, client = engine_for(model, max_batch=4, max_queue=64), Client()
    thread, stop, raised = run_in_thread(engine)
    texts = prompts(32)
    alone = [generate(model, [p], as_generation(RequestSettings(max_tokens=5, temperature=0))) for p in texts]

    prompt_of: dict[int, int] = {}

    def adder(part: int) -> None:
        for i in range(part, 32, 4):
            request = client.add(engine, texts[i], RequestSettings(max_tokens=5, temperature=0))
            with client.lock:
                prompt_of[request] = i
            time.sleep(0.001 * (i % 3))

    adders = [threading.Thread(target=adder, args=(part,)) for part in range(4)]
    for a in adders:
        a.start()
    for a in adders:
        a.join(timeout=30)
    assert all(done.wait(timeout=30) for done in client.finished.values()), "every request finished"
    assert len(client.events) == 32
    assert all(client.tokens(r) == alone[prompt_of[r]].tokens[0] for r in client.events)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and raised == []
    assert engine.stats().running == 0 and engine.stats().state_bytes_in_use == 0
    with pytest.raises(EngineStopped, match="was stopped"):
        engine.add(texts[0], RequestSettings(max_tokens=2), lambda event: None)


def test_a_stopped_engine_aborts_what_is_still_in_flight():
    model = tiny_model("gpt", seed=3)
    engine, client = engine_for(model, max_batch=1), Client()
    gate = threading.Event()
    decode = engine._runner.decode
    engine._runner.decode = lambda *args: gate.wait(10) and decode(*args)  # holds the first step
    thread, stop, raised = run_in_thread(engine)
    ids = [client.add(engine, p, RequestSettings(max_tokens=50, temperature=0)) for p in prompts(3)]
    stop.set()
    gate.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and raised == []
    assert [client.end(r).reason for r in ids] == ["abort"] * 3


def test_an_error_in_a_step_finishes_every_request_with_error():
    model = tiny_model("gpthf", seed=3)
    engine, client = engine_for(model, max_batch=2, max_queue=16), Client()
    decode, calls = engine._runner.decode, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the accelerator fell over")
        return decode(*args)

    engine._runner.decode = failing
    ids = [client.add(engine, p, RequestSettings(max_tokens=20, temperature=0)) for p in prompts(5)]
    thread, stop, raised = run_in_thread(engine)
    assert all(client.finished[r].wait(timeout=30) for r in ids), "no request hangs"
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(raised) == 1 and "fell over" in str(raised[0]), "run() raises the error again"
    for r in ids:
        end = client.end(r)
        assert end.reason == "error" and "RuntimeError: the accelerator fell over" in end.error
    assert sum(len(client.tokens(r)) for r in ids) == 2 * 3, "the two running rows had 3 tokens each"
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.state_bytes_in_use) == (0, 0, 0)
    with pytest.raises(EngineStopped, match="failed: RuntimeError: the accelerator fell over"):
        engine.add(prompts(1)[0], RequestSettings(max_tokens=2), lambda event: None)


@pytest.mark.parametrize("kind", ["gpt", "gpthf"])
def test_a_compiled_engine_sized_by_the_context_limit_gives_eagers_tokens(kind, monkeypatch):
    """--compile in a server: the caches are sized by the checkpoint's limits (no call's prompts
    are known ahead), requests join a running batch (which grows), and a request that could outgrow
    the caches is refused when added. Traced as aot_eager (what inductor would get, in seconds)."""
    from gpthf.generation import compiled

    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    model = tiny_model(kind, seed=3)
    limit = ContextLimit(tokens=64, sentences=16)
    texts = prompts(10)
    asked = [RequestSettings(max_tokens=2 + i % 7, temperature=0) for i in range(10)]
    results = []
    for compile in (False, True):
        engine, client = (
            engine_for(model, limit=limit, max_batch=4, compile=compile, max_sentence_len=8),
            Client(),
        )
        ids = [client.add(engine, texts[0], asked[0])]
        engine.step()
        ids += [client.add(engine, p, s) for p, s in zip(texts[1:], asked[1:])]  # the batch grows to 4
        drain(engine)
        results.append([client.tokens(r) for r in ids])
    assert results[0] == results[1] and sum(map(len, results[0])) == sum(s.max_tokens for s in asked)
    if kind == "gpthf":  # a GPT's caches hold its context limit, all a request can reach
        with pytest.raises(GenerationError, match="the compiled step's caches hold 8 .*shorter prompt"):
            engine.add([9] * 40, RequestSettings(max_tokens=60), lambda event: None)  # a 40-token sentence
        # without max_sentence_len, a sentence in progress has no bound
        from gpthf.errors import ConfigError

        with pytest.raises(ConfigError, match="max_sentence_len"):
            engine_for(model, limit=limit, compile=True, max_sentence_len=None)
    torch._dynamo.reset()
