"""A batch job's output file: results in input order, kept across a crash, resumed only when they
belong to the same job, never written by two processes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpthf.atomic import temporary_path
from gpthf.batch_output import BatchResultsError, check_batch_file, is_stream, partial_path
from gpthf.batch_results import HEADER_KEY, BatchResults, InputOrder, check_complete
from tests.conftest import REPO

PROMPTS = ["In the beginning", "And God said", "Let there be light.", "And it was so"]
SETTINGS = {"checkpoint": "/runs/a", "temperature": 0.0, "max_new_tokens": 20, "top_p": None}


def write_all(results: BatchResults, upto: int | None = None) -> None:
    for index in range(results.written, len(results.prompts) if upto is None else upto):
        results.write(index, PROMPTS[index], f" continuation {index}", [7] * index, "eod")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_input_order_hands_results_on_in_index_order():
    order = InputOrder(start=2)
    assert list(order.add(4, "d")) == []
    assert list(order.add(3, "c")) == []
    assert list(order.add(2, "b")) == [(2, "b"), (3, "c"), (4, "d")]
    assert list(order.add(5, "e")) == [(5, "e")]


def test_a_finished_job_leaves_only_its_results(tmp_path):
    out = tmp_path / "r.jsonl"
    results = BatchResults(out, PROMPTS, SETTINGS, resume=False)
    assert results.done == 0
    write_all(results, upto=2)
    assert not out.exists(), "the output appears only complete"
    kept = partial_path(out).read_text().splitlines()
    assert json.loads(kept[0]) == {HEADER_KEY: SETTINGS} and len(kept) == 3, "each result is on disk at once"
    write_all(results)
    results.finish()
    assert [r["index"] for r in lines(out)] == [0, 1, 2, 3]
    assert [r["prompt"] for r in lines(out)] == PROMPTS and lines(out)[3]["new_tokens"] == 3
    assert not partial_path(out).exists() and [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


def interrupted(tmp_path: Path, written: int, tail: str = "") -> Path:
    """An output whose job was killed after `written` results (and half a line, `tail`)."""
    out = tmp_path / "r.jsonl"
    results = BatchResults(out, PROMPTS, SETTINGS, resume=False)
    write_all(results, upto=written)
    results.close()
    if tail:
        with open(partial_path(out), "a") as file:
            file.write(tail)
    return out


def test_resume_continues_after_the_last_whole_line(tmp_path):
    out = interrupted(tmp_path, 2, tail='{"index": 2, "prompt": "Let th')
    results = BatchResults(out, PROMPTS, SETTINGS, resume=True)
    assert results.done == 2, "the torn line is not a result"
    write_all(results)
    results.finish()
    assert [r["index"] for r in lines(out)] == [0, 1, 2, 3] and lines(out)[2]["prompt"] == PROMPTS[2]


def test_resume_of_a_job_that_wrote_everything_only_completes_it(tmp_path):
    out = interrupted(tmp_path, len(PROMPTS))  # killed between its last line and the rename
    results = BatchResults(out, PROMPTS, SETTINGS, resume=True)
    assert results.done == len(PROMPTS)
    results.finish()
    assert len(lines(out)) == len(PROMPTS)


REFUSED = [  # (name, how the job or its file differs, error)
    ("no --resume", lambda out: {"resume": False}, "add --resume to continue it"),
    (
        "other settings",
        lambda out: {"settings": {**SETTINGS, "temperature": 0.8}},
        "temperature 0.0 then, 0.8 now",
    ),
    ("a setting added", lambda out: {"settings": {**SETTINGS, "seed": 1}}, "seed None then, 1 now"),
    (
        "the weights rewritten",
        lambda out: (
            _header(out, {**SETTINGS, "weights": "step 10"})
            or {"settings": {**SETTINGS, "weights": "step 20"}}
        ),
        "weights 'step 10' then, 'step 20' now",
    ),
    (
        "weights recorded then, not now",
        lambda out: _header(out, {**SETTINGS, "weights": "step 10"}),
        "weights 'step 10' then, None now",
    ),
    ("other prompts", lambda out: {"prompts": ["In the end", *PROMPTS[1:]]}, "line 2: prompt 0 differs"),
    ("fewer prompts", lambda out: {"prompts": PROMPTS[:1]}, "more results than the 1 prompts"),
    (
        "a damaged line before the last",
        lambda out: _rewrite(out, 2, "not json\n"),
        "line 3 of",
    ),
    ("results out of order", lambda out: _rewrite(out, 1, _line(1)), "line 2 of"),
    ("not our header", lambda out: _rewrite(out, 0, '{"results": 1}\n'), "not a gpthf batch job's file"),
]


def _line(index: int) -> str:
    return json.dumps({"index": index, "prompt": PROMPTS[index], "completion": ""}) + "\n"


def _header(out: Path, settings: dict) -> dict:
    return _rewrite(out, 0, json.dumps({HEADER_KEY: settings}) + "\n")


def _rewrite(out: Path, number: int, text: str) -> dict:
    partial = partial_path(out)
    kept = partial.read_text().splitlines(keepends=True)
    kept[number] = text
    partial.write_text("".join(kept))
    return {}


@pytest.mark.parametrize("name, change, error", REFUSED, ids=[c[0] for c in REFUSED])
def test_an_output_of_another_job_is_refused(tmp_path, name, change, error):
    out = interrupted(tmp_path, 3)
    job = {"prompts": PROMPTS, "settings": SETTINGS, "resume": True, **change(out)}
    before = partial_path(out).read_bytes()
    with pytest.raises(BatchResultsError, match=error.replace("(", r"\(")):
        BatchResults(out, job["prompts"], job["settings"], resume=job["resume"])
    assert partial_path(out).read_bytes() == before, "a refused file is left as it was"


def test_a_file_with_no_results_is_started_over(tmp_path):
    out = interrupted(tmp_path, 0)  # a header alone is kept while the job runs...
    assert not partial_path(out).exists(), "...and removed when it closes with nothing written"
    partial_path(out).write_text(json.dumps({HEADER_KEY: {"checkpoint": "/elsewhere"}}) + "\n")
    results = BatchResults(out, PROMPTS, SETTINGS, resume=False)  # nothing of value: no --resume needed
    assert results.done == 0
    write_all(results)
    results.finish()
    assert len(lines(out)) == len(PROMPTS)


def test_results_must_come_in_input_order(tmp_path):
    results = BatchResults(tmp_path / "r.jsonl", PROMPTS, SETTINGS, resume=False)
    with pytest.raises(ValueError, match="result 1 written where 0 is due"):
        results.write(1, PROMPTS[1], "", [], "eod")
    with pytest.raises(BatchResultsError, match="0 of 4 results written"):
        results.finish()
    results.close()


def test_a_second_process_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    holder = subprocess.Popen(  # another process holding the job open
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from gpthf.batch_results import BatchResults; "
            f"r = BatchResults(Path({str(out)!r}), ['a'], {{}}, resume=False); print('open', flush=True); "
            "time.sleep(30)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        started = time.monotonic()
        with pytest.raises(BatchResultsError, match="another process is writing"):
            BatchResults(out, ["a"], {}, resume=True)
        assert time.monotonic() - started < 5, "refused at once, not after waiting"
    finally:
        holder.kill()
        holder.wait()
    results = BatchResults(out, ["a"], {}, resume=True)  # the lock goes with its process
    results.close()


def test_a_header_without_a_setting_recorded_later_still_resumes(tmp_path):
    out = interrupted(tmp_path, 2)  # its header has no "weights"
    results = BatchResults(out, PROMPTS, {**SETTINGS, "weights": "step 20"}, resume=True)
    assert results.done == 2
    results.close()


def test_a_stream_output_is_written_straight_and_cannot_be_resumed(tmp_path):
    import os
    import threading

    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    results = BatchResults(fifo, PROMPTS, SETTINGS, resume=False)
    assert results.stream and results.partial is None
    write_all(results, upto=1)
    assert "1 of 4 results went to" in results.kept() and "cannot be resumed" in results.kept()
    write_all(results)
    results.finish()
    reader.join(timeout=30)
    assert [json.loads(line)["index"] for line in received[0].splitlines()] == [0, 1, 2, 3], "no header"
    assert [p.name for p in tmp_path.iterdir()] == ["results"], "no partial file, no rename"
    with pytest.raises(BatchResultsError, match="no partial file to resume from"):
        BatchResults(fifo, PROMPTS, SETTINGS, resume=True)


def test_a_symlinked_output_is_written_through_its_target(tmp_path):
    target = tmp_path / "runs" / "r.jsonl"
    target.parent.mkdir()
    target.write_text("stale\n")
    link = tmp_path / "r.jsonl"
    link.symlink_to(target)
    results = BatchResults(link, PROMPTS, SETTINGS, resume=False)
    assert results.partial == partial_path(target), "the partial lies beside the target, its rename's folder"
    write_all(results)
    results.finish()
    assert link.is_symlink() and [r["index"] for r in lines(link)] == [0, 1, 2, 3]


def _open(path: Path) -> int:
    path.write_text("an earlier line\n")
    return os.open(path, os.O_WRONLY | os.O_APPEND)  # closed with the process; a few for a test run


def _link_to_proc_fd(tmp: Path) -> Path:
    (tmp / "out.jsonl").symlink_to(f"/proc/self/fd/{_open(tmp / 'log.txt')}")
    return tmp / "out.jsonl"


def _dotdot_into_dev_fd(tmp: Path) -> Path:
    return Path(f"/dev/shm/../fd/{_open(tmp / 'log.txt')}")  # /dev/shm/.. is /dev


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


def _plain_file_under_dev_shm(tmp: Path) -> Path:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    return Path(f"/dev/shm/gpthf-test-{os.getpid()}.jsonl")  # a tmpfs: renames work, not a stream


def _link_to_a_file(tmp: Path) -> Path:
    (tmp / "real.jsonl").write_text("")
    (tmp / "out.jsonl").symlink_to("real.jsonl")
    return tmp / "out.jsonl"


STREAMS = [  # (name, the --output, whether it is a stream)
    ("/proc/self/fd/N of a plain file", lambda tmp: Path(f"/proc/self/fd/{_open(tmp / 'log.txt')}"), True),
    ("/dev/fd/N of a plain file", lambda tmp: Path(f"/dev/fd/{_open(tmp / 'log.txt')}"), True),
    ("a symlink to /proc/self/fd/N", _link_to_proc_fd, True),
    ("a .. path into /dev/fd", _dotdot_into_dev_fd, True),
    ("/dev/stdout", lambda tmp: Path("/dev/stdout"), True),  # whatever pytest made stdout
    ("a FIFO", _fifo, True),
    ("a plain file", lambda tmp: tmp / "out.jsonl", False),
    ("a symlink to a plain file", _link_to_a_file, False),
    ("a new file under /dev/shm", _plain_file_under_dev_shm, False),
]


@pytest.mark.parametrize("name, output, stream", STREAMS, ids=[c[0] for c in STREAMS])
def test_what_is_a_stream(tmp_path, name, output, stream):
    assert is_stream(output(tmp_path)) == stream


def test_a_stream_that_is_an_open_plain_file_is_appended_to(tmp_path):
    """/dev/stdout with the shell's stdout a plain file (`>> log.txt`): no partial, no rename, and
    the file's earlier lines stay."""
    log = tmp_path / "log.txt"
    fd = _open(log)
    try:
        results = BatchResults(Path(f"/proc/self/fd/{fd}"), PROMPTS, SETTINGS, resume=False)
        assert results.stream and results.partial is None
        write_all(results)
        results.finish()
    finally:
        os.close(fd)
    kept, *written = log.read_text().splitlines()
    assert kept == "an earlier line" and [json.loads(line)["index"] for line in written] == [0, 1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_the_temporary_file_refused_as_a_batch_file_is_the_one_finish_writes(tmp_path, monkeypatch):
    """check_batch_file and finish() name the temporary file alike (atomic.temporary_path)."""
    out = tmp_path / "r.jsonl"
    seen = []
    replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda source, target: seen.append(Path(source)) or replace(source, target)
    )
    results = BatchResults(out, PROMPTS, SETTINGS, resume=False)
    write_all(results)
    results.finish()
    assert seen == [temporary_path(out)]
    seen[0].write_text("prompts\n")
    with pytest.raises(BatchResultsError, match="temporary file .* is the --batch-file itself"):
        check_batch_file(seen[0], out)


