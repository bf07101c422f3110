import json
import math
import runpy

import pytest
import torch

from gpthf.cli import EXIT_USER_ERROR, run_cli
from gpthf.data.tokenizer import load_tokenizer
from gpthf.evaluation.perplexity import GROUPS, rows_for_text, score
from gpthf.loading import load_model_from_checkpoint
from gpthf.models import build_model
from tests.conftest import REPO, run_script


def test_trained_model_has_finite_bits_per_byte_below_an_untrained_one(trained_runs):
    model, meta, checkpoint = load_model_from_checkpoint(trained_runs["gpthf"])
    input_ids, sentence_ids, n_bytes = rows_for_text(meta, load_tokenizer(checkpoint), "validation")
    trained = score(model, input_ids, sentence_ids, n_bytes, max_rows=32)
    torch.manual_seed(0)
    untrained = score(
        build_model(meta.arch, meta.vocab_size).eval(), input_ids, sentence_ids, n_bytes, max_rows=32
    )
    assert math.isfinite(trained.bits_per_byte) and 0 < trained.bits_per_byte < untrained.bits_per_byte
    assert trained.tokens == sum(trained.tokens_by_position.values()) and set(
        trained.loss_by_position
    ) == set(GROUPS)
    assert all(trained.tokens_by_position[g] > 0 for g in GROUPS)


def test_perplexity_cli_on_a_text_file(trained_runs, tmp_path):
    text = tmp_path / "psalm.txt"
    text.write_text(
        "The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures.\n" * 5
    )
    run = run_script(
        "eval/perplexity.py", "--ckpt", str(trained_runs["gpt"]), "--data", str(text), timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["model"] == "gpt" and result["split"] == "all"
    assert result["bytes"] == len(text.read_bytes()) and result["bits_per_byte"] > 0


def test_perplexity_cli_reports_the_records_and_files_it_skipped(trained_runs, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "psalm.txt").write_text(
        "The LORD is my shepherd; I shall not want. He maketh me to lie down.\n" * 5
    )
    (corpus / "bad.jsonl").write_bytes(b'{"text": "Fine words. More of them."}\nnot json\n[[[[\n')
    (corpus / "gone.jsonl").symlink_to(tmp_path / "nowhere")
    run = run_script(
        "eval/perplexity.py", "--ckpt", str(trained_runs["gpt"]), "--data", str(corpus), "--samples", "0",
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["skipped_records"] == {"not JSON": 2, "not a regular file": 1}
    warnings = [line for line in run.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and "bad.jsonl:2" in warnings[0] and "gone.jsonl" in warnings[0]
    assert "skipped records: 2 not JSON, 1 not a regular file" in run.stdout


@pytest.mark.parametrize("script", ["perplexity", "precision"])
def test_an_unusable_device_is_named_by_the_flag_given(trained_runs, tmp_path, capsys, script):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    main = runpy.run_path(str(REPO / "eval" / f"{script}.py"))["main"]
    extra = ["--out", str(tmp_path)] if script == "precision" else []
    capsys.readouterr()
    assert run_cli(main, ["--ckpt", str(trained_runs["gpt"]), "--device", "cuda", *extra]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device=cuda but no CUDA GPU is visible; use --device=cpu or auto"]
