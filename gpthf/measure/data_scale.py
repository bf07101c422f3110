"""What the data benchmark (`eval/data_bench.py`) needs: synthetic corpora of real text at any size,
and a command's wall time and peak memory summed over its process tree (preparation forks workers)."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpthf.data.sources import kjv_path
from gpthf.errors import ConfigError

VERSES_PER_PARAGRAPH = 30


def write_synthetic_corpus(folder: Path, size_bytes: int) -> int:
    """Copies of the embedded Bible, each book's verses shuffled differently per copy (so the text is
    real English but not a repetition BPE could memorise), one .txt file per book and copy, until
    `size_bytes` of text are written. Reuses a complete corpus left in `folder`; returns its size."""
    done = folder / "COMPLETE"
    if done.is_file():
        return int(done.read_text())
    books: dict[str, list[str]] = {}
    with kjv_path().open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            books.setdefault(verse["book"], []).append(verse["text"].strip())
    written, copy = 0, 0
    while written < size_bytes:
        copy_dir = folder / f"copy{copy:04d}"
        copy_dir.mkdir(parents=True, exist_ok=True)
        for b, (book, verses) in enumerate(books.items()):
            shuffled = random.Random(copy * 1000 + b).sample(verses, len(verses))
            paragraphs = [
                " ".join(shuffled[i : i + VERSES_PER_PARAGRAPH])
                for i in range(0, len(shuffled), VERSES_PER_PARAGRAPH)
            ]
            data = "\n\n".join(paragraphs).encode("utf-8")
            (copy_dir / f"{b:02d}-{book.replace(' ', '_')}.txt").write_bytes(data)
            written += len(data)
            if written >= size_bytes:
                break
        copy += 1
    done.write_text(str(written))
    return written


@dataclass
class ProcessRun:
    returncode: int
    wall_s: float
    peak_rss_bytes: int  # the largest sum of RSS over the process and all its descendants
    stdout: str
    stderr: str
    marks: dict[str, float]  # seconds from the start at which each watched file first existed


def run_measured(
    command: list[str], watch: dict[str, Callable[[], bool]] | None = None, interval_s: float = 0.1, **popen
) -> ProcessRun:
    """Run `command`, sampling its process tree's RSS every `interval_s`, and noting when each
    `watch` predicate (name → callable returning bool) first held."""
    try:
        import psutil
    except ImportError:
        raise ConfigError(
            'eval/data_bench.py measures memory with psutil: pip install -e ".[bench]"'
        ) from None

    marks: dict[str, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    root = psutil.Process(proc.pid)
    peak = 0
    out_parts, err_parts = [], []

    readers = [
        threading.Thread(target=lambda s=s, p=p: p.append(s.read()), daemon=True)
        for s, p in ((proc.stdout, out_parts), (proc.stderr, err_parts))
    ]
    for r in readers:
        r.start()
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            total = 0
            for p in tree:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
        except psutil.Error:
            pass
        for name, ready in (watch or {}).items():
            if name not in marks and ready():
                marks[name] = time.perf_counter() - start
        time.sleep(interval_s)
    wall = time.perf_counter() - start
    for r in readers:
        r.join()
    return ProcessRun(proc.returncode, wall, peak, "".join(out_parts), "".join(err_parts), marks)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
