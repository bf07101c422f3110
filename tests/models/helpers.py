"""Tiny random models and sentence-structured batches for model tests."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from gpthf.config import ArchConfig
from gpthf.data.special_tokens import EOS_ID, SPECIAL_TOKENS
from gpthf.models import MODELS, LanguageModel

VOCAB = 97
# What each model kind needs besides the shared shape (d_model 32, 4 heads, SwiGLU 64); a kind not
# listed takes its own fields from its `<kind>-test` YAML.
KIND_FIELDS = {
    "gpthf": {"n_enc": 2, "n_body": 2},
    "gpt": {"n_layers": 4},
    "linear": {"n_layers": 4},
    "t2r": {"n_layers": 4, "feature_map": "learned", "feature_dim": 16},
    "lstm": {"n_layers": 2, "lstm_hidden": 48},
    "block_recurrent": {"n_layers": 3, "recurrent_layer": 1, "block_len": 8, "n_states": 4},
}


# The CUDA flex kernel refuses heads narrower than this; tests that may run flex or flash on a GPU
# build their models with `head_dim=BACKEND_HEAD_DIM`, the others keep the tiny default (8).
BACKEND_HEAD_DIM = 16


def kind_fields(kind: str) -> dict:
    """The fields only `kind` reads, at their tiny test values."""
    if kind in KIND_FIELDS:
        return KIND_FIELDS[kind]
    from gpthf.config import load_config
    from gpthf.measure.scaling import arch_name
    from gpthf.models import spec_for

    arch = load_config([f"arch={arch_name(kind, 'test')}"]).arch
    return {name: arch[name] for name in spec_for(kind).fields}


def tiny_arch(model: str, head_dim: int | None = None, **overrides) -> ArchConfig:
    """The tiny shape of `model`; `head_dim` sets the heads' width (d_model / head_dim heads)."""
    fields = {
        "model": model,
        "d_model": 32,
        "n_heads": 4,
        "mlp_hidden": 64,
        **kind_fields(model),
        **overrides,
    }
    if head_dim is not None:
        fields["n_heads"] = fields["d_model"] // head_dim
    return ArchConfig(**fields)


def tiny_model(model: str, seed: int = 0, head_dim: int | None = None, **overrides) -> LanguageModel:
    torch.manual_seed(seed)
    return MODELS[model](tiny_arch(model, head_dim, **overrides), VOCAB).eval()


# Tensor methods that read a value back to the host (on CUDA each one waits for the GPU).
HOST_READS = frozenset({"item", "tolist", "__bool__", "__int__", "__index__", "__float__", "nonzero"})


class HostSyncs(TorchFunctionMode):
    """Records every host read-back of a tensor while active: `with HostSyncs() as syncs: ...`,
    then `syncs.calls` lists their names. Counting them on CPU tells how many a CUDA run would wait."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


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
