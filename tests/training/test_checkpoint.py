import errno

import pytest
import torch

from gpthf.errors import CheckpointError
from gpthf.training import checkpoint as checkpoint_module
from gpthf.training.checkpoint import latest_checkpoint, load_model_from_checkpoint, save_checkpoint
from tests.models.helpers import VOCAB, tiny_arch, tiny_model


@pytest.fixture
def saved(tmp_path):
    """A run folder with one complete checkpoint of a tiny GPTHF."""
    model = tiny_model("gpthf")
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    meta = {"arch": vars(tiny_arch("gpthf")), "vocab_size": VOCAB, "step": 1}
    save_checkpoint(
        tmp_path / "run" / "checkpoints" / "step-00000001", model, meta, tokenizer, {"progress": {}}
    )
    return tmp_path / "run", model, meta, tokenizer


def test_checkpoint_round_trip_keeps_weights_and_tying(saved):
    run_dir, model, _, _ = saved
    loaded, meta, path = load_model_from_checkpoint(run_dir)
    assert path.name == "step-00000001" and meta["step"] == 1
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.head.weight is loaded.embed.weight


@pytest.mark.parametrize("fail_in", ["torch.save", "save_file"])
def test_crash_mid_write_leaves_the_previous_checkpoint_loadable(saved, monkeypatch, fail_in):
    run_dir, model, meta, tokenizer = saved

    def disk_full(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_in == "torch.save":
        monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    else:
        monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*earlier checkpoints are intact"):
        save_checkpoint(
            run_dir / "checkpoints" / "step-00000002", model, {**meta, "step": 2}, tokenizer, {"progress": {}}
        )
    assert latest_checkpoint(run_dir).name == "step-00000001"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000001"], (
        "no staging folder left behind"
    )
    load_model_from_checkpoint(run_dir)


def test_truncated_weights_are_a_clear_error(saved):
    run_dir, *_ = saved
    weights = run_dir / "checkpoints" / "step-00000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model_from_checkpoint(run_dir)


def test_weights_of_another_shape_are_refused(saved, tmp_path):
    run_dir, _, meta, tokenizer = saved
    other = tiny_model("gpthf", d_model=64)
    save_checkpoint(tmp_path / "other", other, meta, tokenizer)  # meta says d_model=32
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model_from_checkpoint(tmp_path / "other")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_from_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_model_from_checkpoint(tmp_path)
