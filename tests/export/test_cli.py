"""`python -m gpthf export`: one `error:` line and exit 2 for what it cannot do, before any work;
the folder written whole, and only an earlier export replaced."""

from __future__ import annotations

import sys

from gpthf.__main__ import COMMANDS, main
from gpthf.cli import EXIT_USER_ERROR, run_cli


def export(*args: str) -> int:
    return run_cli(main, ["export", *map(str, args)])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    return err


def test_export_is_a_command():
    assert "export" in COMMANDS


def test_bad_inputs_are_one_error_line(trained, tmp_path, capsys):
    _, checkpoint = trained("gpt")
    assert export("--ckpt", tmp_path / "nope", "--out", tmp_path / "out") == EXIT_USER_ERROR
    assert "does not exist" in error_line(capsys)
    assert export("--ckpt", checkpoint, "--out", tmp_path / "out", "--dtype", "fp8") == EXIT_USER_ERROR
    assert "invalid choice: 'fp8'" in error_line(capsys)
    assert export("--ckpt", checkpoint) == EXIT_USER_ERROR
    assert "--out" in error_line(capsys)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert export("--ckpt", checkpoint, "--out", mine) == EXIT_USER_ERROR
    assert "exists and is not empty" in error_line(capsys)
    assert export("--ckpt", checkpoint, "--out", mine, "--force") == EXIT_USER_ERROR
    assert "replaces only a folder" in error_line(capsys)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "out").exists()


def test_export_writes_whole_and_force_replaces_an_earlier_export(trained, tmp_path, capsys):
    _, checkpoint = trained("gpt")
    out = tmp_path / "hf"
    assert export("--ckpt", checkpoint, "--out", out) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert export("--ckpt", checkpoint, "--out", out) == EXIT_USER_ERROR
    assert "--force" in error_line(capsys)
    assert export("--ckpt", checkpoint, "--out", out, "--force", "--dtype", "bf16") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"], "no staging folder left"
    assert '"torch_dtype": "bfloat16"' in (out / "config.json").read_text()


def test_without_transformers_the_error_names_the_extra(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` fails on
    assert export("--ckpt", trained("gpt")[1], "--out", tmp_path / "hf") == EXIT_USER_ERROR
    assert 'pip install ".[export]"' in error_line(capsys)
