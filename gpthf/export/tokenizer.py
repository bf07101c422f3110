"""The tokenizer of an exported folder, and prompts tokenized as gpthf tokenizes them.

The folder's tokenizer.json is the checkpoint's own, byte for byte (what `load_checkpoint_tokenizer`
reads back); tokenizer_config.json makes it a `PreTrainedTokenizerFast` with our special tokens.
`split_special_tokens` keeps a literal "<eos>" in a text ordinary text, as our tokenizer does: the
special ids come only from the sentence structure.

That structure is what a plain `tokenizer(text)` cannot give. gpthf splits a prompt into sentences
(Punkt with the training's language), encodes each sentence on its own, closes each with `<eos>`
(in chunks of at most `max_sentence_len` tokens), and leaves the last sentence open (no `<eos>`)
when the text does not end with sentence punctuation. `prompt_ids` does exactly that.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from gpthf.data.special_tokens import EOD, EOS, PAD, UNK
from gpthf.data.tokenizer import TOKENIZER_FILE

SPECIAL_TOKENS_MAP = {
    "eos_token": EOD,  # what ends a text (generation stops there); <eos> ends a sentence
    "pad_token": PAD,
    "unk_token": UNK,
    "additional_special_tokens": [EOS],  # dropped by decode(skip_special_tokens=True), as ours drops it
}


def tokenizer_files(checkpoint: Path, context_tokens: int | None) -> dict[str, bytes]:
    """File name -> content of the exported folder's tokenizer files; `context_tokens`: the longest
    input the model takes, where it has a limit in tokens (a GPT's trained context)."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **SPECIAL_TOKENS_MAP,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,  # our prompts start with their first word (tools that add one by default)
        "add_eos_token": False,
        **({"model_max_length": context_tokens} if context_tokens else {}),
    }
    return {
        TOKENIZER_FILE: (checkpoint / TOKENIZER_FILE).read_bytes(),
        "tokenizer_config.json": json.dumps(config, indent=2).encode(),
        "special_tokens_map.json": json.dumps(SPECIAL_TOKENS_MAP, indent=2).encode(),
    }


def prompt_ids(folder: str | Path, text: str) -> list[int]:
    """`text` as gpthf's generator tokenizes a prompt, with the tokenizer and sentence rules of
    `folder` (an exported folder or a gpthf checkpoint): the ids to give Hugging Face's `generate()`
    for the same continuation as `generate.py`. Every folder's tokenizer and splitter are loaded once."""
    return _prompt_encoder(str(Path(folder).expanduser().resolve()))(text)


@functools.lru_cache(maxsize=8)
def _prompt_encoder(folder: str) -> Callable[[str], list[int]]:
    from gpthf.data.splitter import build_splitter
    from gpthf.generation.prompts import encode_prompt
    from gpthf.training.checkpoint import load_checkpoint_tokenizer

    meta = folder_meta(Path(folder))
    tokenizer = load_checkpoint_tokenizer(Path(folder), meta)
    splitter = build_splitter(meta.data["language"])
    return functools.partial(
        encode_prompt, tokenizer=tokenizer, splitter=splitter, max_sentence_len=meta.data["max_sentence_len"]
    )


def folder_meta(folder: Path):
    """The `CheckpointMeta` of an exported folder or of a gpthf checkpoint."""
    from gpthf.export.load import exported_meta
    from gpthf.training.checkpoint import read_meta

    return exported_meta(folder) or read_meta(folder)
