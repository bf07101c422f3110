"""The GPT exported as a plain LlamaForCausalLM: transformers loads it without remote code and gives
our logits, our greedy tokens, and our tokenization when prompts are split as ours are."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID
from gpthf.data.tokenizer import train_tokenizer
from gpthf.export import prompt_ids
from gpthf.export.folder import export_checkpoint
from gpthf.export.hf_generation import SentenceLengthLimit
from gpthf.generation import decode_continuation
from gpthf.generation.strategies import pad_rows, sentence_ids_for
from gpthf.models import MODELS
from tests.conftest import STORY, TALES
from tests.export.conftest import MAX_SENTENCE_LEN, held_out_prompts, hf_greedy, our_greedy, save_tiny
from tests.models.helpers import tiny_arch

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt_export(trained, tmp_path_factory):
    model, checkpoint = trained("gpt")
    folder, architecture = export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "gpt")
    assert architecture == "LlamaForCausalLM"
    return model, folder


def test_gpt_loads_as_plain_llama_with_our_logits(gpt_export):
    model, folder = gpt_export
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config and not list(folder.glob("*.py")), "no remote code"
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert "lm_head.weight" not in weights.keys(), "tied as Hugging Face ties it: stored once"

    tokens, lengths = pad_rows(held_out_prompts())
    tokens, lengths = tokens[:, : int(lengths.min())], lengths.clamp(max=int(lengths.min()))
    with torch.no_grad():
        ours = model(tokens, sentence_ids_for(tokens, lengths))
        theirs = hf(tokens).logits
    assert (ours - theirs).abs().max() <= 1e-4


def test_gpt_greedy_tokens_equal_ours_with_the_sentence_length_limit(gpt_export):
    model, folder = gpt_export
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (EOD_ID, PAD_ID)
    prompts = held_out_prompts()
    ours = our_greedy(model, prompts)
    assert sum(row.count(EOS_ID) for row in ours) > len(ours), "the continuations end sentences"
    limit = transformers.LogitsProcessorList([SentenceLengthLimit(MAX_SENTENCE_LEN)])
    assert hf_greedy(hf, prompts, logits_processor=limit) == ours
    assert hf_greedy(hf, prompts) != ours, "some sentences here are closed only by the length limit"


def test_bf16_export_stores_bf16(trained, tmp_path):
    _, checkpoint = trained("gpt")
    folder, _ = export_checkpoint(checkpoint, tmp_path / "bf16", dtype="bf16")
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert hf.dtype == torch.bfloat16


def test_prompt_ids_are_hugging_face_tokens_of_each_sentence_joined_by_eos(tmp_path):
    """The doc's rule, checked with Hugging Face's tokenizer: every sentence encoded on its own,
    each closed with <eos>, the last left open when the text does not end a sentence."""
    sentences = [s for tale in TALES for s in tale.split(". ")] + STORY.splitlines()
    tokenizer = train_tokenizer(sentences, 300)
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    torch.manual_seed(0)
    model = MODELS["gpt"](tiny_arch("gpt"), tokenizer.get_vocab_size())
    data = {"language": "english", "seq_len": 64, "max_sentence_len": 32}
    checkpoint = save_tiny(tmp_path / "ckpt", model, tmp_path / "tok" / "tokenizer.json", data)
    folder, _ = export_checkpoint(checkpoint, tmp_path / "hf")

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert (hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (EOD_ID, PAD_ID)
    sentences = ["The fox ran into the wood.", "The hound followed it.", "Night fell over the"]
    text = " ".join(sentences)
    ids = prompt_ids(folder, text)
    each = [hf_tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
    assert ids == [*each[0], EOS_ID, *each[1], EOS_ID, *each[2]]
    assert prompt_ids(folder, text + " hills.")[-1] == EOS_ID, "a finished text closes its last sentence"
    assert prompt_ids(checkpoint, text) == ids, "the same for the gpthf checkpoint"
    assert EOS_ID not in hf_tokenizer("a literal <eos> is text", add_special_tokens=False)["input_ids"]
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == decode_continuation(tokenizer, ids)
