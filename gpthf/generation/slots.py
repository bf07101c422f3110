"""The batch's slots as the engine (gpthf.generation.engine) drives them: per-slot counters and
settings on the device (`SlotRows`), and requests prefilled ahead of a free slot (`Prefilled`).

`SlotRows.next_tokens` is the device half of a step: each running row's token (its own sampling,
gpthf.generation.sampling), a forced <eos> where a sentence reached max_sentence_len, the counters
moved on and which stop (if any) each row met; nothing in it reads the device back, so a GPU step
runs without the host waiting until the engine reads the step's result once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID
from gpthf.generation.limits import ContextLimit
from gpthf.generation.requests import Request
from gpthf.generation.rows import row_range, take_rows
from gpthf.generation.sampling import RowSampling, SamplingSettings, sample
from gpthf.generation.state_size import open_sentence_counters
from gpthf.generation.strategies import closes_sentence

NO_LIMIT = 2**62  # a row's max_sentences when it has none


@dataclass
class Prefilled:
    """Requests prefilled ahead of their slots, in arrival order: rows `taken:` are still free."""

    requests: list[Request]
    tokens: torch.Tensor  # (N, T) right-padded
    lengths: torch.Tensor  # (N,)
    logits: torch.Tensor | None  # (N, V)
    state: object
    taken: int = 0

    @classmethod
    def none(cls) -> Prefilled:
        return cls([], torch.zeros(0, 1), torch.zeros(0), None, None)

    def __len__(self) -> int:
        return len(self.requests) - self.taken

    def take(self, count: int) -> Prefilled:
        """The next `count` waiting requests (fewer if fewer wait), their rows as views: `put_rows`
        copies them into the batch once."""
        start = self.taken
        self.taken = min(start + count, len(self.requests))
        return Prefilled(
            self.requests[start : self.taken],
            self.tokens[start : self.taken],
            self.lengths[start : self.taken],
            self.logits[start : self.taken],
            row_range(self.state, start, self.taken),
        )

    def select(self, keep: list[int]) -> Prefilled:
        """Rows `keep` of these (copies): those still wanted."""
        index = torch.tensor(keep, dtype=torch.long, device=self.tokens.device)  # empty: all aborted
        return Prefilled(
            [self.requests[i] for i in keep],
            self.tokens[index],
            self.lengths[index],
            self.logits[index],
            take_rows(self.state, index),
        )


@dataclass
class SlotRows:
    """Per slot, on the device: where its request stands and what stops it and how it samples."""

    sentence_len: torch.Tensor  # (B,) long: tokens of the sentence in progress
    sentences: torch.Tensor  # finished sentences, prompt included
    new_sentences: torch.Tensor
    new_tokens: torch.Tensor
    context_tokens: torch.Tensor
    max_tokens: torch.Tensor
    max_sentences: torch.Tensor
    active: torch.Tensor  # (B,) bool
    temperature: torch.Tensor  # (B,) float32
    top_k: torch.Tensor  # (B,) long
    top_p: torch.Tensor  # (B,) float32
    ignore_eos: torch.Tensor  # (B,) bool: <eod> does not stop the row

    @classmethod
    def empty(cls, width: int, device: torch.device) -> SlotRows:
        inactive = RowSampling.of([SamplingSettings(temperature=0)] * width, device)
        longs = {f.name: torch.zeros(width, dtype=torch.long, device=device) for f in fields(cls)}
        longs.update(
            active=torch.zeros(width, dtype=torch.bool, device=device),
            ignore_eos=torch.zeros(width, dtype=torch.bool, device=device),
            temperature=inactive.temperature,
            top_k=inactive.top_k,
            top_p=inactive.top_p,
        )
        return cls(**longs)

    def select(self, index: torch.Tensor) -> SlotRows:
        return SlotRows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def extended(self, more: int) -> SlotRows:
        fresh = SlotRows.empty(more, self.active.device)
        return SlotRows(
            **{f.name: torch.cat([getattr(self, f.name), getattr(fresh, f.name)]) for f in fields(self)}
        )

    def start(self, index: torch.Tensor, rows: Prefilled) -> None:
        """Slots `index` begin the requests of `rows`, just prefilled."""
        device = self.active.device
        self.sentence_len[index], self.sentences[index] = open_sentence_counters(rows.tokens, rows.lengths)
        self.new_sentences[index], self.new_tokens[index] = 0, 0
        self.context_tokens[index] = rows.lengths.to(device)
        settings = [r.settings for r in rows.requests]
        sampling = RowSampling.of([s.sampling for s in settings])  # made on the host, sent in two copies
        limits = [
            [s.max_tokens for s in settings],
            [s.max_sentences or NO_LIMIT for s in settings],
            [int(s.ignore_eos) for s in settings],
        ]
        longs = torch.cat([torch.tensor(limits), sampling.top_k[None]]).to(device)
        floats = torch.stack([sampling.temperature, sampling.top_p]).to(device)
        self.max_tokens[index], self.max_sentences[index], ignore_eos, self.top_k[index] = longs
        self.ignore_eos[index] = ignore_eos.bool()
        self.temperature[index], self.top_p[index] = floats
        self.active[index] = True

    def next_tokens(
        self,
        logits: torch.Tensor,
        flags: tuple[bool, int, bool],
        uniforms: torch.Tensor | None,
        max_sentence_len: int | None,
        limit: ContextLimit,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every active row's next token from its logits (B, V) (`flags`: RowSampling.host_flags of
        the running rows; `uniforms`: their draws when some row samples), the counters moved on,
        rows that stop made inactive. Returns the tokens (<pad> where inactive) and, per row, 0 or
        1 + the index in FINISH_REASONS of the stop it met."""
        settings = RowSampling(self.temperature, self.top_k, self.top_p, *flags)
        next_token = sample(logits, settings, uniforms)
        if max_sentence_len is not None:
            next_token = torch.where(self.sentence_len >= max_sentence_len - 1, EOS_ID, next_token)
        active = self.active
        next_token = torch.where(active, next_token, PAD_ID)

        closing = closes_sentence(next_token) & active
        self.sentence_len = torch.where(closing, 0, self.sentence_len + 1)
        self.sentences += closing.long()
        self.new_sentences += closing.long()
        self.new_tokens += active.long()
        self.context_tokens += active.long()
        never = torch.zeros_like(active)
        stops = [  # as FINISH_REASONS names them
            (next_token == EOD_ID) & ~self.ignore_eos,
            self.new_sentences >= self.max_sentences,
            (self.sentences >= limit.sentences if limit.sentences else never)
            | (self.context_tokens >= limit.tokens if limit.tokens else never),
            self.new_tokens >= self.max_tokens,
        ]
        stopped_by = first_stop(stops, active)
        self.active = active & (stopped_by == 0)
        return next_token, stopped_by


def first_stop(hits: list[torch.Tensor], active: torch.Tensor) -> torch.Tensor:
    """(B,) long: for each active row, 1 + the index of the first of `hits` (each (B,) bool) it
    meets, or 0 where it meets none (and for inactive rows)."""
    first = torch.zeros(active.shape, dtype=torch.long, device=active.device)
    for number in range(len(hits), 0, -1):  # the earliest reason written last wins
        first = torch.where(hits[number - 1] & active, number, first)
    return first
