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
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gpthf.batch_output import partial_path
from gpthf.cli import EXIT_USER_ERROR, run_cli
from tests.conftest import REPO
from tests.test_bad_input import last_error_with_files_limited_to, read_only

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


def _output_through_proc_fd(tmp: Path):
    batch = prompts_file(tmp / "prompts.txt")
    fd = os.open(batch, os.O_RDONLY)  # a stream now: appended to, which would spoil the prompts
    return batch, Path(f"/proc/self/fd/{fd}"), []


def _output_through_dev_fd(tmp: Path):
    batch = prompts_file(tmp / "prompts.txt")
    fd = os.open(batch, os.O_RDONLY)
    return batch, Path(f"/dev/fd/{fd}"), []


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
    ("--output the batch file through /proc/self/fd", _output_through_proc_fd),
    ("--output the batch file through /dev/fd", _output_through_dev_fd),
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


def _appended(tmp: Path) -> int:
    """A file opened as a shell's `>> log.txt` opens it, holding a line from before."""
    log = tmp / "log.txt"
    log.write_text("an earlier line\n")
    return os.open(log, os.O_WRONLY | os.O_APPEND)


def _truncated_then_written(tmp: Path) -> int:
    """`{ echo an earlier line; generate.py ...; } > log.txt`: the line went through the same descriptor."""
    fd = os.open(tmp / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"an earlier line\n")
    return fd


def _link_to_dev_stdout(tmp: Path) -> str:
    (tmp / "out.jsonl").symlink_to("/dev/stdout")
    return str(tmp / "out.jsonl")


OPEN_FILE_OUTPUTS = [  # (name, how the shell opened log.txt, the descriptor it is, the --output)
    ("/dev/stdout", _appended, 1, lambda tmp: "/dev/stdout"),
    ("/dev/fd/1", _appended, 1, lambda tmp: "/dev/fd/1"),
    ("/proc/self/fd/1", _appended, 1, lambda tmp: "/proc/self/fd/1"),
    ("/dev/stderr, with the progress bar", _appended, 2, lambda tmp: "/dev/stderr"),
    ("a symlink to /dev/stdout", _appended, 1, _link_to_dev_stdout),
    ("/dev/stdout, a file written with > before", _truncated_then_written, 1, lambda tmp: "/dev/stdout"),
]


@pytest.mark.parametrize(
    "name, open_log, fd, output", OPEN_FILE_OUTPUTS, ids=[c[0] for c in OPEN_FILE_OUTPUTS]
)
def test_an_output_that_is_an_open_file_is_appended_to(
    trained_runs, tmp_path, expected, name, open_log, fd, output
):
    """`generate.py --output /dev/stdout >> log.txt`: the results follow the log's lines, never
    replace the file."""
    log = open_log(tmp_path)
    batch = prompts_file(tmp_path / "p.txt")
    args = job(trained_runs, "--batch-file", str(batch), "--output", output(tmp_path))
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, ("stdout", "stderr")[fd - 1]: log}
    try:
        run = subprocess.run([sys.executable, "generate.py", *args], cwd=REPO, timeout=120, **streams)
    finally:
        os.close(log)
    assert run.returncode == 0
    text = (tmp_path / "log.txt").read_text()
    assert text.startswith("an earlier line\n"), "the file's earlier lines are kept"
    # On stderr the progress bar's redraws (no newline) share lines with the results.
    results = [line[line.index('{"index"') :] for line in text.splitlines() if '{"index"' in line]
    assert results == expected.splitlines()
    if fd == 1:
        assert text == "an earlier line\n" + expected
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == ["log.txt", "p.txt"]


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


