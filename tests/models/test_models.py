from pathlib import Path

import pytest
import torch

from gpthf.config import CONFIG_DIR, load_config
from gpthf.data.special_tokens import EOS_ID, PAD_ID
from gpthf.errors import ConfigError
from gpthf.models import GPTHF, build_model
from tests.models.helpers import KIND_FIELDS, VOCAB, random_batch, tiny_model

MODELS = list(KIND_FIELDS)


def encoder_states(model: GPTHF, input_ids, sentence_ids) -> torch.Tensor:
    """Output of the last word-level encoder block (the input of the body)."""
    captured = {}
    handle = model.wlt_encoder[-1].register_forward_hook(lambda mod, args, out: captured.setdefault("x", out))
    model(input_ids, sentence_ids)
    handle.remove()
    return captured["x"]


@pytest.mark.parametrize(
    "size", sorted(p.stem.removeprefix("gpthf-") for p in (CONFIG_DIR / "arch").glob("gpthf-*.yaml"))
)
def test_every_gpthf_arch_has_an_equal_size_gpt_twin(size):
    gpthf_cfg, gpt_cfg = load_config([f"arch=gpthf-{size}"]).arch, load_config([f"arch=gpt-{size}"]).arch
    assert gpt_cfg.n_layers == gpthf_cfg.n_enc + gpthf_cfg.n_body
    with torch.device("meta"):
        counts = [build_model(cfg, vocab_size=4096).num_parameters() for cfg in (gpthf_cfg, gpt_cfg)]
    assert counts[0] == counts[1]


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_alternatives_have_the_gpt_parameter_count(size):
    """linear = the GPT exactly; T2R = the GPT + its feature maps; LSTM within 1 % (sizes differ by a unit)."""
    with torch.device("meta"):
        counts = {
            kind: build_model(load_config([f"arch={kind}-{size}"]).arch, vocab_size=4096).num_parameters()
            for kind in ("gpt", "linear", "t2r", "lstm")
        }
    arch = load_config([f"arch=t2r-{size}"]).arch
    feature_maps = arch.n_layers * arch.n_heads * (arch.d_model // arch.n_heads + 1) * arch.feature_dim
    assert counts["linear"] == counts["gpt"]
    assert counts["t2r"] == counts["gpt"] + feature_maps
    assert abs(counts["lstm"] - counts["gpt"]) / counts["gpt"] < 0.01


@pytest.mark.parametrize("model_name", MODELS)
def test_causality_future_tokens_never_change_past_logits(model_name):
    model = tiny_model(model_name)
    input_ids, sentence_ids = random_batch(2, 40, seed=3)
    logits = model(input_ids, sentence_ids)
    for t in (0, 7, 19, 38):
        changed = input_ids.clone()
        changed[:, t + 1 :] = torch.randint(4, VOCAB, changed[:, t + 1 :].shape)
        new_logits = model(changed, sentence_ids)
        torch.testing.assert_close(new_logits[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=0)
        assert not torch.allclose(new_logits[:, t + 1 :], logits[:, t + 1 :]), (
            "the test must change something"
        )


def test_encoder_isolates_sentences():
    model = tiny_model("gpthf")
    input_ids, sentence_ids = random_batch(1, 40, seed=4)
    before = encoder_states(model, input_ids, sentence_ids)
    j = 3
    inside = (sentence_ids[0] == j).nonzero().squeeze(1)
    changed = input_ids.clone()
    changed[0, inside[0]] = (changed[0, inside[0]] + 1 - 4) % (VOCAB - 4) + 4  # first token of sentence j
    after = encoder_states(model, changed, sentence_ids)
    differs = (after - before).abs().amax(-1)[0] > 1e-6
    assert differs[inside].all(), "every token of sentence j sees its first token"
    assert not differs[sentence_ids[0] != j].any(), "no token outside sentence j changes"


def test_sentence_position_independence_of_encoding():
    """The same sentence at two places of a row gets the same encoder states (RoPE inside sentences)."""
    model = tiny_model("gpthf")
    sentence = torch.tensor([10, 11, 12, EOS_ID])
    input_ids = torch.cat([torch.tensor([20, 21, EOS_ID]), sentence, torch.tensor([30, EOS_ID]), sentence])[
        None
    ]
    sentence_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3]])
    states = encoder_states(model, input_ids, sentence_ids)
    torch.testing.assert_close(states[0, 3:7], states[0, 9:13], atol=1e-5, rtol=0)


