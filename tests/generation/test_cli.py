"""`generate.py` end to end on real (tiny) checkpoints, and prompt handling."""

from __future__ import annotations

import runpy

import pytest
import torch

from gpthf.cli import EXIT_USER_ERROR, run_cli
from gpthf.data.special_tokens import EOS_ID
from gpthf.data.splitter import build_splitter
from gpthf.data.tokenizer import load_tokenizer
from gpthf.errors import GpthfError
from gpthf.generation import ContextLimit, GenerationError, GenerationSettings, encode_prompt, generate
from gpthf.loading import load_model_from_checkpoint
from tests.conftest import REPO, run_script


def run_generate(*args: str):
    return run_script("generate.py", *args)


@pytest.mark.parametrize("arch", ["gpthf", "gpt"])
def test_generate_cli_continues_the_prompt(trained_runs, arch, capsys):
    args = ["--ckpt", str(trained_runs[arch]), "--prompt", "And God said", "--max-new-tokens", "12"]
    run = run_generate(*args, "--seed", "3")  # as a user runs it
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("And God said") and len(run.stdout.strip()) > len("And God said")
    main = runpy.run_path(str(REPO / "generate.py"))["main"]  # the same entry point, in this process
    capsys.readouterr()
    assert run_cli(main, [*args, "--seed", "3"]) == 0
    assert capsys.readouterr().out == run.stdout, "seeded sampling is reproducible"
    assert run_cli(main, [*args, "--no-pack"]) == 0
    plain = capsys.readouterr().out
    assert plain.startswith("And God said") and len(plain.strip()) > len("And God said")


def test_prompt_encoding_matches_training(trained_runs):
    _, meta, checkpoint = load_model_from_checkpoint(trained_runs["gpthf"])
    tokenizer, splitter = load_tokenizer(checkpoint), build_splitter()
    finished = encode_prompt("And God said. Let there be light.", tokenizer, splitter, 32)
    open_ended = encode_prompt("And God said. Let there be", tokenizer, splitter, 32)
    assert finished.count(EOS_ID) == 2 and finished[-1] == EOS_ID
    assert open_ended.count(EOS_ID) == 1 and open_ended[-1] != EOS_ID
    long = encode_prompt("word " * 200 + "end.", tokenizer, splitter, 32)
    assert long.count(EOS_ID) > 5, "a long sentence is chunked like packing chunks it"
    with pytest.raises(GpthfError, match="empty"):
        encode_prompt(" \n ", tokenizer, splitter, 32)


def test_context_limits_are_enforced(trained_runs):
    gpt, meta, _ = load_model_from_checkpoint(trained_runs["gpt"])
    limit = ContextLimit(**meta.context)
    assert limit.tokens == 64 and limit.sentences > 1
    with pytest.raises(GenerationError, match="64-token rows"):
        generate(gpt, [[10] * 64], GenerationSettings(limit=limit))
    result = generate(gpt, [[10] * 60], GenerationSettings(max_new_tokens=20, limit=limit))
    assert result.finish_reasons == ["context"] and len(result.tokens[0]) == 4
    gpthf, meta, _ = load_model_from_checkpoint(trained_runs["gpthf"])
    limit = ContextLimit(**meta.context)
    with pytest.raises(GenerationError, match="sentences"):
        generate(gpthf, [[10, EOS_ID] * limit.sentences], GenerationSettings(limit=limit))


