import errno
import json
import re
import runpy
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from gpthf.atomic import WriteFailed
from gpthf.cli import EXIT_USER_ERROR, run_cli
from gpthf.config import load_config
from gpthf.errors import CheckpointError, DataError
from gpthf.loading import load_model_from_checkpoint
from gpthf.training import checkpoint as checkpoint_module
from gpthf.training.batches import RowOrder
from gpthf.training.checkpoint import (
    CheckpointMeta,
    latest_checkpoint,
    load_train_state,
    parse_meta,
    read_meta,
    save_checkpoint,
)
from gpthf.training.trainer import train
from tests.conftest import REPO, frozen_clock, run_overrides
from tests.models.helpers import VOCAB, tiny_arch, tiny_model


@pytest.fixture
def saved(tmp_path):
    """A run folder with one complete checkpoint of a tiny GPTHF."""
    model = tiny_model("gpthf")
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    data = {"language": "english", "seq_len": 64, "max_sentence_len": 32}
    meta = CheckpointMeta(arch=vars(tiny_arch("gpthf")), vocab_size=VOCAB, data=data, step=1)
    save_checkpoint(
        tmp_path / "run" / "checkpoints" / "step-00000001", model, meta, tokenizer, {"progress": {}}
    )
    return tmp_path / "run", model, meta, tokenizer


def test_checkpoint_round_trip_keeps_weights_and_tying(saved):
    run_dir, model, _, _ = saved
    loaded, meta, path = load_model_from_checkpoint(run_dir)
    assert path.name == "step-00000001" and meta.step == 1
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
            run_dir / "checkpoints" / "step-00000002",
            model,
            replace(meta, step=2),
            tokenizer,
            {"progress": {}},
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


@pytest.fixture(scope="module")
def step_checkpoint(data_cache, tmp_path_factory):
    """(overrides of a run stopped at a step checkpoint, that checkpoint); tests damage copies of it."""
    args = run_overrides(data_cache, tmp_path_factory.mktemp("run"), "train.max_tokens=3000")
    run_dir = train(load_config(args), clock=frozen_clock, stop_after_steps=2)
    return args, latest_checkpoint(run_dir)


def _set(path: str, value) -> Callable[[dict], None]:
    """Damage: the train_state.pt entry at `path` ("progress.step") set to `value`, or removed (`...`)."""

    def damage(state: dict) -> None:
        *parents, last = path.split(".")
        for part in parents:
            state = state[int(part) if isinstance(state, list) else part]
        if value is ...:
            del state[last]
        else:
            state[last] = value

    return damage


DAMAGED_STATES = [
    (
        "data_order.offset",
        10**12,
        "entry 'data_order.offset' is 1000000000000, outside 0 ≤ data_order.offset <",
    ),
    ("data_order.offset", -1, "entry 'data_order.offset' is -1, outside 0 ≤ data_order.offset <"),
    ("progress", ..., "entry 'progress' is missing"),
    ("progress.step", -3, "entry 'progress.step' is -3, outside 0 ≤ progress.step"),
    ("progress.tokens", -1, "entry 'progress.tokens' is -1, outside 0 ≤ progress.tokens"),
    ("progress.elapsed_s", float("nan"), "entry 'progress.elapsed_s' is nan"),
    ("progress.elapsed_s", -5.0, "entry 'progress.elapsed_s' is -5.0, outside 0 ≤ progress.elapsed_s"),
    ("progress.step", "7", "entry 'progress.step' is '7', not a whole number"),
    ("optimizer.param_groups.0.eps", float("nan"), "entry 'optimizer.param_groups.0.eps' is nan"),
    ("optimizer.param_groups.0.lr", float("inf"), "entry 'optimizer.param_groups.0.lr' is inf"),
    ("optimizer.param_groups.0.weight_decay", -0.1, "entry 'optimizer.param_groups.0.weight_decay' is -0.1"),
    (
        "optimizer.param_groups.0.betas",
        (0.9, float("nan")),
        "entry 'optimizer.param_groups.0.betas.1' is nan",
    ),
    (
        "optimizer.param_groups.0.betas",
        (0.9, 1.5),
        "entry 'optimizer.param_groups.0.betas.1' is 1.5, outside",
    ),
    ("rng", ..., "entry 'rng' is missing"),
]