def _open_file_resumed(tmp: Path) -> Path:
    log = tmp / "log.txt"  # as a shell's `>> log.txt` leaves stdout
    log.write_text("an earlier line\n")
    return Path(f"/dev/fd/{os.open(log, os.O_WRONLY | os.O_APPEND)}")


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
        "an open file (/dev/fd/N) with --resume",
        _open_file_resumed,
        ["--resume"],
        "no partial file to resume from; drop --resume",
    ),
    (
        "a file descriptor that is not open",
        lambda tmp: Path("/dev/fd/987"),
        [],
        "names a file descriptor that is not open",
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
    import gpthf.atomic

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
        patch.setattr(gpthf.atomic.os, "replace", full_disk)
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


START_FULL = [  # (name, the partial file there before)
    ("a new output", None),
    (
        "a partial file holding only a header",
        json.dumps({"gpthf_batch_job": {"checkpoint": "x" * 200}}) + "\n",
    ),
]


@pytest.mark.parametrize("name, partial", START_FULL, ids=[c[0] for c in START_FULL])
def test_a_disk_full_at_the_start_is_one_error_line_and_leaves_no_partial_file(
    trained_runs, tmp_path, name, partial
):
    """The kernel refuses the partial file's header (as a full disk would): one error line, exit 2,
    and no empty or torn partial file left behind (it held no results)."""
    out = tmp_path / "out.jsonl"
    if partial is not None:
        partial_path(out).write_text(partial)
    batch = prompts_file(tmp_path / "p.txt")
    args = job(trained_runs, "--batch-file", str(batch), "--output", str(out))
    last = last_error_with_files_limited_to(100, "generate.py", *args)  # the header is longer
    assert (
        last == f"error: could not write {partial_path(out)} (File too large; free space there or "
        "write elsewhere); no results were written"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]


def _fail_replacing_onto(out: Path, monkeypatch) -> None:
    replace = os.replace

    def full_disk(source, target):
        if Path(target) == out:
            raise OSError(28, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)


COMPLETION_FAILS = [  # (name, results in the partial before, extra args)
    ("the job's last step", None, []),
    ("--resume of a job whose results were all written", 4, ["--resume"]),
]


@pytest.mark.parametrize("name, results, extra", COMPLETION_FAILS, ids=[c[0] for c in COMPLETION_FAILS])
def test_a_failed_completion_is_one_clear_sentence(
    main, trained_runs, tmp_path, capsys, monkeypatch, all_written, name, results, extra
):
    out = tmp_path / "out.jsonl"
    if results is not None:
        partial_path(out).write_bytes(_first_lines(all_written, results))
    batch = prompts_file(tmp_path / "p.txt")
    _fail_replacing_onto(out, monkeypatch)
    capsys.readouterr()
    code = run_cli(main, job(trained_runs, "--batch-file", str(batch), "--output", str(out), *extra))
    *progress, line = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USER_ERROR and not any(p.startswith("error") for p in progress)
    assert line == (
        f"error: could not write {out} (No space left on device; free space there or write elsewhere); "
        f"4 of 4 results kept in {partial_path(out)}; the same command with --resume continues from there"
    )
    assert partial_path(out).read_bytes() == all_written, "every result kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl.partial", "p.txt"], "no temporary file"


OTHER = ["Once upon a time", "There was", "A king.", "The end"]
COMPLETE_OUTPUTS = [  # (name, prompts of the batch file, the output there, what --resume says)
    ("another batch file's results", OTHER, "expected", "(line 1: prompt 0 differs from the --batch-file's)"),
    (
        "a batch file of fewer prompts",
        PROMPTS[:3],
        "expected",
        "(it holds more results than the 3 prompts given)",
    ),
    ("a batch file of more prompts", [*PROMPTS, "The end"], "expected", "(it holds 4 results for 5 prompts)"),
    ("the same prompts in another order", PROMPTS[::-1], "expected", "(line 1: prompt 0 differs"),
    ("a file that is no results", PROMPTS, "notes\n", "(line 1 is not result 0 of a batch job)"),
    ("an empty file", PROMPTS, "", "(it holds 0 results for 4 prompts)"),
]


@pytest.mark.parametrize(
    "name, prompts, there, error", COMPLETE_OUTPUTS, ids=[c[0] for c in COMPLETE_OUTPUTS]
)
def test_resume_into_a_complete_output_of_other_prompts_is_refused(
    main, trained_runs, tmp_path, capsys, expected, name, prompts, there, error
):
    """`--resume` where the output is complete but holds other prompts' results: refused (their
    prompts would never be generated); without --resume the job runs and replaces it, as ever."""
    out = tmp_path / "out.jsonl"
    out.write_text(expected if there == "expected" else there)
    batch = prompts_file(tmp_path / "p.txt", prompts)
    before = snapshot(tmp_path)
    args = job(trained_runs, "--batch-file", str(batch), "--output", str(out))
    line = refused(main, [*args, "--resume"], capsys)
    assert line.startswith(f"error: --output {out} holds the results of other prompts {error}")
    assert line.endswith("give another --output, or drop --resume to replace it with this job's results")
    assert snapshot(tmp_path) == before
    succeeds(main, args, capsys)
    assert [r["prompt"] for r in records(out.read_text())] == prompts


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
