"""Which split each document belongs to: a seeded hash of its id, decided while streaming.

Three regimes, chosen from the first `EXACT_SPLIT_MAX_DOCS` document ids of the stream:
- at least 3 and at most `EXACT_SPLIT_MAX_DOCS` documents: documents are ranked by the hash and the
  first ones held out, so each held-out split gets exactly `max(1, round(n × fraction))` documents
  (a small corpus always gets a validation document);
- more documents: each document goes to a split by where its hash falls in [0, 1), independently of
  the others, so a corpus of any size is split without ever being counted (shares ≈ the fractions);
- fewer than 3 documents (one long story): the sentence stream is cut into contiguous pieces, each
  held-out piece at least one sentence long when there are enough sentences to spare.
Adding documents to a large corpus never moves an existing document to another split.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gpthf.data.sources import Document, SkippedRecords, iter_documents, no_usable_text

SPLITS = ("train", "validation", "test")
EXACT_SPLIT_MAX_DOCS = 10_000


def doc_hash(doc_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()


def _hash_fraction(doc_id: str, seed: int) -> float:
    return int(doc_hash(doc_id, seed)[:13], 16) / 16**13


def _fractions(data_cfg: Any) -> dict[str, float]:
    return {"validation": data_cfg.validation_fraction, "test": data_cfg.test_fraction}


def _ranked_splits(doc_ids: list[str], data_cfg: Any) -> dict[str, str]:
    order = sorted(range(len(doc_ids)), key=lambda i: doc_hash(doc_ids[i], data_cfg.split_seed))
    counts = {s: max(1, round(len(doc_ids) * f)) if f > 0 else 0 for s, f in _fractions(data_cfg).items()}
    n_val, n_test = counts["validation"], counts["test"]
    split_of = {}
    for rank, i in enumerate(order):
        split_of[doc_ids[i]] = "validation" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return split_of


def _contiguous_pieces(docs: list[Document], data_cfg: Any) -> list[tuple[str, Document]]:
    from gpthf.data.splitter import build_splitter

    splitter = build_splitter(data_cfg.language, training_text="\n\n".join(d.text for d in docs))
    stream = [s for d in docs for s in splitter.split(d.text)]
    fractions = _fractions(data_cfg)
    enough = len(stream) >= 3
    n_val, n_test = (
        max(int(enough and fractions[s] > 0), int(len(stream) * fractions[s])) for s in ("validation", "test")
    )
    n_train = len(stream) - n_val - n_test
    pieces = {
        "train": stream[:n_train],
        "validation": stream[n_train : n_train + n_val],
        "test": stream[n_train + n_val :],
    }
    name = "+".join(d.doc_id for d in docs)
    return [(s, Document(f"{name}[{s}]", "", tuple(pieces[s]))) for s in SPLITS if pieces[s]]


@dataclass
class SplitPlan:
    """The corpus as a stream of (split, document), re-readable as often as a build needs."""

    data_cfg: Any
    regime: str  # "ranked" | "hashed" | "contiguous"
    split_of: dict[str, str] | None = None  # ranked: doc id → split
    pieces: list[tuple[str, Document]] | None = None  # contiguous: the pre-split pieces

    def assign(self, doc: Document) -> str:
        if self.split_of is not None:
            return self.split_of[doc.doc_id]
        x = _hash_fraction(doc.doc_id, self.data_cfg.split_seed)
        f = _fractions(self.data_cfg)
        return "validation" if x < f["validation"] else "test" if x < f["validation"] + f["test"] else "train"

    def stream(self, skipped: SkippedRecords | None = None) -> Iterator[tuple[str, Document]]:
        if self.pieces is not None:
            yield from self.pieces
            return
        for doc in iter_documents(self.data_cfg, skipped):
            yield self.assign(doc), doc


def plan_splits(data_cfg: Any) -> SplitPlan:
    """Read the ids at the head of the stream (at most EXACT_SPLIT_MAX_DOCS + 1) to pick the regime;
    only the first two documents' texts are kept, for the contiguous regime."""
    skipped = SkippedRecords()
    ids, first_docs = [], []
    for doc in itertools.islice(iter_documents(data_cfg, skipped), EXACT_SPLIT_MAX_DOCS + 1):
        ids.append(doc.doc_id)
        if len(first_docs) < 3:
            first_docs.append(doc)
    if not ids:
        raise no_usable_text(data_cfg, skipped)
    if len(ids) < 3:
        return SplitPlan(data_cfg, "contiguous", pieces=_contiguous_pieces(first_docs, data_cfg))
    if len(ids) <= EXACT_SPLIT_MAX_DOCS:
        return SplitPlan(data_cfg, "ranked", split_of=_ranked_splits(ids, data_cfg))
    return SplitPlan(data_cfg, "hashed")