BATCH_FILES = {  # bytes of a --batch-file -> the prompts read from it
    "lines": (b"In the beginning\nAnd Moses said.\n", ["In the beginning", "And Moses said."]),
    "no newline at the end": (b"One.\nTwo", ["One.", "Two"]),
    "windows line ends": (b"One.\r\nTwo.\r\n", ["One.", "Two."]),
    "blank and space-only lines skipped": (b"\nOne.\n  \n\t\nTwo.\n\n", ["One.", "Two."]),
    "spaces inside a prompt kept": (b"  indented, trailing  \n", ["  indented, trailing  "]),
    "utf-8": ("Ἐν ἀρχῇ ἦν ὁ λόγος\n".encode(), ["Ἐν ἀρχῇ ἦν ὁ λόγος"]),
    "a byte order mark": (b"\xef\xbb\xbfOne.\nTwo.\n", ["One.", "Two."]),
    "a byte order mark on a line of its own": (b"\xef\xbb\xbf\nOne.\n", ["One."]),
    "byte order marks of files concatenated": (b"\xef\xbb\xbfOne.\n\xef\xbb\xbfTwo.\n", ["One.", "Two."]),
    "a byte order mark inside a line kept": ("One\ufefftwo.\n".encode(), ["One\ufefftwo."]),
}


def read_batch_file(path) -> list[str]:
    import argparse

    read_prompts = runpy.run_path(str(REPO / "generate.py"))["read_prompts"]
    return read_prompts(argparse.Namespace(prompt=None, batch_file=path))


@pytest.mark.parametrize("case", BATCH_FILES)
def test_batch_file_prompts(tmp_path, case):
    content, expected = BATCH_FILES[case]
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    assert read_batch_file(path) == expected


def test_batch_file_that_is_not_utf8_is_one_error_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Dieu dit: Que la lumière soit\n".encode("latin-1"))
    with pytest.raises(GpthfError, match="cannot read --batch-file"):
        read_batch_file(path)


def test_a_prompt_is_named_by_its_line_or_without_one_when_the_file_changed(tmp_path):
    import argparse

    name_prompt = runpy.run_path(str(REPO / "generate.py"))["name_prompt"]
    path = tmp_path / "prompts.txt"
    path.write_text("\nOne.\n\n  \nTwo.\n")
    args = argparse.Namespace(prompt=None, batch_file=path)
    assert name_prompt(args, 1) == f"prompt 1 (line 5 of {path})"
    path.write_text("One.\n")  # rewritten since it was read
    assert name_prompt(args, 1) == f"prompt 1 of {path}"
    assert name_prompt(argparse.Namespace(prompt="Hi.", batch_file=None), 0) == "the prompt"


DEVICES = [  # --device given -> the one error line, naming --device (the flag used), not impl.device
    ("cuda", "error: --device=cuda but no CUDA GPU is visible; use --device=cpu or auto"),
    ("cuda:1", "error: --device=cuda:1 but no CUDA GPU is visible; use --device=cpu or auto"),
    ("tpu", "error: --device='tpu': use auto, cpu, cuda or cuda:N"),
    ("cuda:abc", "error: --device='cuda:abc': use auto, cpu, cuda or cuda:N"),
    ("cuda:-1", "error: --device='cuda:-1': use auto, cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize("device, error", DEVICES, ids=[d[0] for d in DEVICES])
def test_an_unusable_device_is_named_by_the_flag_given(trained_runs, capsys, device, error):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    main = runpy.run_path(str(REPO / "generate.py"))["main"]
    capsys.readouterr()
    assert (
        run_cli(main, ["--ckpt", str(trained_runs["gpt"]), "--prompt", "Hi.", "--device", device])
        == EXIT_USER_ERROR
    )
    out = capsys.readouterr()
    assert out.err.strip().splitlines() == [error] and not out.out


@pytest.mark.parametrize("name, local_rank", [("cuda:7", 0), ("cuda", 3)])
def test_a_gpu_this_host_does_not_have_is_one_line(monkeypatch, name, local_rank):
    """cuda:7 on a one-GPU host, or more torchrun ranks than GPUs: named, not 'invalid device ordinal'."""
    from gpthf.errors import ConfigError
    from gpthf.training.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"this host shows 2 GPU\(s\), cuda:0 to cuda:1"):
        resolve_device(name, local_rank, "impl.device")
    assert resolve_device("cuda:1", 0, "impl.device") == torch.device("cuda", 1)
