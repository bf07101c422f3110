"""Timing decode, prefill and training steps of our models (and of Hugging Face's Llama as the peer).

Decoding is teacher-forced on real corpus text: the tokens fed are the corpus continuation, so
GPTHF's sentence structure (and hence its cache) is what real text gives, whatever random weights
would have sampled. Each figure is measured after a warm-up, on the threads the caller set, on the
device the model lives on (prompts, lengths and caches are put there too), timed and its memory read
by gpthf.measure.timing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from gpthf.attention.sentences import SentenceBounds
from gpthf.data.special_tokens import PAD_ID
from gpthf.generation.generate import GenerationSettings, horizon
from gpthf.generation.packed import packed_linears
from gpthf.generation.rows import take_rows
from gpthf.generation.strategies import get_strategy
from gpthf.measure.timing import Clock, peak_device_mb, peak_rss_mb, reset_peak_memory
from gpthf.models import LanguageModel, next_token_loss


@dataclass
class DecodeTiming:
    model: str  # gpthf | gpt | hf-llama
    strategy: str  # cached | full | generate
    context: int  # tokens before the first generated one
    batch: int
    new_tokens: int
    prefill_s: float
    ms_per_token: float  # per decode step (all rows of the batch)
    tokens_per_s: float  # generated tokens per second, all rows
    state_bytes: int
    peak_rss_mb: float  # the process's host memory, whatever the device
    peak_cuda_mb: float | None = None  # most tensor MiB on the GPU in this timing, weights too (CUDA only)

    def as_dict(self) -> dict:
        row = asdict(self)
        if row["peak_cuda_mb"] is None:  # a CPU row keeps the fields it always had
            del row["peak_cuda_mb"]
        return row


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are: its inputs and state are made there."""
    return next(model.parameters()).device


def corpus_stream(rows, length: int) -> list[int]:
    """`length` tokens of real text: packed rows joined with their padding dropped (repeated if short)."""
    tokens = [t for t in rows.reshape(-1).tolist() if t != PAD_ID]
    while len(tokens) < length:
        tokens = tokens + tokens
    return tokens[:length]


ROW_OFFSET = 97  # tokens between the starts of consecutive rows of `batch_of_contexts`