@pytest.mark.parametrize("picked", [[0], [5, 17, 39, 40, 79], list(range(80)), [79, 3, 3]])
def test_block_output_at_chosen_positions_is_its_full_output_there(picked):
    """`Block.forward_at` (a generation prefill's top encoder layer) equals the block's output at
    those positions, in any order and with repeats: the attention still reads every position."""
    model = tiny_model("gpthf")
    input_ids, sentence_ids = random_batch(2, 40, seed=6)
    pattern = model.encoder_pattern(sentence_ids)
    block = model.wlt_encoder[0]
    with torch.inference_mode():
        x = model.embed(input_ids)
        full = block(x, pattern).reshape(-1, x.shape[-1])
        index = torch.tensor(picked)
        torch.testing.assert_close(block.forward_at(x, pattern, index), full[index], atol=1e-5, rtol=0)


def test_body_sees_finished_sentences_only_through_their_end_state():
    model = tiny_model("gpthf")
    input_ids, sentence_ids = random_batch(1, 40, seed=5)
    logits = model(input_ids, sentence_ids)
    original = encoder_states(model, input_ids, sentence_ids)
    j = 2
    inside = (sentence_ids[0] == j).nonzero().squeeze(1)
    assert len(inside) >= 2, "sentence j needs a non-final token"
    end = int(inside[-1])
    changed = input_ids.clone()
    changed[0, inside[0]] = (changed[0, inside[0]] - 4 + 1) % (VOCAB - 4) + 4
    later = sentence_ids[0] > j
    assert not torch.allclose(model(changed, sentence_ids)[0, later], logits[0, later]), "the change matters"

    def restore_end_state(module, args, out):
        patched = out.clone()
        patched[0, end] = original[0, end]
        return patched

    handle = model.wlt_encoder[-1].register_forward_hook(restore_end_state)
    patched_logits = model(changed, sentence_ids)
    handle.remove()
    torch.testing.assert_close(patched_logits[0, later], logits[0, later], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_name", MODELS)
def test_padding_rows_do_not_change_the_loss(model_name):
    model = tiny_model(model_name)
    input_ids, sentence_ids = random_batch(2, 24, seed=6)
    input_ids[1, 18:] = PAD_ID  # a row with padding at its end
    sentence_ids[1, 18:] = sentence_ids[1, 17] + 1
    loss = model.loss(input_ids, sentence_ids)
    padded_ids = torch.cat([input_ids, torch.full((1, 24), PAD_ID)])
    padded_sids = torch.cat([sentence_ids, torch.zeros(1, 24, dtype=torch.long)])
    torch.testing.assert_close(model.loss(padded_ids, padded_sids), loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_name", MODELS)
def test_tiny_model_overfits_two_sentences(model_name):
    model = tiny_model(model_name, seed=1).train()
    input_ids = torch.tensor([[15, 16, 17, 18, 19, EOS_ID, 30, 31, 32, 33, EOS_ID, 40]])
    sentence_ids = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        loss = model.loss(input_ids, sentence_ids)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_gpthf_needs_sentence_ids_and_archs_are_validated():
    with pytest.raises(ValueError, match="sentence_ids"):
        tiny_model("gpthf")(torch.tensor([[5, 6]]), None)
    with pytest.raises(ConfigError, match="n_enc"):
        tiny_model("gpthf", n_body=0)
    with pytest.raises(ConfigError, match="n_layers"):
        tiny_model("gpt", n_layers=None)
    with pytest.raises(ConfigError, match="heads"):
        tiny_model("gpt", n_heads=5)
    with pytest.raises(ConfigError, match="lstm_hidden"):
        tiny_model("lstm", lstm_hidden=None)
    with pytest.raises(ConfigError, match="feature_map"):
        tiny_model("linear", feature_map="softmax")
    with pytest.raises(ConfigError, match="choose one of"):
        build_model({"model": "rnn", "d_model": 8, "n_heads": 2, "mlp_hidden": 8}, VOCAB)


def test_config_files_exist_for_all_sizes():
    names = {p.stem for p in Path(CONFIG_DIR, "arch").glob("*.yaml")}
    assert {"gpthf-tiny", "gpt-tiny", "gpthf-small", "gpt-small", "gpthf-standard", "gpt-standard"} <= names
