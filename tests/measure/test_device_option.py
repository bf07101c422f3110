"""`--device` of the benchmarks (compare.py, formats.py, batching.py): a GPU this host lacks is one
`error:` line and exit code 2, before any data is prepared or model loaded."""

import runpy

import pytest
import torch

from gpthf.cli import run_cli
from tests.conftest import REPO


def arguments(script: str, tmp_path) -> list[str]:
    """The script's required arguments, with the data cache where the test can see it was not made."""
    cache = tmp_path / "cache"
    return {
        "compare.py": ["--quick", "--no-hf", "--out", str(tmp_path / "out"), "--cache-dir", str(cache)],
        "formats.py": ["--quick", "--out", str(tmp_path / "out"), f"cache_dir={cache}"],
        "batching.py": ["--ckpt", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "out")],
    }[script]


@pytest.mark.parametrize("script", ["compare.py", "formats.py", "batching.py"])
@pytest.mark.parametrize(
    "device, gpus, message",
    [
        ("cuda", 0, "--device=cuda but no CUDA GPU is visible"),
        ("cuda:3", 1, "--device=cuda:3 (rank 0) but this host shows 1 GPU(s)"),
        ("tpu", 0, "--device='tpu': use auto, cpu, cuda or cuda:N"),
    ],
)
def test_a_device_this_host_lacks_is_one_error_line(
    script, device, gpus, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    main = runpy.run_path(str(REPO / "eval" / script))["main"]
    code = run_cli(main, [*arguments(script, tmp_path), "--device", device])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert not (tmp_path / "cache").exists(), "refused before any data was prepared"


@pytest.mark.parametrize("script", ["compare.py", "formats.py"])
def test_the_benchmarks_measure_on_the_cpu_unless_told(script):
    parse_args = runpy.run_path(str(REPO / "eval" / script))["parse_args"]
    assert parse_args([]).device == "cpu", "a GPU host's figures are asked for, never assumed"