def decode_stream(split, seq_len: int, context: int, new_tokens: int, batch: int) -> list[int]:
    """The real text `batch_of_contexts(stream, context, new_tokens, batch)` needs, from the first rows
    of a prepared split: only those rows are read (a packed row holds at least half its length of
    text), so the cost does not grow with the corpus."""
    length = context + new_tokens + ROW_OFFSET * batch + 1
    ids, _ = split.rows(np.arange(min(len(split), length // (seq_len // 2) + 1)))
    return corpus_stream(ids, length)


def batch_of_contexts(stream: list[int], context: int, new_tokens: int, batch: int) -> torch.Tensor:
    """(batch, context + new_tokens): row b starts `b * ROW_OFFSET` tokens into the stream, so rows differ."""
    need = context + new_tokens
    rows = [stream[(b * ROW_OFFSET) % max(len(stream) - need, 1) :][:need] for b in range(batch)]
    return torch.tensor(rows, dtype=torch.long)


@torch.inference_mode()
def time_decode(
    model: LanguageModel,
    name: str,
    strategy: str,
    tokens: torch.Tensor,
    context: int,
    warmup: int = 2,
    tile_to: int | None = None,
    compile: bool = False,
    pack: bool = True,
) -> DecodeTiming:
    """Prefill `context` tokens per row, then decode the remaining columns of `tokens` one by one.

    `tile_to=N`: prefill the one row of `tokens` once and copy its state into N rows, so a batch of
    thousands costs one prefill (the step's cost does not depend on what the rows hold).
    `compile=True`: the cached step compiled over static caches (compile time is in the warm-up).
    `pack=True`: weights packed for the decode batch on CPU, as `generate` does (packing is untimed).
    On CUDA the prefill is run once untimed first (the first call of a shape loads its kernels), and
    `tokens` may be on any device: they are copied to the model's.
    """
    with packed_linears(model, tile_to or tokens.shape[0], enabled=pack):
        return _time_decode(model, name, strategy, tokens, context, warmup, tile_to, compile)


CUDA_GRAPH_WARMUP_STEPS = 3  # compile + eager run, graph recording, first replay: none of them timed


def _time_decode(model, name, strategy, tokens, context, warmup, tile_to, compile) -> DecodeTiming:
    device = model_device(model)
    batch, total = tokens.shape
    new_tokens = total - context
    reach = horizon(tokens[:, :context].tolist(), GenerationSettings(max_new_tokens=new_tokens))
    runner = get_strategy(model, strategy, compile_for=reach if compile else None)
    tokens = tokens.to(device)
    lengths = torch.full((batch,), context, dtype=torch.long, device=device)
    if device.type == "cuda":
        runner.prefill(model, tokens[:, :context], lengths)

    reset_peak_memory(device)
    clock = Clock(device)
    clock.mark()
    logits, state = runner.prefill(model, tokens[:, :context], lengths)
    clock.mark()
    if tile_to is not None:
        state = take_rows(state, torch.zeros(tile_to, dtype=torch.long, device=device))
        tokens, batch = tokens.expand(tile_to, -1), tile_to
    active = torch.ones(batch, dtype=torch.bool, device=device)
    if compile and device.type == "cuda":  # CUDA graph trees: a warm-up run, a recording, then replays
        warmup = max(warmup, CUDA_GRAPH_WARMUP_STEPS)
    for step in range(min(warmup, new_tokens - 1)):  # warm-up steps, excluded from the timing
        logits = runner.decode(model, state, tokens[:, context + step], active)
    timed = range(min(warmup, new_tokens - 1), new_tokens)
    clock.mark()
    for step in timed:
        logits = runner.decode(model, state, tokens[:, context + step], active)
        logits.argmax(-1)  # what greedy sampling would do with them
    clock.mark()
    _, prefill_s, warm, end = clock.seconds()
    elapsed = end - warm
    steps = max(len(timed), 1)
    return DecodeTiming(
        name,
        "compiled" if compile else strategy,
        context,
        batch,
        steps,
        prefill_s,
        1000 * elapsed / steps,
        batch * steps / elapsed,
        state.nbytes(),
        peak_rss_mb(),
        peak_device_mb(device),
    )


def interleaved_timings(jobs: Sequence[Callable[[], DecodeTiming]], repeats: int) -> list[DecodeTiming]:
    """Each timing job run once per round for `repeats` rounds, so a slow spell of a shared machine
    hits all of them alike; per job, the run with the median tokens/s (its ms/step with it)."""
    runs: list[list[DecodeTiming]] = [[] for _ in jobs]
    for _ in range(repeats):
        for job, timings in zip(jobs, runs):
            timings.append(job())
    return [sorted(timings, key=lambda t: t.tokens_per_s)[(len(timings) - 1) // 2] for timings in runs]


def state_bytes_per_row(model: LanguageModel, tokens: torch.Tensor) -> int:
    """Generation state of one row after the whole of `tokens` (1, T): what each extra row costs."""
    device = model_device(model)
    with torch.inference_mode():
        _, state = get_strategy(model, "cached").prefill(
            model, tokens.to(device), torch.tensor([tokens.shape[1]], device=device)
        )
    return state.nbytes()


def hf_llama_twin(model: LanguageModel):
    """Hugging Face's LlamaForCausalLM with our GPT's width, depth, heads, MLP and vocabulary (the
    export's mapping, gpthf.export.llama); random weights."""
    from dataclasses import asdict

    from transformers import LlamaConfig, LlamaForCausalLM

    from gpthf.export.llama import llama_fields

    fields = llama_fields(asdict(model.arch), model.vocab_size, context=1 << 16)
    return LlamaForCausalLM(LlamaConfig(**fields, attn_implementation="sdpa")).eval()


@torch.inference_mode()
def time_hf_generate(hf_model, tokens: torch.Tensor, context: int) -> DecodeTiming:
    """`generate` with its KV cache, timed per token by a streamer: one run gives prefill and decode.
    On CUDA the warm-up prefills the whole context (the first call of a shape loads its kernels)."""
    from transformers.generation.streamers import BaseStreamer

    device = model_device(hf_model)

    class TokenClock(BaseStreamer):
        def __init__(self) -> None:
            self.clock = Clock(device)

        def put(self, value) -> None:  # called with the prompt, then after every new token
            self.clock.mark()

        def end(self) -> None:
            pass

    batch, total = tokens.shape
    new_tokens = total - context
    tokens = tokens.to(device)
    kwargs = {"do_sample": False, "use_cache": True, "pad_token_id": PAD_ID}
    warm = context if device.type == "cuda" else min(context, 16)
    hf_model.generate(tokens[:, :warm], max_new_tokens=3, min_new_tokens=3, **kwargs)  # warm-up
    reset_peak_memory(device)
    streamer = TokenClock()
    streamer.clock.mark()
    hf_model.generate(
        tokens[:, :context],
        max_new_tokens=new_tokens + 1,
        min_new_tokens=new_tokens + 1,
        streamer=streamer,
        **kwargs,
    )
    times = streamer.clock.seconds()  # [start, prompt, token 1, ..., token new_tokens + 1]
    prefill_s = times[2] - times[0]
    per_step = (times[-1] - times[2]) / new_tokens
    layers, heads = hf_model.config.num_hidden_layers, hf_model.config.num_attention_heads
    head_dim = hf_model.config.hidden_size // heads
    element = next(hf_model.parameters()).element_size()
    state = 2 * layers * batch * heads * (context + new_tokens) * head_dim * element  # their KV cache
    return DecodeTiming(
        "hf-llama",
        "generate",
        context,
        batch,
        new_tokens,
        prefill_s,
        1000 * per_step,
        batch / per_step,
        state,
        peak_rss_mb(),
        peak_device_mb(device),
    )


def time_training(
    model: LanguageModel, rows: torch.Tensor, sentence_ids: torch.Tensor, steps: int = 3
) -> float:
    """Training tokens/s (forward, backward, AdamW step) on `rows`, after one warm-up step, on the
    model's device (`rows` and `sentence_ids` are copied there)."""
    device = model_device(model)
    rows, sentence_ids = rows.to(device), sentence_ids.to(device)
    bounds = SentenceBounds.of(sentence_ids)  # read once, untimed, as the trainer's loader does on the host
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        next_token_loss(model(rows, sentence_ids, bounds=bounds), rows).backward()
        optimizer.step()

    step()
    clock = Clock(device)
    clock.mark()
    for _ in range(steps):
        step()
    clock.mark()
    elapsed = clock.seconds()[-1]
    model.eval()
    return rows.numel() * steps / elapsed
