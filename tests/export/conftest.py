"""Tiny checkpoints to export: briefly trained models (their greedy continuations end sentences, so
the sentence machinery is exercised), a word-level tokenizer of their vocabulary, and Hugging Face
kept offline and out of the home folder."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from gpthf.data.special_tokens import EOD_ID, SPECIAL_TOKENS
from gpthf.data.tokenizer import save_tokenizer
from gpthf.generation import GenerationSettings, SamplingSettings, generate
from gpthf.generation.strategies import pad_rows
from gpthf.training.checkpoint import CheckpointMeta, save_checkpoint
from tests.models.helpers import VOCAB, synthetic_rows, trained_tiny_model

MAX_SENTENCE_LEN = 6  # below the synthetic sentences' longest (8): some are closed by force
DATA = {"language": "english", "seq_len": 128, "max_sentence_len": MAX_SENTENCE_LEN}
TRAIN_STEPS = 60  # enough for greedy decoding to end sentences on its own
NEW_TOKENS = 64


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """One Hugging Face home for the session: the dynamic modules `trust_remote_code` writes are one
    package (`transformers_modules`), imported from the first folder it is found in."""
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(autouse=True)
def _hugging_face_offline_in_tmp(hf_home, monkeypatch):
    """`trust_remote_code` copies a folder's modules into Hugging Face's cache: here under a
    temporary folder, never the home folder (transformers reads the place once, at import, hence the
    attribute); and nothing is looked up online."""
    transformers = pytest.importorskip("transformers")
    import huggingface_hub.constants
    from transformers import dynamic_module_utils

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_MODULES_CACHE", str(hf_home / "modules"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(hf_home / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cache folder is put on it
    transformers.logging.set_verbosity_error()


def word_tokenizer(folder: Path) -> Path:
    """A tokenizer.json of the tiny models' vocabulary: our special tokens, then words w4 ... w96."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab |= {f"w{i}": i for i in range(len(SPECIAL_TOKENS), VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[-1]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    return save_tokenizer(tokenizer, folder)


def save_tiny(folder: Path, model: torch.nn.Module, tokenizer: Path, data: dict = DATA) -> Path:
    meta = CheckpointMeta(
        arch=asdict(model.arch),
        vocab_size=model.vocab_size,
        data=data,
        step=TRAIN_STEPS,
        context={"tokens": 128},
    )
    return save_checkpoint(folder, model, meta, tokenizer)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """kind -> (model, its checkpoint folder), each trained once (on first use) for every test here."""
    root = tmp_path_factory.mktemp("checkpoints")
    tokenizer = word_tokenizer(root / "tokenizer")
    made: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(kind: str):
        if kind not in made:
            model = trained_tiny_model(kind, steps=TRAIN_STEPS)
            made[kind] = model, save_tiny(root / kind, model, tokenizer)
        return made[kind]

    return get


def held_out_prompts(count: int = 8) -> list[list[int]]:
    """Synthetic text the models never trained on (other seeds), cut at different lengths, so some
    prompts end inside a sentence and a batch of them is padded."""
    rows, _ = synthetic_rows(count, 24, seed=10_000)
    return [row[: 9 + 2 * i].tolist() for i, row in enumerate(rows)]


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask as a Hugging Face tokenizer pads a batch for generation."""
    tokens, lengths = pad_rows([p[::-1] for p in prompts])
    mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return tokens.flip(1), mask.flip(1).long()


def our_greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    """Our generator's greedy continuations, as generate.py makes them from these checkpoints."""
    settings = GenerationSettings(
        max_new_tokens=NEW_TOKENS, sampling=SamplingSettings(temperature=0), max_sentence_len=MAX_SENTENCE_LEN
    )
    return generate(model, prompts, settings).tokens


def hf_greedy(hf_model, prompts: list[list[int]], **kwargs) -> list[list[int]]:
    """Hugging Face's greedy continuations of the prompts as one left-padded batch, each row cut
    after its <eod> (generate() pads a finished row to the batch's end; ours stops it)."""
    input_ids, mask = left_padded(prompts)
    out = hf_model.generate(
        input_ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, **kwargs
    )
    rows = out[:, input_ids.shape[1] :].tolist()
    return [row[: row.index(EOD_ID) + 1] if EOD_ID in row else row for row in rows]
