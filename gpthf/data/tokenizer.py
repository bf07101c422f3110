"""Byte-level BPE (`tokenizers`), trained on the training split's sentences.

Each sentence is encoded on its own with a leading space, so a word gets the same tokens at the start
of a sentence as inside one, and a sentence's tokens do not depend on its neighbours: that is what lets
the generator cache a finished sentence. Byte-level means no text is ever `<unk>`. A literal "<eos>" in
a corpus or a prompt is ordinary text (`encode_special_tokens`): the special ids come only from
packing, which is what lets the sentence structure be recovered from the tokens alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gpthf.atomic import atomic_write
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
    """Written whole or not at all, so a killed write never leaves a torn tokenizer.json (a dead data
    build's tokenizer is reused by the next build); a full disk raises `WriteFailed`."""
    return atomic_write(Path(folder) / TOKENIZER_FILE, tokenizer.to_str())


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


def _byte_chars() -> dict[int, str]:
    """Byte-level BPE's alphabet: each byte as the printable character that stands for it (printable
    Latin-1 bytes as themselves, the others moved past U+0100 in order)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


_BYTE_CHARS = _byte_chars()
# The byte-level pre-tokenizer's word pattern, restricted to printable ASCII (where \p{L} is [A-Za-z],
# \p{N} is [0-9] and \s is the space): on such text it splits exactly as `tokenizers` does.
_ASCII_WORDS = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


class SentenceEncoder:
    """`encode_sentences` with a word cache, four times faster on the bulk of a corpus.

    `tokenizers` spends most of its time per sentence outside BPE itself. For printable-ASCII
    sentences this encoder splits words with the byte-level pattern in Python and looks each word up
    in a cache filled by the tokenizer's own BPE model, so the ids are the tokenizer's; other sentences
    (and tokenizers of another kind) go through `encode_batch` unchanged. Keep one per process."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        pre, model = tokenizer.pre_tokenizer, tokenizer.model
        self.fast = (
            tokenizer.normalizer is None
            and isinstance(pre, pre_tokenizers.ByteLevel)
            and pre.add_prefix_space
            and pre.use_regex
            and isinstance(model, models.BPE)
            and model.dropout is None
        )
        self.words: dict[str, list[int]] = {}

    def _word_ids(self, word: str) -> list[int]:
        ids = self.words.get(word)
        if ids is None:
            chars = "".join(_BYTE_CHARS[b] for b in word.encode("ascii"))
            ids = self.words[word] = [t.id for t in self.tokenizer.model.tokenize(chars)]
        return ids

    def __call__(self, sentences: Sequence[str]) -> list[list[int]]:
        encoded: list[list[int] | None] = [None] * len(sentences)
        slow = []
        for i, sentence in enumerate(sentences):
            if self.fast and sentence.isascii() and sentence.isprintable():
                text = (
                    sentence if sentence.startswith(" ") or not sentence else " " + sentence
                )  # prefix space
                encoded[i] = [t for w in _ASCII_WORDS.findall(text) for t in self._word_ids(w)]
            else:
                slow.append(i)
        if slow:
            batch = self.tokenizer.encode_batch([sentences[i] for i in slow], add_special_tokens=False)
            for i, enc in zip(slow, batch):
                encoded[i] = enc.ids
        return encoded


def encode_sentences(tokenizer: Tokenizer, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids of each sentence, without the closing <eos> (packing adds it)."""
    return SentenceEncoder(tokenizer)(sentences)


def decode_sentence(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Inverse of encoding one sentence: special tokens dropped, the leading space removed."""
    return tokenizer.decode([i for i in ids if i >= len(SPECIAL_TOKENS)], skip_special_tokens=False).strip()
