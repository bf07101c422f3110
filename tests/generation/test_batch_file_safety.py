"""`generate.py --output` end to end: a batch job never destroys its prompts file, writes into what
the output path really is (a file, a symlink's target, a device or FIFO), is refused with one line
where it cannot, and --resume completes a job whose results are all written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gpthf.batch_results import partial_path
from gpthf.cli import EXIT_USER_ERROR, run_cli
from tests.conftest import REPO
from tests.test_bad_input import read_only

PROMPTS = ["In the beginning", "And God said", "Let there be light.", "And it was so"]


@pytest.fixture(scope="module")
def main() -> Callable:
    return runpy.run_path(str(REPO / "generate.py"))["main"]


def job(trained_runs, *extra: str) -> list[str]:
    ckpt = str(trained_runs["gpthf"])
    return ["--ckpt", ckpt, "--max-new-tokens", "3", "--temperature", "0", "--batch-size", "2", *extra]


def prompts_file(path: Path, prompts: list[str] = PROMPTS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(prompts) + "\n")
    return path


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under `root`: a symlink's target, a file's bytes, or the kind of anything else."""
    entries: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            entries[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISREG(mode):
            entries[str(path)] = path.read_bytes()
        else:
            entries[str(path)] = stat.S_IFMT(mode)
    return entries


def refused(main: Callable, args: list[str], capsys) -> str:
    """The one error line of a refused command (exit 2, nothing on stdout)."""
    capsys.readouterr()
    code = run_cli(main, args)
    out = capsys.readouterr()
    assert code == EXIT_USER_ERROR, out.err[-2000:]
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert not out.out
    return lines[0]


def succeeds(main: Callable, args: list[str], capsys) -> str:
    capsys.readouterr()
    code = run_cli(main, args)
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    return err


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def device_node(path: Path, kind: int, major: int, minor: int) -> Path:
    """A device file of our own (never the machine's /dev/null, which a bug could replace)."""
    try:
        os.mknod(path, kind | 0o666, os.makedev(major, minor))
    except (PermissionError, AttributeError):
        pytest.skip("creating device files needs root on Linux")
    return path


# (name, files set up under tmp -> (--batch-file, --output, extra args)): each a way the prompts file
# is a file the job replaces or removes.
def _output_is_it(tmp: Path):
    batch = prompts_file(tmp / "prompts.txt")
    return batch, batch, []


def _dotdot_path(tmp: Path):
    batch = prompts_file(tmp / "prompts.txt")
    (tmp / "sub").mkdir()
    return batch, tmp / "sub" / ".." / "prompts.txt", []


def _relative_path(tmp: Path):
    batch = prompts_file(tmp / "prompts.txt")
    return batch, Path("prompts.txt"), []  # the test runs in tmp


def _hard_link(tmp: Path):
    batch = prompts_file(tmp / "prompts.txt")
    os.link(batch, tmp / "out.jsonl")
    return batch, tmp / "out.jsonl", []


def _output_symlink(tmp: Path):
    batch = prompts_file(tmp / "prompts.txt")
    (tmp / "out.jsonl").symlink_to("prompts.txt")
    return batch, tmp / "out.jsonl", []


def _batch_symlink_to_output(tmp: Path):
    out = prompts_file(tmp / "out.jsonl")  # an earlier job's output, or prompts kept under that name
    (tmp / "link.txt").symlink_to(out)
    return tmp / "link.txt", out, []


def _the_partial(tmp: Path):
    out = tmp / "out.jsonl"
    return prompts_file(partial_path(out)), out, []


def _the_partial_resumed(tmp: Path):
    out = tmp / "out.jsonl"
    return prompts_file(partial_path(out)), out, ["--resume"]


def _hard_link_to_the_partial(tmp: Path):
    out = tmp / "out.jsonl"
    batch = prompts_file(tmp / "prompts.txt")
    os.link(batch, partial_path(out))
    return batch, out, []


def _partial_of_a_symlinks_target(tmp: Path):
    target = tmp / "real" / "out.jsonl"
    target.parent.mkdir()
    (tmp / "out.jsonl").symlink_to(target)
    return prompts_file(partial_path(target)), tmp / "out.jsonl", []


def _through_proc_fd(tmp: Path):
    batch = prompts_file(tmp / "prompts.txt")
    fd = os.open(batch, os.O_RDONLY)  # closed with the process; a few bytes for a test run
    return Path(f"/proc/self/fd/{fd}"), batch, []


def _the_temporary_file(tmp: Path):
    out = tmp / "out.jsonl"
    return prompts_file(tmp / f".out.jsonl.tmp-{os.getpid()}"), out, []


SAME_FILE = [
    ("--output names it", _output_is_it),
    ("--output by a .. path", _dotdot_path),
    ("--output by a relative path", _relative_path),
    ("--output a hard link to it", _hard_link),
    ("--output a symlink to it", _output_symlink),
    ("--batch-file a symlink to the output", _batch_symlink_to_output),
    ("--batch-file the output's .partial", _the_partial),
    ("--batch-file the output's .partial, with --resume", _the_partial_resumed),
    ("--batch-file a hard link to the .partial", _hard_link_to_the_partial),
    ("--batch-file the .partial of a symlinked output's target", _partial_of_a_symlinks_target),
    ("--batch-file the output through /proc/self/fd", _through_proc_fd),
    ("--batch-file the output's temporary file", _the_temporary_file),
]


@pytest.mark.parametrize("name, setup", SAME_FILE, ids=[c[0] for c in SAME_FILE])
def test_a_batch_file_the_job_would_replace_is_refused(
    main, trained_runs, tmp_path, capsys, monkeypatch, name, setup
):
    monkeypatch.chdir(tmp_path)
    batch, out, extra = setup(tmp_path)
    before = snapshot(tmp_path)
    line = refused(main, job(trained_runs, "--batch-file", str(batch), "--output", str(out), *extra), capsys)
    assert "is the --batch-file itself" in line
    assert snapshot(tmp_path) == before, "a refused command touches nothing"


def test_a_batch_file_beside_the_output_is_fine(main, trained_runs, tmp_path, capsys):
    batch = prompts_file(tmp_path / "out.txt")  # a similar name, another file
    succeeds(main, job(trained_runs, "--batch-file", str(batch), "--output", str(tmp_path / "out")), capsys)
    assert batch.read_text() == "\n".join(PROMPTS) + "\n"
    assert [r["prompt"] for r in records((tmp_path / "out").read_text())] == PROMPTS


@pytest.fixture(scope="module")
def expected(trained_runs, tmp_path_factory) -> str:
    """The output of the job below, run plainly into a regular file."""
    tmp = tmp_path_factory.mktemp("plain")
    main = runpy.run_path(str(REPO / "generate.py"))["main"]
    out = tmp / "out.jsonl"
    with contextlib.redirect_stderr(io.StringIO()):
        assert (
            run_cli(
                main,
                job(trained_runs, "--batch-file", str(prompts_file(tmp / "p.txt")), "--output", str(out)),
            )
            == 0
        )
    return out.read_text()


def _read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as fifo:  # blocks until the job opens it for writing
            into.append(fifo.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_a_fifo_output_is_written_straight(main, trained_runs, tmp_path, capsys, expected):
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = _read_fifo(fifo, received)
    batch = prompts_file(tmp_path / "p.txt")
    succeeds(main, job(trained_runs, "--batch-file", str(batch), "--output", str(fifo)), capsys)
    reader.join(timeout=30)
    assert received and received[0].decode() == expected, "a reader of the pipe gets every result"
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the pipe is still a pipe, not replaced by a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt", "results"], "no partial file"


def test_a_character_device_output_is_written_straight(main, trained_runs, tmp_path, capsys):
    null = device_node(tmp_path / "null", stat.S_IFCHR, 1, 3)
    batch = prompts_file(tmp_path / "p.txt")
    succeeds(main, job(trained_runs, "--batch-file", str(batch), "--output", str(null)), capsys)
    assert stat.S_ISCHR(null.lstat().st_mode), "the device is still a device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "p.txt"], "no partial file"


def test_a_device_that_refuses_writes_is_one_error_line(main, trained_runs, tmp_path, capsys):
    full = device_node(tmp_path / "full", stat.S_IFCHR, 1, 7)  # /dev/full: every write fails
    batch = prompts_file(tmp_path / "p.txt")
    capsys.readouterr()
    assert (
        run_cli(main, job(trained_runs, "--batch-file", str(batch), "--output", str(full))) == EXIT_USER_ERROR
    )
    *progress, line = capsys.readouterr().err.strip().splitlines()  # found mid-job: the bar was drawn
    assert not any(p.startswith("error") for p in progress)
    assert line == f"error: cannot write {full} (No space left on device)", "nothing kept, so no --resume"


def _symlink_to_a_file(tmp: Path) -> tuple[Path, Path]:
    target = tmp / "real.jsonl"
    target.write_text("stale results\n")
    (tmp / "out.jsonl").symlink_to("real.jsonl")
    return tmp / "out.jsonl", target


def _dangling_symlink(tmp: Path) -> tuple[Path, Path]:
    (tmp / "out.jsonl").symlink_to("real.jsonl")
    return tmp / "out.jsonl", tmp / "real.jsonl"


def _symlink_into_another_folder(tmp: Path) -> tuple[Path, Path]:
    (tmp / "elsewhere").mkdir()
    target = tmp / "elsewhere" / "out.jsonl"
    target.write_text("stale results\n")
    (tmp / "out.jsonl").symlink_to(target)
    return tmp / "out.jsonl", target


def _chain_of_symlinks(tmp: Path) -> tuple[Path, Path]:
    target = tmp / "real.jsonl"
    target.write_text("stale results\n")
    (tmp / "middle.jsonl").symlink_to("real.jsonl")
    (tmp / "out.jsonl").symlink_to("middle.jsonl")
    return tmp / "out.jsonl", target


SYMLINKS = [
    ("to a file", _symlink_to_a_file),
    ("dangling", _dangling_symlink),
    ("into another folder", _symlink_into_another_folder),
    ("a chain of two", _chain_of_symlinks),
]


@pytest.mark.parametrize("name, setup", SYMLINKS, ids=[c[0] for c in SYMLINKS])
def test_a_symlink_output_is_followed(main, trained_runs, tmp_path, capsys, expected, name, setup):
    link, target = setup(tmp_path)
    links = {p: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink()}
    batch = prompts_file(tmp_path / "p.txt")
    succeeds(main, job(trained_runs, "--batch-file", str(batch), "--output", str(link)), capsys)
    assert {p: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink()} == links, "links kept"
    assert link.read_text() == target.read_text() == expected, "the link shows the fresh results"
    leftovers = [p.name for p in tmp_path.rglob("*") if ".partial" in p.name or ".tmp-" in p.name]
    assert not leftovers


def test_output_in_a_folder_that_does_not_exist_yet(main, trained_runs, tmp_path, capsys, expected):
    out = tmp_path / "new" / "deeper" / "out.jsonl"
    succeeds(
        main,
        job(trained_runs, "--batch-file", str(prompts_file(tmp_path / "p.txt")), "--output", str(out)),
        capsys,
    )
    assert out.read_text() == expected


def _socket(tmp: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp / "sock"))  # the file stays after the socket closes
    server.close()
    return tmp / "sock"


def _symlink_loop(tmp: Path) -> Path:
    (tmp / "a.jsonl").symlink_to("b.jsonl")
    (tmp / "b.jsonl").symlink_to("a.jsonl")
    return tmp / "a.jsonl"


def _symlink_to_a_folder(tmp: Path) -> Path:
    (tmp / "folder").mkdir()
    (tmp / "out.jsonl").symlink_to("folder")
    return tmp / "out.jsonl"


def _fifo_resumed(tmp: Path) -> Path:
    os.mkfifo(tmp / "results")
    return tmp / "results"


def _folder_of_a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("notes\n")
    return tmp / "notes.txt" / "out.jsonl"


BAD_OUTPUTS = [  # (name, the --output, extra args, error)
    ("a folder", lambda tmp: tmp, [], "is a folder; give a file name"),
    ("a symlink to a folder", _symlink_to_a_folder, [], "is a folder; give a file name"),
    ("a socket", _socket, [], "is neither a file, a character device nor a FIFO"),
    (
        "a block device",
        lambda tmp: device_node(tmp / "loop", stat.S_IFBLK, 7, 0),
        [],
        "is neither a file, a character device nor a FIFO",
    ),
    ("a symlink loop", _symlink_loop, [], "Too many levels of symbolic links"),
    ("in a folder that is a file", _folder_of_a_file, [], "Not a directory"),
    ("a FIFO with --resume", _fifo_resumed, ["--resume"], "no partial file to resume from; drop --resume"),
    (
        "a character device with --resume",
        lambda tmp: device_node(tmp / "null", stat.S_IFCHR, 1, 3),
        ["--resume"],
        "no partial file to resume from; drop --resume",
    ),
    (
        "in /proc, where no file can be made",
        lambda tmp: Path("/proc/gpthf-out.jsonl"),
        [],
        "cannot write to --output's folder",
    ),
]


@pytest.mark.parametrize("name, output, extra, error", BAD_OUTPUTS, ids=[c[0] for c in BAD_OUTPUTS])
def test_an_output_that_cannot_take_results_is_one_error_line(
    main, trained_runs, tmp_path, capsys, name, output, extra, error
):
    out = output(tmp_path)
    batch = prompts_file(tmp_path / "p.txt")
    before = snapshot(tmp_path)
    line = refused(main, job(trained_runs, "--batch-file", str(batch), "--output", str(out), *extra), capsys)
    assert error in line
    assert snapshot(tmp_path) == before


def test_output_in_a_read_only_folder_is_one_error_line(main, trained_runs, tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    batch = prompts_file(tmp_path / "p.txt")
    with read_only(folder):
        args = job(trained_runs, "--batch-file", str(batch), "--output", str(folder / "out.jsonl"))
        assert "cannot write to --output's folder" in refused(main, args, capsys)
    assert list(folder.iterdir()) == []


@pytest.fixture(scope="module")
def all_written(trained_runs, tmp_path_factory) -> bytes:
    """The partial file of the job above whose results were all written but whose final rename
    failed (a full disk refusing the complete copy)."""
    import gpthf.batch_results

    tmp = tmp_path_factory.mktemp("rename-failed")
    out = tmp / "out.jsonl"
    main = runpy.run_path(str(REPO / "generate.py"))["main"]

    replace = os.replace

    def full_disk(source, target):
        if Path(target) == out:
            raise OSError(28, "No space left on device")
        replace(source, target)

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err):
        patch.setattr(gpthf.batch_results.os, "replace", full_disk)
        args = job(trained_runs, "--batch-file", str(prompts_file(tmp / "p.txt")), "--output", str(out))
        assert run_cli(main, args) == EXIT_USER_ERROR
    assert "No space left on device" in err.getvalue() and "--resume" in err.getvalue()
    assert not out.exists()
    return partial_path(out).read_bytes()


def _first_lines(partial: bytes, results: int) -> bytes:
    return b"".join(partial.splitlines(keepends=True)[: 1 + results])  # the header, then results


RESUMES = [  # (name, prompts given, files there before: output?, partial's results, args, outcome)
    ("every result in the partial", PROMPTS, False, 4, ["--resume"], "completed"),
    ("every result in the partial, the output there too", PROMPTS, True, 4, ["--resume"], "completed"),
    ("a batch file of finished prompts only", PROMPTS[:3], False, 3, ["--resume"], "completed"),
    ("the output complete, no partial", PROMPTS, True, None, ["--resume"], "nothing to resume"),
    ("every result in the partial, no --resume", PROMPTS, False, 4, [], "error: "),
]


@pytest.mark.parametrize(
    "name, prompts, output_there, results, extra, outcome", RESUMES, ids=[c[0] for c in RESUMES]
)
def test_resume_completes_a_job_whose_results_are_all_written(
    main,
    trained_runs,
    tmp_path,
    capsys,
    expected,
    all_written,
    name,
    prompts,
    output_there,
    results,
    extra,
    outcome,
):
    out = tmp_path / "out.jsonl"
    want = "".join(expected.splitlines(keepends=True)[: len(prompts)])
    if output_there:
        out.write_text(want)
    if results is not None:
        partial_path(out).write_bytes(_first_lines(all_written, results))
    batch = prompts_file(tmp_path / "p.txt", prompts)
    args = job(trained_runs, "--batch-file", str(batch), "--output", str(out), *extra)
    capsys.readouterr()
    code = run_cli(main, args)
    err = capsys.readouterr().err
    assert outcome in err, err[-2000:]
    if outcome == "error: ":
        assert code == EXIT_USER_ERROR and "add --resume" in err and partial_path(out).exists()
        return
    assert code == 0 and len(err.strip().splitlines()) == 1, err[-2000:]
    assert out.read_text() == want, "the output holds exactly the results written before"
    assert not partial_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "p.txt"]


def test_a_batch_file_with_a_byte_order_mark_gives_the_same_results(
    main, trained_runs, tmp_path, capsys, expected
):
    batch = tmp_path / "bom.txt"
    batch.write_bytes(b"\xef\xbb\xbf" + "\n".join(PROMPTS).encode() + b"\n")
    out = tmp_path / "out.jsonl"
    succeeds(main, job(trained_runs, "--batch-file", str(batch), "--output", str(out)), capsys)
    assert out.read_text() == expected


def test_a_prompt_with_a_byte_order_mark_gives_the_same_output(main, trained_runs, capsys):
    outputs = []
    for prompt in ("And God said", "\ufeffAnd God said"):
        capsys.readouterr()
        assert run_cli(main, job(trained_runs, "--prompt", prompt)) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("And God said")
