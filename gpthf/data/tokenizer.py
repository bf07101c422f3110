"""Byte-level BPE (`tokenizers`), trained on the training split's sentences.

Each sentence is encoded on its own with a leading space, so a word gets the same tokens at the start
of a sentence as inside one, and a sentence's tokens do not depend on its neighbours: that is what lets
the generator cache a finished sentence. Byte-level means no text is ever `<unk>`. A literal "<eos>" in
a corpus or a prompt is ordinary text (`encode_special_tokens`): the special ids come only from
packing, which is what lets the sentence structure be recovered from the tokens alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gpthf.data.special_tokens import SPECIAL_TOKENS
from gpthf.errors import DataError

TOKENIZER_FILE = "tokenizer.json"


def _check_special_ids(tokenizer: Tokenizer, origin: str) -> None:
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            raise DataError(
                f"tokenizer {origin} maps {token} to {tokenizer.token_to_id(token)}, expected {expected_id}"
            )


def train_tokenizer(sentences: Iterable[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sentences, trainer=trainer)
    _check_special_ids(tokenizer, "just trained")
    tokenizer.encode_special_tokens = True
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, folder: Path) -> Path:
    """Written to a temporary name and renamed, so a killed write never leaves a torn tokenizer.json
    (a dead data build's tokenizer is reused by the next build); disk errors are `OSError`s."""
    path = Path(folder) / TOKENIZER_FILE
    tmp = path.with_name(f".{TOKENIZER_FILE}.tmp")
    tmp.write_text(tokenizer.to_str(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load from a `tokenizer.json` file or a folder holding one (a data cache or a checkpoint)."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(
            f"tokenizer file {path} is missing: {path.parent} is incomplete (copy a checkpoint folder "
            f"whole; delete a damaged data cache folder and it is rebuilt)"
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"tokenizer file {path} is unreadable ({err}); rebuild it") from None
    _check_special_ids(tokenizer, str(path))
    tokenizer.encode_special_tokens = True
    return tokenizer


def encode_sentences(tokenizer: Tokenizer, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids of each sentence, without the closing <eos> (packing adds it)."""
    return [enc.ids for enc in tokenizer.encode_batch(list(sentences), add_special_tokens=False)]


def decode_sentence(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Inverse of encoding one sentence: special tokens dropped, the leading space removed."""
    return tokenizer.decode([i for i in ids if i >= len(SPECIAL_TOKENS)], skip_special_tokens=False).strip()
