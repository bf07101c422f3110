"""`init_from=CKPT`: GPT -> T2R (swap softmax for learned linear attention) and GPT -> GPTHF, then finetune.
Also: every alternative arch trains for a few steps through the same trainer."""

from __future__ import annotations

import pytest
import torch

from gpthf.config import load_config
from gpthf.data.dataset import prepare_data
from gpthf.data.tokenizer import TOKENIZER_FILE
from gpthf.errors import ConfigError
from gpthf.loading import load_model_from_checkpoint
from gpthf.models import build_model
from gpthf.training.checkpoint import latest_checkpoint
from gpthf.training.convert import initialize_from
from gpthf.training.metrics import read_metrics
from gpthf.training.trainer import train
from tests.conftest import TALES, frozen_clock, run_overrides, tiny_overrides


def fresh(arch: str, data_cache):
    cfg = load_config(run_overrides(data_cache, data_cache, arch=arch))
    data = prepare_data(cfg, progress=False)
    return build_model(cfg.arch, data.stats["vocab_size"]), data.path / TOKENIZER_FILE


@pytest.mark.parametrize(
    "target, new_names", [("t2r-test", {"feature_map.weight", "feature_map.bias"}), ("gpthf-test", set())]
)
def test_conversion_keeps_every_weight_of_the_gpt(trained_runs, data_cache, target, new_names):
    gpt, _, _ = load_model_from_checkpoint(trained_runs["gpt"])
    model, tokenizer = fresh(target, data_cache)
    summary = initialize_from(model, trained_runs["gpt"], tokenizer)
    source_blocks, target_blocks = gpt.block_stack(), model.block_stack()
    for src, dst in [(gpt.embed, model.embed), (gpt.norm, model.norm), *zip(source_blocks, target_blocks)]:
        target_params = dict(dst.named_parameters())
        for name, param in src.named_parameters():
            assert torch.equal(target_params[name], param), name
    assert {name.split(": ")[1].split(".", 1)[1] for name in summary["new_tensors"]} == new_names
    assert summary["kept_parameters"] == gpt.num_parameters()
    assert summary["new_parameters"] == model.num_parameters() - gpt.num_parameters()


def test_conversions_that_cannot_work_are_clear_errors(trained_runs, data_cache, tmp_path):
    lstm, tokenizer = fresh("lstm-test", data_cache)
    with pytest.raises(ConfigError, match="no transformer blocks"):
        initialize_from(lstm, trained_runs["gpt"], tokenizer)
    wider = build_model({**fresh("gpt-test", data_cache)[0].arch.__dict__, "d_model": 64}, 512)
    with pytest.raises(ConfigError, match="does not fit the arch"):
        initialize_from(wider, trained_runs["gpt"], tokenizer)
    folder = tmp_path / "tales"
    folder.mkdir()
    for i, tale in enumerate(TALES):
        (folder / f"t{i}.txt").write_text(tale)
    other = prepare_data(load_config(tiny_overrides(tmp_path / "cache", folder)), progress=False)
    with pytest.raises(ConfigError, match="another tokenizer"):
        initialize_from(fresh("t2r-test", data_cache)[0], trained_runs["gpt"], other.path / TOKENIZER_FILE)


def test_init_from_then_finetune_records_the_source(trained_runs, data_cache, tmp_path):
    run = train(
        load_config(
            run_overrides(
                data_cache,
                tmp_path,
                "train.max_tokens=600",
                f"init_from={trained_runs['gpt']}",
                arch="t2r-test",
            )
        ),
        clock=frozen_clock,
    )
    model, meta, _ = load_model_from_checkpoint(latest_checkpoint(run))
    assert meta.arch["model"] == "t2r" and meta.init_from == str(trained_runs["gpt"])
    first_loss = read_metrics(run)[0]["loss"]
    scratch = train(
        load_config(run_overrides(data_cache, tmp_path / "scratch", "train.max_tokens=600", arch="t2r-test")),
        clock=frozen_clock,
    )
    assert first_loss < read_metrics(scratch)[0]["loss"], (
        "the converted model starts from what the GPT learned"
    )


@pytest.mark.parametrize("arch", ["linear-test", "t2r-test", "lstm-test", "block-recurrent-test"])
def test_every_alternative_arch_trains(data_cache, tmp_path, arch):
    run = train(
        load_config(run_overrides(data_cache, tmp_path, "train.max_tokens=3000", arch=arch)),
        clock=frozen_clock,
    )
    records = read_metrics(run)
    losses = [r["loss"] for r in records if "loss" in r]
    final = records[-1]
    assert final["val_loss"] < losses[0] and torch.isfinite(torch.tensor(final["val_bpb"]))
    model, meta, _ = load_model_from_checkpoint(run)
    assert meta.arch["model"] == arch.rsplit("-", 1)[0].replace("-", "_")
