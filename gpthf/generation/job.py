"""A generate.py job's parts around `generate`: its prompts encoded as training encoded text, one
streamed prompt printed as its tokens come, and results handed out in input order as rows finish."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gpthf.batch_results import InputOrder
from gpthf.data.splitter import build_splitter
from gpthf.generation.prompts import decode_continuation, encode_prompt

if TYPE_CHECKING:
    from gpthf.batch_results import BatchResults


def encode_prompts(prompts: Sequence[str], tokenizer: Any, data: dict) -> list[array]:
    """Token ids of each prompt, by the checkpoint's data config `data` (its language and sentence
    length). Held as 4-byte arrays, not lists of Python ints (~40 bytes a token, measured): a job's
    memory still grows with its prompts, 8x slower."""
    splitter = build_splitter(data["language"])
    return [array("i", encode_prompt(p, tokenizer, splitter, data["max_sentence_len"])) for p in prompts]


class StreamPrinter:
    """`generate`'s on_token for the one prompt of a streamed job: its continuation printed as the
    tokens come, a multi-byte character once its last byte has come."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, row: int, token: int) -> None:
        self.tokens.append(token)
        text = decode_continuation(self.tokenizer, self.tokens)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(self.printed) :])
            sys.stdout.flush()
            self.printed = text


class InputOrderOutput:
    """`generate`'s on_finish for a job: rows finish in any order, and each result goes out (to
    `results`, else printed unless its text was `streamed` already) once every earlier prompt's has;
    `new_tokens` counts what was generated, for the job's speed."""

    def __init__(
        self,
        prompts: Sequence[str],
        start: int,
        tokenizer: Any,
        results: BatchResults | None,
        progress: Any,
        streamed: bool,
    ):
        self.prompts, self.start, self.tokenizer = prompts, start, tokenizer
        self.results, self.progress, self.streamed = results, progress, streamed
        self.order = InputOrder(start)
        self.new_tokens = 0

    def __call__(self, row: int, row_tokens: list[int], row_reason: str) -> None:
        self.new_tokens += len(row_tokens)
        self.progress.update()
        for index, (tokens, reason) in self.order.add(self.start + row, (row_tokens, row_reason)):
            completion = decode_continuation(self.tokenizer, tokens)
            if self.results is not None:
                self.results.write(index, self.prompts[index], completion, tokens, reason)
            elif not self.streamed:
                prefix = f"[{index}] " if len(self.prompts) > 1 else ""
                print(f"{prefix}{self.prompts[index]}{completion}", flush=True)


def speed_line(prompts: int, start: int, new_tokens: int, elapsed: float, slots: int, compiled: bool) -> str:
    """A batch job's last line: how much it generated, how fast."""
    resumed = f" (resumed after {start:,})" if start else ""
    return (
        f"{prompts:,} prompts{resumed}, {new_tokens:,} new tokens in {elapsed:.1f} s: "
        f"{new_tokens / max(elapsed, 1e-9):.1f} tokens/s with {slots} slot{'s' if slots != 1 else ''}"
        + (" (compilation included)" if compiled else "")
    )
