"""Tiny random models and sentence-structured batches for model tests."""

from __future__ import annotations

import torch

from gpthf.config import ArchConfig
from gpthf.data.special_tokens import EOS_ID, SPECIAL_TOKENS
from gpthf.models import MODELS, LanguageModel

VOCAB = 97
# What each model kind needs besides the shared shape (d_model 32, 4 heads, SwiGLU 64).
KIND_FIELDS = {
    "gpthf": {"n_enc": 2, "n_body": 2},
    "gpt": {"n_layers": 4},
    "linear": {"n_layers": 4},
    "t2r": {"n_layers": 4, "feature_map": "learned", "feature_dim": 16},
    "lstm": {"n_layers": 2, "lstm_hidden": 48},
    "block_recurrent": {"n_layers": 3, "recurrent_layer": 1, "block_len": 8, "n_states": 4},
}


def tiny_arch(model: str, **overrides) -> ArchConfig:
    return ArchConfig(
        **{"model": model, "d_model": 32, "n_heads": 4, "mlp_hidden": 64, **KIND_FIELDS[model], **overrides}
    )


def tiny_model(model: str, seed: int = 0, **overrides) -> LanguageModel:
    torch.manual_seed(seed)
    return MODELS[model](tiny_arch(model, **overrides), VOCAB).eval()


def random_batch(
    batch: int, length: int, seed: int = 0, max_sentence_len: int = 7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of random sentences, each closed by <eos>, with their sentence_ids."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(len(SPECIAL_TOKENS), VOCAB, (batch, length), generator=gen)
    sentence_ids = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        t, sid = 0, 0
        while t < length:
            n = int(torch.randint(1, max_sentence_len + 1, (1,), generator=gen))
            sentence_ids[row, t : t + n] = sid
            input_ids[row, min(t + n, length) - 1] = EOS_ID
            t, sid = t + n, sid + 1
    return input_ids, sentence_ids


def synthetic_rows(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of learnable 'sentences': a random first token, then t -> t + 7 (mod vocab), then <eos>.

    Sentence lengths depend on the first token, so a model trained on them ends sentences by itself.
    """
    gen = torch.Generator().manual_seed(seed)
    first = len(SPECIAL_TOKENS)
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    sentence_ids = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        t, sid = 0, 0
        while t < length:
            token = int(torch.randint(first, VOCAB, (1,), generator=gen))
            n = 2 + token % 6
            for i in range(n):
                if t + i < length:
                    input_ids[row, t + i] = first + (token - first + 7 * i) % (VOCAB - first)
                    sentence_ids[row, t + i] = sid
            if t + n < length:
                input_ids[row, t + n] = EOS_ID
                sentence_ids[row, t + n] = sid
            t, sid = t + n + 1, sid + 1
    return input_ids, sentence_ids


def trained_tiny_model(model: str, steps: int = 150) -> LanguageModel:
    """A tiny model fitted to `synthetic_rows`, so greedy decoding is varied and ends sentences."""
    net = tiny_model(model, seed=2).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for step in range(steps):
        input_ids, sentence_ids = synthetic_rows(8, 64, seed=step)
        optimizer.zero_grad()
        net.loss(input_ids, sentence_ids).backward()
        optimizer.step()
    return net.eval()
