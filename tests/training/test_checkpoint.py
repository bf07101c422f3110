import errno
import runpy
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from gpthf.atomic import WriteFailed
from gpthf.cli import EXIT_USER_ERROR, run_cli
from gpthf.config import load_config
from gpthf.errors import CheckpointError, DataError
from gpthf.training import checkpoint as checkpoint_module
from gpthf.training.checkpoint import latest_checkpoint, load_model_from_checkpoint, save_checkpoint
from gpthf.training.trainer import train
from tests.conftest import REPO, frozen_clock, run_overrides
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


def nan_in_optimizer_state(checkpoint: Path) -> None:
    """Damage: one value of the first AdamW `exp_avg_sq` in the checkpoint's train_state.pt set to NaN."""
    state = torch.load(checkpoint / "train_state.pt", weights_only=True)
    moments = state["optimizer"]["state"][0]["exp_avg_sq"]
    moments.view(-1)[moments.numel() // 2] = float("nan")
    torch.save(state, checkpoint / "train_state.pt")


def test_non_finite_training_state_is_refused_on_resume(data_cache, tmp_path, capsys):
    """A NaN optimizer moment would train the resumed run into NaN and then call this checkpoint 'the
    last good one': refused at load, naming the file and the entry."""
    args = run_overrides(data_cache, tmp_path, "train.max_tokens=3000")
    run_dir = train(load_config(args), clock=frozen_clock, stop_after_steps=2)
    checkpoint = latest_checkpoint(run_dir)
    nan_in_optimizer_state(checkpoint)
    main = runpy.run_path(str(REPO / "pretrain.py"))["main"]
    capsys.readouterr()
    assert run_cli(main, [*args, "resume=true"]) == EXIT_USER_ERROR
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert f"training state {checkpoint / 'train_state.pt'} is damaged" in line
    assert "entry 'optimizer.state.0.exp_avg_sq' holds 1 NaN and 0 infinite values" in line
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [checkpoint.name], "nothing trained on"


@pytest.mark.parametrize(
    "fail_in, error", [("torch.save", RuntimeError("some bug")), ("save_file", SafetensorError("some bug"))]
)
def test_a_bug_inside_a_checkpoint_write_keeps_its_traceback(saved, monkeypatch, fail_in, error):
    """Only the libraries' failed-write messages are a full disk; any other error is a bug, not 'free space'."""
    run_dir, model, meta, tokenizer = saved

    def bug(*args, **kwargs):
        raise error

    if fail_in == "torch.save":
        monkeypatch.setattr(checkpoint_module.torch, "save", bug)
    else:
        monkeypatch.setattr(checkpoint_module, "save_file", bug)
    with pytest.raises(type(error), match="some bug") as raised:
        save_checkpoint(
            run_dir / "checkpoints" / "step-00000002", model, {**meta, "step": 2}, tokenizer, {"progress": {}}
        )
    assert not isinstance(raised.value, WriteFailed)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000001"], "none left"


@pytest.mark.parametrize(
    "message, reason",
    [
        ("[enforce fail at inline_container.cc:595] . unexpected pos 4416 vs 4310", "stopped short"),
        ("PytorchStreamWriter failed writing file data/0: file write failed", "stopped short"),
        ("Error while serializing: IoError(File too large (os error 27))", "File too large"),
    ],
)
def test_a_library_s_failed_write_is_a_full_disk(saved, monkeypatch, message, reason):
    run_dir, model, meta, tokenizer = saved

    def fails(*args, **kwargs):
        raise (SafetensorError if "os error" in message else RuntimeError)(message)

    monkeypatch.setattr(checkpoint_module, "save_file", fails)
    with pytest.raises(CheckpointError, match=f"{reason}.*earlier checkpoints are intact"):
        save_checkpoint(run_dir / "checkpoints" / "step-00000002", model, {**meta, "step": 2}, tokenizer)


def test_a_missing_data_cache_tokenizer_is_named_not_blamed_on_the_disk(saved):
    """The data cache removed during the run: the checkpoint's tokenizer cannot be copied from it."""
    run_dir, model, meta, tokenizer = saved
    tokenizer.unlink()
    with pytest.raises(DataError) as raised:
        save_checkpoint(run_dir / "checkpoints" / "step-00000002", model, {**meta, "step": 2}, tokenizer, {})
    message = str(raised.value)
    assert f"the data cache's tokenizer {tokenizer} is missing" in message and "resume=true" in message
    assert not isinstance(raised.value, WriteFailed) and "check the disk" not in message
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000001"], "none left"