@pytest.mark.parametrize(
    "path, value, problem", DAMAGED_STATES, ids=[f"{p}={v!r}" for p, v, _ in DAMAGED_STATES]
)
def test_a_damaged_training_state_is_refused_at_load(step_checkpoint, tmp_path, path, value, problem):
    """Missing entries, impossible numbers and a data position past the data set (which made the data
    order loop forever) are one error naming train_state.pt and the entry, before anything resumes."""
    _, checkpoint = step_checkpoint
    copy = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, copy)
    state = torch.load(copy / "train_state.pt", weights_only=True)
    _set(path, value)(state)
    torch.save(state, copy / "train_state.pt")
    with pytest.raises(CheckpointError) as raised:
        load_train_state(copy)
    assert f"training state {copy / 'train_state.pt'} is damaged: {problem}" in str(raised.value)


def test_resume_from_a_data_position_past_the_data_set_stops_with_one_error(step_checkpoint, capsys):
    """The reviewer's case end to end: resume=true exits 2 with one line instead of looping forever."""
    args, checkpoint = step_checkpoint
    saved = (checkpoint / "train_state.pt").read_bytes()
    state = torch.load(checkpoint / "train_state.pt", weights_only=True)
    state["data_order"]["offset"] = 10**12
    torch.save(state, checkpoint / "train_state.pt")
    main = runpy.run_path(str(REPO / "pretrain.py"))["main"]
    capsys.readouterr()
    try:
        assert run_cli(main, [*args, "resume=true"]) == EXIT_USER_ERROR
    finally:
        (checkpoint / "train_state.pt").write_bytes(saved)
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert "train_state.pt is damaged: entry 'data_order.offset' is 1000000000000" in line


def test_the_data_order_refuses_a_position_outside_the_epoch():
    """Guard below the checkpoint check: an empty chunk must never loop."""
    for offset in (10, -1):
        with pytest.raises(ValueError, match="outside the epoch"):
            RowOrder(n_rows=10, seed=0, offset=offset).take(4)
    assert len(RowOrder(n_rows=10, seed=0, offset=8).take(4)) == 4


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
            run_dir / "checkpoints" / "step-00000002",
            model,
            replace(meta, step=2),
            tokenizer,
            {"progress": {}},
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
        save_checkpoint(run_dir / "checkpoints" / "step-00000002", model, replace(meta, step=2), tokenizer)


def test_a_missing_data_cache_tokenizer_is_named_not_blamed_on_the_disk(saved):
    """The data cache removed during the run: the checkpoint's tokenizer cannot be copied from it."""
    run_dir, model, meta, tokenizer = saved
    tokenizer.unlink()
    with pytest.raises(DataError) as raised:
        save_checkpoint(
            run_dir / "checkpoints" / "step-00000002", model, replace(meta, step=2), tokenizer, {}
        )
    message = str(raised.value)
    assert f"the data cache's tokenizer {tokenizer} is missing" in message and "resume=true" in message
    assert not isinstance(raised.value, WriteFailed) and "check the disk" not in message
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000001"], "none left"


def test_parse_meta_checks_a_stored_config_as_read_meta_does(saved, tmp_path):
    """A config.json read elsewhere (an exported model's copy) is checked and typed like a checkpoint's;
    the file keeps its layout, and an older one without the later fields still loads."""
    run_dir, _, meta, _ = saved
    checkpoint = latest_checkpoint(run_dir)
    raw = json.loads((checkpoint / "config.json").read_text())
    assert list(raw) == [
        "format", "gpthf_version", "arch", "vocab_size", "data", "step", "tokens", "context", "data_cache",
        "init_from",
    ]  # fmt: skip
    assert parse_meta(raw, tmp_path) == read_meta(checkpoint) == meta
    damaged = {**raw, "data": {"language": "english", "max_sentence_len": 4}}
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path}: config.json is damaged")):
        parse_meta(damaged, tmp_path)
    with pytest.raises(CheckpointError, match="not a gpthf checkpoint config"):
        parse_meta({**raw, "format": 2}, tmp_path)
    older = {
        k: v for k, v in raw.items() if k not in ("step", "tokens", "context", "data_cache", "init_from")
    }
    assert parse_meta(older, tmp_path) == replace(meta, step=None)
