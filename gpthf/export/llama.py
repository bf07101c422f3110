"""The GPT as a plain Hugging Face `LlamaForCausalLM` folder, and its weights back.

Our GPT is Llama's shape: pre-norm RMSNorm blocks, RoPE, SwiGLU, no biases, the embedding tied with
the head. Three layout facts make the weights map one to one:
- our RoPE rotates the halves (channel i with i + hd/2, `gpthf.models.layers.apply_rope`), which is
  Hugging Face's `rotate_half`, so q and k need no permutation (the interleaved layout of Meta's
  original checkpoints would);
- our fused `qkv` projection stacks q, k, v along its output rows, each head-major as HF's
  `q_proj`/`k_proj`/`v_proj` are, so it splits into them by rows;
- the head is the embedding (`tie_word_embeddings`): HF stores `model.embed_tokens.weight` only.
"""

from __future__ import annotations

import re

import torch

from gpthf.errors import CheckpointError

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"

# Our name (after "blocks.{i}.") -> HF's (after "model.layers.{i}."); qkv is split apart.
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.out.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
_QKV = ("q_proj", "k_proj", "v_proj")
_OURS = re.compile(r"blocks\.(\d+)\.(.+)")
_THEIRS = re.compile(r"model\.layers\.(\d+)\.(.+)")


def llama_config(meta) -> dict:
    """`LlamaConfig`'s fields for the GPT `meta` describes (a `CheckpointMeta`). The context is the
    row length it was trained on: what `max_position_embeddings` tells vLLM and llama.cpp."""
    return llama_fields(meta.arch, meta.vocab_size, context_tokens(meta))


def llama_fields(arch: dict, vocab_size: int, context: int) -> dict:
    """`LlamaConfig`'s fields for a GPT of `arch` (its config as a dict): the one mapping of our
    shape onto Llama's, for the exported folder and for the benchmarks' random-weight peer."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": arch["d_model"],
        "intermediate_size": arch["mlp_hidden"],
        "num_hidden_layers": arch["n_layers"],
        "num_attention_heads": arch["n_heads"],
        "num_key_value_heads": arch["n_heads"],
        "head_dim": arch["d_model"] // arch["n_heads"],
        "max_position_embeddings": context,
        "rope_theta": arch.get("rope_base", 10000.0),
        "rms_norm_eps": arch.get("norm_eps", 1e-5),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
    }


def context_tokens(meta) -> int:
    """The tokens of context the model was trained with (its rows)."""
    return meta.context.get("tokens") or meta.data["seq_len"]


def to_llama(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our GPT's parameters (each once, as `named_parameters` gives them) under HF Llama's names."""
    out = {}
    for name, tensor in weights.items():
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = tensor
            continue
        layer, rest = _OURS.fullmatch(name).groups()
        prefix = f"model.layers.{layer}."
        if rest == "attn.qkv.weight":
            for part, block in zip(_QKV, tensor.chunk(3, dim=0)):  # (3d, d) -> 3 x (d, d)
                out[f"{prefix}self_attn.{part}.weight"] = block.contiguous()
        else:
            out[prefix + _BLOCK_NAMES[rest]] = tensor
    return out


def from_llama(weights: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """HF Llama weights under our GPT's names: the inverse of `to_llama`. A tensor of another name
    (biases, a separate `lm_head`) means a folder `to_llama` did not write: refused, naming it."""
    theirs_top = {v: k for k, v in _TOP_NAMES.items()}
    theirs_block = {v: k for k, v in _BLOCK_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights.items():
        match = _THEIRS.fullmatch(name)
        if name in theirs_top:
            out[theirs_top[name]] = tensor
        elif match and match[2] in theirs_block:
            out[f"blocks.{match[1]}.{theirs_block[match[2]]}"] = tensor
        elif match and match[2] in {f"self_attn.{p}.weight" for p in _QKV}:
            qkv.setdefault(match[1], {})[match[2].split(".")[1]] = tensor
        else:
            raise CheckpointError(
                f"{where} holds {name!r}, which `python -m gpthf export` never writes for a GPT: the folder "
                f"was changed or written by another tool; export the gpthf checkpoint again"
            )
    for layer, parts in qkv.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise CheckpointError(f"{where} lacks model.layers.{layer}.self_attn.{missing[0]}.weight")
        out[f"blocks.{layer}.attn.qkv.weight"] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out
