"""The prompts of a serving benchmark: windows of held-out text cut to about a given number of
tokens, or the lines of a file. Distinct windows at seeded random places, so every server sees the
same prompts and none can answer one from its prefix cache of another (no two start at the same
place while the text has enough places)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpthf.errors import DataError

HELD_OUT_MAX_CHARS = 4_000_000  # enough text for thousands of distinct windows, read in seconds


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int  # by the tokenizer that cut it (words without one); used when the server gives no usage


def held_out_text(data_cfg: Any, max_chars: int = HELD_OUT_MAX_CHARS) -> str:
    """The test split of a data config's corpus, as the evaluations read it, up to `max_chars`."""
    from gpthf.data.dataset import split_documents

    documents, size = [], 0
    for sentences in split_documents(data_cfg, "test"):
        documents.append(" ".join(sentences))
        size += len(documents[-1])
        if size >= max_chars:
            break
    return "\n\n".join(documents)[:max_chars]


def cut_prompts(text: str, n: int, length: int, seed: int, tokenizer=None) -> list[Prompt]:
    """`n` windows of `length` tokens (words without a tokenizer) of `text`, at seeded random places."""
    units = tokenizer.encode(text).offsets if tokenizer is not None else list(_word_spans(text))
    if len(units) < length:
        raise DataError(
            f"the held-out text has {len(units)} {'tokens' if tokenizer is not None else 'words'}, "
            f"fewer than --prompt-tokens {length}; give a smaller --prompt-tokens or a --prompts-file"
        )
    rng, places = random.Random(seed), range(len(units) - length + 1)
    # distinct starts while the text has enough of them, then repeats
    starts = rng.sample(places, n) if n <= len(places) else [rng.choice(places) for _ in range(n)]
    return [Prompt(text[units[i][0] : units[i + length - 1][1]].strip(), length) for i in starts]


def _word_spans(text: str) -> Iterator[tuple[int, int]]:
    end = 0
    for word in text.split():
        start = text.index(word, end)
        end = start + len(word)
        yield start, end


def file_prompts(path: Path, n: int, tokenizer=None) -> list[Prompt]:
    """One prompt per non-empty line of `path`, repeated in order up to `n`."""
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read --prompts-file {path} ({err})") from None
    if not lines:
        raise DataError(f"--prompts-file {path} holds no prompts; write one per line")
    count = (lambda s: len(tokenizer.encode(s).ids)) if tokenizer is not None else (lambda s: len(s.split()))
    return [Prompt(lines[i % len(lines)], count(lines[i % len(lines)])) for i in range(n)]