def test_a_failed_completion_keeps_every_result_and_no_temporary_file(tmp_path, monkeypatch):
    from gpthf.atomic import WriteFailed

    out = tmp_path / "r.jsonl"
    results = BatchResults(out, PROMPTS, SETTINGS, resume=False)
    write_all(results)
    monkeypatch.setattr(
        os, "replace", lambda source, target: (_ for _ in ()).throw(OSError(28, "No space left"))
    )
    with pytest.raises(WriteFailed, match=f"; the results stay in {partial_path(out)}$"):
        results.finish()
    results.close()
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl.partial"] and len(lines(partial_path(out))) == 5


def _results(prompts: list[str]) -> str:
    return "".join(
        json.dumps({"index": i, "prompt": p, "completion": "."}) + "\n" for i, p in enumerate(prompts)
    )


COMPLETE = [  # (name, the complete output's text, what check_complete says of it for PROMPTS; None: ours)
    ("these prompts' results", _results(PROMPTS), None),
    ("other prompts'", _results(["x", *PROMPTS[1:]]), "line 1: prompt 0 differs"),
    ("one result more", _results([*PROMPTS, "x"]), "more results than the 4 prompts"),
    ("one result fewer", _results(PROMPTS[:3]), "holds 3 results for 4 prompts"),
    (
        "a result missing mid-way",
        _results(PROMPTS).replace('"index": 2', '"index": 7'),
        "line 3 is not result 2",
    ),
    ("a torn last line", _results(PROMPTS)[:-1], "line 4 is not result 3"),
    ("not UTF-8", "\udcff", "cannot read --output"),
]


@pytest.mark.parametrize("name, text, error", COMPLETE, ids=[c[0] for c in COMPLETE])
def test_a_complete_output_counts_as_done_only_for_its_own_prompts(tmp_path, name, text, error):
    out = tmp_path / "r.jsonl"
    out.write_bytes(text.encode("utf-8", "surrogateescape"))
    if error is None:
        check_complete(out, PROMPTS)
        return
    with pytest.raises(BatchResultsError, match=error):
        check_complete(out, PROMPTS)
