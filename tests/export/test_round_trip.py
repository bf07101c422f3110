"""An exported folder read back by `--ckpt DIR`: the same model, so the same generation, through
generate.py as a user runs it; and folders that are almost, but not, an export refused clearly."""

from __future__ import annotations

import json
import runpy
import shutil

import pytest
import torch

from gpthf.cli import run_cli
from gpthf.errors import CheckpointError
from gpthf.export.folder import export_checkpoint
from gpthf.loading import load_model_from_checkpoint
from gpthf.training.checkpoint import load_checkpoint_tokenizer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """kind -> (checkpoint, exported folder) for the GPT (Llama layout) and GPTHF (remote code)."""
    root = tmp_path_factory.mktemp("exports")
    checkpoints = {kind: trained(kind)[1] for kind in ("gpt", "gpthf")}
    return {kind: (ckpt, export_checkpoint(ckpt, root / kind)[0]) for kind, ckpt in checkpoints.items()}


@pytest.mark.parametrize("kind", ["gpt", "gpthf"])
def test_generate_py_continues_an_exported_folder_as_its_checkpoint(exports, kind, capsys):
    checkpoint, folder = exports[kind]
    original, meta, _ = load_model_from_checkpoint(checkpoint)
    loaded, loaded_meta, where = load_model_from_checkpoint(folder)
    assert where == folder and loaded_meta == meta
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.head.weight is loaded.embed.weight
    assert load_checkpoint_tokenizer(folder, loaded_meta).get_vocab_size() == meta.vocab_size

    main = runpy.run_path(str(REPO / "generate.py"))["main"]
    outputs = []
    greedy = ["--prompt", "w10 w17 w24", "--max-new-tokens", "64", "--temperature", "0"]
    for ckpt in (checkpoint, folder):
        assert run_cli(main, ["--ckpt", str(ckpt), *greedy]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and len(outputs[0].split()) > 3 + 32


def test_bf16_export_reads_back_as_the_rounded_weights(trained, tmp_path):
    model, checkpoint = trained("gpthf")
    folder, _ = export_checkpoint(checkpoint, tmp_path / "bf16", dtype="bf16")
    loaded, _, _ = load_model_from_checkpoint(folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name


def edit_config(folder, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_hugging_face_folder_without_our_metadata_is_refused(exports, tmp_path):
    folder = shutil.copytree(exports["gpt"][1], tmp_path / "plain-llama")
    edit_config(folder, lambda config: config.pop("gpthf"))
    with pytest.raises(CheckpointError, match=r"model folder \(LlamaForCausalLM\) without gpthf's metadata"):
        load_model_from_checkpoint(folder)


def test_damaged_metadata_and_foreign_weights_are_refused(exports, tmp_path):
    folder = shutil.copytree(exports["gpt"][1], tmp_path / "damaged")
    edit_config(folder, lambda config: config["gpthf"]["data"].pop("max_sentence_len"))
    with pytest.raises(CheckpointError, match="data.max_sentence_len is missing"):
        load_model_from_checkpoint(folder)

    folder = shutil.copytree(exports["gpt"][1], tmp_path / "mixed")
    shutil.copy(exports["gpthf"][1] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="never writes for a GPT"):
        load_model_from_checkpoint(folder)
