"""GPTHF and a recurrent kind exported as trust_remote_code folders: transformers loads them with our
logits, and its generate() gives our greedy tokens, through our own cached strategies."""

from __future__ import annotations

import json

import pytest
import torch

from gpthf.export.folder import export_checkpoint
from gpthf.generation.strategies import pad_rows, sentence_ids_for
from tests.export.conftest import held_out_prompts, hf_greedy, left_padded, our_greedy

transformers = pytest.importorskip("transformers")


def load_remote(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()


@pytest.fixture(scope="module")
def gpthf_export(trained, tmp_path_factory):
    model, checkpoint = trained("gpthf")
    folder, architecture = export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "gpthf")
    assert architecture == "GPTHFForCausalLM"
    return model, folder


def test_gpthf_loads_with_remote_code_and_gives_our_logits(gpthf_export, hf_home):
    model, folder = gpthf_export
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpthf.GPTHFForCausalLM"
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
    hf = load_remote(folder)
    assert type(hf).__name__ == "GPTHFForCausalLM"
    assert any((hf_home / "modules").rglob("modeling_gpthf.py")), "its code cached in a temporary home"

    prompts = held_out_prompts()
    tokens, lengths = pad_rows(prompts)
    input_ids, mask = left_padded(prompts)
    with torch.no_grad():
        ours = model(tokens, sentence_ids_for(tokens, lengths))  # (B, T, V), right-padded
        theirs = hf(input_ids, attention_mask=mask).logits  # the same rows, left-padded
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    assert (ours[real] - theirs[mask.bool()]).abs().max() <= 1e-4


def test_gpthf_generate_gives_our_greedy_tokens_through_the_sentence_cache(gpthf_export):
    model, folder = gpthf_export
    hf = load_remote(folder)
    full_forwards = []
    hf.model.register_forward_hook(lambda *args: full_forwards.append(1))
    prompts = held_out_prompts()
    ours = our_greedy(model, prompts)
    assert hf_greedy(hf, prompts) == ours
    assert not full_forwards, "prefill and decode ran our cached strategy, not the full forward"
    assert hf_greedy(hf, prompts, use_cache=False) == ours, "full recompute: the same tokens"
    assert full_forwards


def test_a_recurrent_kind_generates_our_greedy_tokens(trained, tmp_path):
    model, checkpoint = trained("lstm")
    folder, _ = export_checkpoint(checkpoint, tmp_path / "lstm")
    prompts = held_out_prompts()
    assert hf_greedy(load_remote(folder), prompts) == our_greedy(model, prompts)
