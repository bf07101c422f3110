"""The bad-input table: each way a user can hand the tools something wrong, and what they must get.

Every case runs a command-line entry point the way `python SCRIPT ARGS` does (in-process through
`run_cli`, which is what the scripts call) and expects either a clear error - exit code 2 and one
line on stderr naming the problem - or a correct result. In every case, nothing written before the
command (data cache, checkpoint, earlier runs) may change.

Cases that need the operating system's help (a read-only folder, a full disk) run as subprocesses
below the table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import resource
import runpy
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpthf.cli import EXIT_USER_ERROR, run_cli
from gpthf.config import load_config
from gpthf.data.dataset import STATS_FILE, prepare_data
from tests.conftest import REPO, TALES, run_overrides, tiny_overrides
from tests.data.test_readers import COMPRESS, parquet

WORDS = "the of and to in a is that for it as with was on be by".split()


def _words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass(frozen=True)
class Workspace:
    """What a user already has on disk when they make a mistake."""

    root: Path
    cache: Path  # a data cache holding one finished build
    checkpoint: Path  # a finished GPTHF checkpoint
    outputs: Path  # a folder of runs
    other_tokenizer: Path  # tokenizer.json of a build with another vocabulary

    def corpus(self, name: str, content: bytes, file: str = "corpus.txt") -> Path:
        folder = self.root / "corpora" / name
        folder.mkdir(parents=True)
        (folder / file).write_bytes(content)
        return folder

    def damaged_cache(self, name: str, file: str) -> Path:
        """A copy of the workspace's data cache with one shard file cut short."""
        build = self.other_tokenizer.parent  # the tales build every case starts with
        copy = self.root / "damaged" / name
        shutil.copytree(build, copy / build.name)
        target = copy / build.name / "shards" / "00000" / file
        target.write_bytes(target.read_bytes()[:-3])
        return copy

    def broken_checkpoint(self, name: str, damage: Callable[[Path], None]) -> Path:
        copy = self.root / "broken" / name
        shutil.copytree(self.checkpoint, copy)
        damage(copy)
        return copy


@pytest.fixture(scope="module")
def workspace(trained_runs, tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("user")
    tales = root / "tales"
    tales.mkdir()
    for i, tale in enumerate(TALES):
        (tales / f"tale{i}.txt").write_text(tale)
    other = prepare_data(load_config(tiny_overrides(root / "cache", tales)), progress=False)
    outputs = root / "outputs"
    shutil.copytree(trained_runs["gpthf"], outputs / "gpthf-kjv" / trained_runs["gpthf"].name)
    checkpoint = root / "checkpoint"
    shutil.copytree(trained_runs["gpthf"] / "checkpoints" / "final", checkpoint)
    return Workspace(root, root / "cache", checkpoint, outputs, other.path / "tokenizer.json")


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


SCRIPTS: dict[str, Callable[[], Callable]] = {
    "prepare": lambda: __import__("gpthf.data.prepare", fromlist=["main"]).main,
    "pretrain": lambda: runpy.run_path(str(REPO / "pretrain.py"))["main"],
    "generate": lambda: runpy.run_path(str(REPO / "generate.py"))["main"],
    **{
        name: (lambda n=name: runpy.run_path(str(REPO / "eval" / f"{n}.py"))["main"])
        for name in ("compare", "perplexity", "downstream")
    },
}


@dataclass(frozen=True)
class Case:
    name: str
    script: str
    args: Callable[[Workspace], list[str]]
    error: str | None = None  # the problem the one-line error must name; None: the command succeeds
    check: Callable[[Workspace, str], None] | None = None  # (workspace, stdout) of a successful command
    env: dict[str, str] = field(default_factory=dict)  # environment variables set while it runs


def prepare_args(ws: Workspace, name: str, content: bytes, file: str = "corpus.txt") -> list[str]:
    return tiny_overrides(ws.cache, ws.corpus(name, content, file))


MALFORMED_JSONL = (
    b'not json\n{"text": null}\n{"text": 12345}\n{"text": ["a", "b"]}\n{"text": {"a": 1}}\n{"text": true}\n'
    b'{"body": "wrong field."}\n{"text": "caf\xe9 latin-1 bytes."}\n'
)
GOOD_LINES = [
    f'{{"text": "{_words(12, i).capitalize()}. {_words(8, i + 99)}."}}\n'.encode() for i in range(30)
]


def check_malformed_records_skipped(ws: Workspace, stdout: str) -> None:
    stats = newest_build(ws)
    assert stats["skipped_records"] == {
        "no text field": 1, "not JSON": 1, "text not a string": 5, "undecodable": 1
    }  # fmt: skip
    assert sum(s["documents"] for s in stats["splits"].values()) == 30, "every good record kept"
    assert "skipped records: 1 no text field, 1 not JSON, 5 text not a string, 1 undecodable" in stdout


def damaged_file(ws: Workspace, name: str, file: str, content: bytes, good: bool = True) -> Path:
    """A corpus folder holding the damaged `file`, beside a file of good records when `good`."""
    folder = ws.corpus(name, content, file)
    if good:
        (folder / "good.jsonl").write_bytes(b"".join(GOOD_LINES))
    return folder


def check_damaged_file_skipped(ws: Workspace, stdout: str) -> None:
    stats = newest_build(ws)
    assert stats["skipped_records"] == {"unreadable": 1}
    documents = sum(s["documents"] for s in stats["splits"].values())
    assert documents >= 30, "every good record kept (and those of a truncated file before its end)"
    assert "skipped records: 1 unreadable" in stdout


def check_scored_good_file(ws: Workspace, stdout: str) -> None:
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["tokens"] > 0 and math.isfinite(result["bits_per_byte"])


GOOD_JSONL = b"".join(GOOD_LINES)
RANDOM = bytes(range(256)) * 8  # not zstd, gzip or parquet
# Files with the right name for their format holding something that is not it, cut early enough that
# no record decodes (tests/data/test_readers.py has the full table against the reader, with records
# kept from before the damage; these go through the command lines).
DAMAGED_FILES = {
    "corrupt .jsonl.zst": ("c.jsonl.zst", lambda: RANDOM),
    "truncated .jsonl.zst": ("c.jsonl.zst", lambda: COMPRESS[".zst"](GOOD_JSONL)[:24]),
    "zero-byte .jsonl.zst": ("c.jsonl.zst", lambda: b""),
    "plain text named .jsonl.zst": ("c.jsonl.zst", lambda: GOOD_JSONL),
    "truncated .jsonl.gz": ("c.jsonl.gz", lambda: COMPRESS[".gz"](GOOD_JSONL)[:24]),
    "zero-byte .jsonl.gz": ("c.jsonl.gz", lambda: b""),
    "plain text named .jsonl.gz": ("c.jsonl.gz", lambda: GOOD_JSONL),
    "truncated .jsonl.bz2": ("c.jsonl.bz2", lambda: COMPRESS[".bz2"](GOOD_JSONL)[:24]),
    "plain text named .jsonl.xz": ("c.jsonl.xz", lambda: GOOD_JSONL),
    "truncated .parquet": ("c.parquet", lambda: parquet([f"Row {i}. It ends." for i in range(100)])[:-50]),
    "plain text named .parquet": ("c.parquet", lambda: GOOD_JSONL),
    "zero-byte .parquet": ("c.parquet", lambda: b""),
}


def damaged_content(what: str) -> tuple[str, bytes]:
    file, content = DAMAGED_FILES[what]
    return file, content()


# Those also built beside good files (a build each: one per format keeps the table quick).
BUILT_BESIDE_GOOD = ("corrupt .jsonl.zst", "truncated .jsonl.gz", "truncated .jsonl.bz2",
                     "plain text named .jsonl.xz", "truncated .parquet")  # fmt: skip


def damaged_file_cases() -> list[Case]:
    """Each damaged file alone (nothing left: one error naming it) and, for BUILT_BESIDE_GOOD, beside
    good files (skipped and counted, the build goes on)."""
    cases = []
    for what, (file, content) in DAMAGED_FILES.items():
        slug = what.replace(" ", "-")
        cases.append(
            Case(
                f"{what} alone",
                "prepare",
                lambda ws, s=slug, f=file, c=content: tiny_overrides(
                    ws.cache, damaged_file(ws, s + "-alone", f, c(), good=False)
                ),
                error=f"has no text: 1 unreadable (first at {file} (",
            )
        )
        if what in BUILT_BESIDE_GOOD:
            cases.append(
                Case(
                    f"{what} beside good files",
                    "prepare",
                    lambda ws, s=slug, f=file, c=content: tiny_overrides(
                        ws.cache, damaged_file(ws, s, f, c())
                    ),
                    check=check_damaged_file_skipped,
                )
            )
    return cases


def damaged_run_args(ws: Workspace, name: str, file: str) -> list[str]:
    tales = ws.root / "tales"
    return [
        *tiny_overrides(ws.damaged_cache(name, file), tales),
        "arch=gpthf-test", "train=test", "budget=2s", f"output_dir={ws.root / 'damaged-runs'}",
    ]  # fmt: skip


def perplexity_args(ckpt: Path, *extra: str) -> list[str]:
    return ["--ckpt", str(ckpt), "--samples", "0", *extra]


def generate_args(ckpt: Path, *extra: str) -> list[str]:
    return ["--ckpt", str(ckpt), "--max-new-tokens", "4", "--temperature", "0", *extra]


def newest_build(ws: Workspace) -> dict:
    build = max(ws.cache.glob(f"*/{STATS_FILE}"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(build.read_text())


def check_lines_become_sentences(ws: Workspace, stdout: str) -> None:
    stats = newest_build(ws)
    assert sum(s["sentences"] for s in stats["splits"].values()) == 120, "one sentence per line"
    assert all(s["rows"] > 0 for s in stats["splits"].values()), "every split holds rows"


def check_long_sentence_is_chunked(ws: Workspace, stdout: str) -> None:
    stats = newest_build(ws)
    train = stats["splits"]["train"]
    assert train["sentences"] == 1 and train["bytes"] > 1_000_000
    assert train["rows"] * stats["data_config"]["seq_len"] >= train["tokens"] > 1_000, "chunked, packed"


def check_trains_without_held_out_rows(ws: Workspace, stdout: str) -> None:
    assert "no validation rows" in stdout
    (run,) = (ws.root / "one-sentence-run" / "gpthf-local").glob("*/")
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()


def check_prompt_only(ws: Workspace, stdout: str) -> None:
    assert stdout.strip() == "And God said."


def check_two_outputs(ws: Workspace, stdout: str) -> None:
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[0] In the beginning") and lines[1].startswith("[1] And")


def batch_file(ws: Workspace, name: str, text: str) -> Path:
    path = ws.root / name
    path.write_text(text)
    return path


def unfinished_job(ws: Workspace, name: str) -> Path:
    """An --output whose job was interrupted after one result."""
    from gpthf.batch_output import partial_path
    from gpthf.batch_results import HEADER_KEY

    out = ws.root / name
    header = json.dumps({HEADER_KEY: {"checkpoint": str(ws.checkpoint)}})
    partial_path(out).write_text(header + "\n" + json.dumps({"index": 0, "prompt": "Hi."}) + "\n")
    return out


def truncate_weights(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def huge_sizes(ckpt: Path) -> None:
    meta = json.loads((ckpt / "config.json").read_text())
    meta["arch"].update(d_model=1 << 20, mlp_hidden=1 << 22)  # ~10^13 parameters if it were allocated
    (ckpt / "config.json").write_text(json.dumps(meta))


def edit_meta(seq_len: int | None = None, tokens: int | None = None) -> Callable[[Path], None]:
    """Damage: config.json's rows (data.seq_len) or context (context.tokens) edited."""

    def damage(ckpt: Path) -> None:
        meta = json.loads((ckpt / "config.json").read_text())
        if seq_len is not None:
            meta["data"]["seq_len"] = seq_len
        if tokens is not None:
            meta["context"]["tokens"] = tokens
        (ckpt / "config.json").write_text(json.dumps(meta))

    return damage


def change_width(ckpt: Path) -> None:
    meta = json.loads((ckpt / "config.json").read_text())
    meta["arch"]["d_model"] *= 2
    (ckpt / "config.json").write_text(json.dumps(meta))


def non_finite_weight(value: float, which: int) -> Callable[[Path], None]:
    """Damage: one value of the `which`-th tensor (sorted by name) of model.safetensors set to `value`."""

    def damage(ckpt: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(ckpt / "model.safetensors")
        name = sorted(weights)[which]
        weights[name].view(-1)[weights[name].numel() // 2] = value
        save_file(weights, ckpt / "model.safetensors")

    return damage


def resumable_run_with(ws: Workspace, name: str, damage: Callable[[Path], None]) -> list[str]:
    """Overrides resuming a copy of the workspace's run stopped at a step checkpoint, damaged."""
    from omegaconf import OmegaConf

    (run,) = (ws.outputs / "gpthf-kjv").glob("*/")
    outputs = ws.root / name
    copy = outputs / "gpthf-kjv" / run.name
    shutil.copytree(run, copy)
    step = copy / "checkpoints" / "step-00000010"
    (copy / "checkpoints" / "final").rename(step)
    damage(step)
    cache = OmegaConf.load(run / "config.yaml").cache_dir
    return run_overrides(Path(cache), outputs, "train.max_tokens=3000", "resume=true")


ONE_MB_SENTENCE = (_words(300_000)[:1_000_000] + ".").encode()

CASES = [
    Case("empty corpus", "prepare", lambda ws: prepare_args(ws, "empty", b"\n \n"), error="has no text"),
    Case(
        "binary corpus",
        "prepare",
        lambda ws: prepare_args(ws, "binary", bytes(range(256)) * 8),
        error="binary (first at corpus.txt (NUL bytes)",
    ),
    Case(
        "non-UTF-8 corpus",
        "prepare",
        lambda ws: prepare_args(ws, "latin1", "Café au lait. Très bien.".encode("latin-1") * 20),
        error="undecodable (first at corpus.txt byte 0xe9",
    ),
    Case(
        "jsonl with malformed records among good ones",
        "prepare",
        lambda ws: prepare_args(
            ws, "some-bad", b"".join(GOOD_LINES[:10]) + MALFORMED_JSONL + b"".join(GOOD_LINES[10:]), "c.jsonl"
        ),
        check=check_malformed_records_skipped,
    ),
    Case(
        "jsonl of malformed records only",
        "prepare",
        lambda ws: prepare_args(ws, "all-bad", MALFORMED_JSONL, "c.jsonl"),
        error="has no text: 1 no text field (first at c.jsonl:7; set data.text_field",
    ),
    *damaged_file_cases(),
    Case(
        "perplexity --data with a corrupt .jsonl.zst beside a good file",
        "perplexity",
        lambda ws: perplexity_args(
            ws.checkpoint,
            "--max-rows",
            "2",
            "--data",
            str(damaged_file(ws, "ppl-zst", "c.jsonl.zst", RANDOM)),
        ),
        check=check_scored_good_file,
    ),
    Case(
        "perplexity --data of a corrupt .jsonl.zst",
        "perplexity",
        lambda ws: perplexity_args(
            ws.checkpoint, "--data", str(damaged_file(ws, "ppl-zst-alone", "c.jsonl.zst", RANDOM, good=False))
        ),
        error="has no text: 1 unreadable (first at c.jsonl.zst (zstd",
    ),
    Case(
        "perplexity --data of a truncated .parquet",
        "perplexity",
        lambda ws: perplexity_args(
            ws.checkpoint,
            "--data",
            str(damaged_file(ws, "ppl-pq", *damaged_content("truncated .parquet"), good=False)),
        ),
        error="has no text: 1 unreadable (first at c.parquet (",
    ),
    Case(
        "truncated token shard",
        "pretrain",
        lambda ws: damaged_run_args(ws, "tokens", "train.bin"),
        error="train.bin is corrupt or truncated",
    ),
    Case(
        "truncated row index",
        "pretrain",
        lambda ws: damaged_run_args(ws, "index", "train.idx"),
        error="train.idx is corrupt or truncated",
    ),
    Case(
        "no sentence punctuation at all",
        "prepare",
        lambda ws: prepare_args(ws, "lines", "\n".join(_words(9, i) for i in range(120)).encode()),
        check=check_lines_become_sentences,
    ),
    Case(
        "a 1 MB single sentence",
        "prepare",
        lambda ws: prepare_args(ws, "one-sentence", ONE_MB_SENTENCE),
        check=check_long_sentence_is_chunked,
    ),
    # (a prepare row that logs must come before the in-process training rows: hydra leaves its log
    # file handler on the run folder of the last training run, where later log lines would land)
    Case(
        "seq_len at the bound",
        "prepare",
        lambda ws: tiny_overrides(
            ws.cache, ws.root / "tales", seq_len=65536, max_sentence_len=16, num_proc=1
        ),
        check=lambda ws, out: (
            None if newest_build(ws)["data_config"]["seq_len"] == 65536 else pytest.fail(out)
        ),
    ),
    Case(
        "training on a 1 MB single sentence",
        "pretrain",
        lambda ws: [
            *prepare_args(ws, "one-sentence-train", ONE_MB_SENTENCE),
            "arch=gpthf-test",
            "train=test",
            "budget=2s",
            f"output_dir={ws.root / 'one-sentence-run'}",
        ],
        check=check_trains_without_held_out_rows,
    ),
    Case(
        "truncated checkpoint",
        "generate",
        lambda ws: generate_args(ws.broken_checkpoint("truncated", truncate_weights), "--prompt", "Hi."),
        error="are unreadable",
    ),
    Case(
        "a NaN in the weights, greedy",
        "generate",
        lambda ws: generate_args(
            ws.broken_checkpoint("nan", non_finite_weight(float("nan"), 0)), "--prompt", "Hi."
        ),
        error="are damaged: tensor 'embed.weight' holds 1 NaN and 0 infinite values",
    ),
    Case(
        "an inf in the weights, sampling",
        "generate",
        lambda ws: generate_args(
            ws.broken_checkpoint("inf", non_finite_weight(float("inf"), -1)),
            "--prompt",
            "Hi.",
            "--temperature",
            "1",
        ),
        error="holds 0 NaN and 1 infinite values",
    ),
    Case(
        "a -inf in the weights, perplexity",
        "perplexity",
        lambda ws: perplexity_args(
            ws.broken_checkpoint("ninf", non_finite_weight(float("-inf"), 3)), "--max-rows", "2"
        ),
        error="holds 0 NaN and 1 infinite values; use another checkpoint",
    ),
    Case(
        "a NaN in the weights, perplexity --data",
        "perplexity",
        lambda ws: perplexity_args(
            ws.broken_checkpoint("nan-ppl", non_finite_weight(float("nan"), 5)),
            "--data",
            str(ws.root / "tales"),
        ),
        error="holds 1 NaN and 0 infinite values",
    ),
    Case(
        "resume from a checkpoint with NaN weights",
        "pretrain",
        lambda ws: resumable_run_with(ws, "nan-resume", non_finite_weight(float("nan"), 2)),
        error="to resume the run from an earlier one, delete",
    ),
    Case(
        "resume from a checkpoint with a NaN optimizer moment in train_state.pt",
        "pretrain",
        lambda ws: resumable_run_with(
            ws,
            "nan-state-resume",
            __import__("tests.training.test_checkpoint", fromlist=["x"]).nan_in_optimizer_state,
        ),
        error="train_state.pt is damaged: entry 'optimizer.state.0.exp_avg_sq' holds 1 NaN and 0 infinite",
    ),
    Case(
        "config.json edited to huge sizes",
        "generate",
        lambda ws: generate_args(ws.broken_checkpoint("huge", huge_sizes), "--prompt", "Hi."),
        error="does not fit this model: its config.json describes",
    ),
    Case(
        "--ckpt naming the weights file",
        "generate",
        lambda ws: generate_args(ws.checkpoint / "model.safetensors", "--prompt", "And God said."),
        check=lambda ws, out: None if out.strip() else pytest.fail("no output"),
    ),
    Case(
        "--ckpt naming a file outside any checkpoint",
        "generate",
        lambda ws: generate_args(batch_file(ws, "notes.txt", "hello"), "--prompt", "Hi."),
        error="notes.txt is a file; give a checkpoint folder",
    ),
    Case(
        "unknown generate option",
        "generate",
        lambda ws: ["--ckpt", str(ws.checkpoint), "--prompt", "Hi.", "--tempreature", "0"],
        error="unrecognized arguments: --tempreature",
    ),
    Case(
        "negative max_tokens",
        "pretrain",
        lambda ws: ["train.max_tokens=-1000"],
        error="valid: 1 ≤ train.max_tokens",
    ),
    Case("a learning rate of 1e4", "pretrain", lambda ws: ["train.lr=1e4"], error="valid: 0 < train.lr ≤ 1"),
    Case("rope_base=0", "pretrain", lambda ws: ["arch.rope_base=0"], error="valid: 1 < arch.rope_base"),
    Case("seq_len=2", "pretrain", lambda ws: ["data.seq_len=2"], error="valid: 8 ≤ data.seq_len"),
    Case(
        "seq_len=1000000",
        "pretrain",
        lambda ws: ["data.seq_len=1000000"],
        error="data.seq_len=1000000 is out of range; valid: 8 ≤ data.seq_len ≤ 65536 (one row's 1,000,000² "
        "attention scores would take 3,725 GiB per head in fp32)",
    ),
    Case(
        "seq_len one past the bound",
        "prepare",
        lambda ws: ["data.seq_len=65537"],
        error="valid: 8 ≤ data.seq_len ≤ 65536",
    ),
    Case(
        "checkpoint config.json edited to seq_len=1000000, generate",
        "generate",
        lambda ws: generate_args(
            ws.broken_checkpoint("long-rows", edit_meta(seq_len=1_000_000)), "--prompt", "Hi."
        ),
        error="config.json is damaged: data.seq_len=1000000, out of the range training allows (8 ≤ data.seq_len ≤ 65536; one row's",
    ),
    Case(
        "checkpoint config.json edited to seq_len=1000000, perplexity",
        "perplexity",
        lambda ws: perplexity_args(ws.broken_checkpoint("long-rows-ppl", edit_meta(seq_len=1_000_000))),
        error="config.json is damaged: data.seq_len=1000000, out of the range",
    ),
    Case(
        "checkpoint config.json edited to a context of 10^9 tokens",
        "generate",
        lambda ws: generate_args(
            ws.broken_checkpoint("long-context", edit_meta(tokens=10**9)), "--prompt", "Hi."
        ),
        error="config.json is damaged: context.tokens=1000000000, out of the range",
    ),
    *[
        Case(
            f"checkpoint config.json with {what}, {script}",
            script,
            lambda ws, what=what, damage=damage, script=script: (
                (generate_args if script == "generate" else perplexity_args)(
                    ws.broken_checkpoint(
                        f"meta-{script}-{what}",
                        lambda ckpt: (ckpt / "config.json").write_text(
                            json.dumps(damage(json.loads((ckpt / "config.json").read_text())))
                        ),
                    )
                )
                + (["--prompt", "Hi."] if script == "generate" else [])
            ),
            error=f"config.json is damaged: {problem}",
        )
        for what, damage, problem in [
            (
                "a list, not an object",
                lambda m: [m],
                "it holds a list, not an object; use another checkpoint",
            ),
            ("no data", lambda m: {k: v for k, v in m.items() if k != "data"}, "data is missing"),
            (
                "no data.language",
                lambda m: {**m, "data": {k: v for k, v in m["data"].items() if k != "language"}},
                "data.language is missing",
            ),
            (
                "max_sentence_len 0",
                lambda m: {**m, "data": {**m["data"], "max_sentence_len": 0}},
                "data.max_sentence_len=0, out of the range training allows (2 ≤ data.max_sentence_len)",
            ),
            (
                "max_sentence_len null",
                lambda m: {**m, "data": {**m["data"], "max_sentence_len": None}},
                "data.max_sentence_len=null is not a whole number",
            ),
            (
                "max_sentence_len '32'",
                lambda m: {**m, "data": {**m["data"], "max_sentence_len": "32"}},
                'data.max_sentence_len="32" is not a whole number',
            ),
            (
                "an unknown context key",
                lambda m: {**m, "context": {**m["context"], "window": 9}},
                "context has unknown key(s) window (valid: tokens, sentences)",
            ),
            ("context a list", lambda m: {**m, "context": [64, 6]}, "context is a list, not an object"),
            (
                "context.sentences 0",
                lambda m: {**m, "context": {**m["context"], "sentences": 0}},
                "context.sentences=0, out of the range training allows (1 ≤ context.sentences ≤",
            ),
        ]
        for script in ("generate", "perplexity")
    ],
    Case(
        "keep_checkpoints=0",
        "pretrain",
        lambda ws: ["train.keep_checkpoints=0"],
        error="valid: 1 ≤ train.keep_checkpoints",
    ),
    Case("NaN learning rate", "pretrain", lambda ws: ["train.lr=nan"], error="train.lr=nan is out of range"),
    Case(
        "compare --threads 0",
        "compare",
        lambda ws: ["--threads", "0"],
        error="argument --threads: 0 must be > 0",
    ),
    Case(
        "compare --contexts 0",
        "compare",
        lambda ws: ["--contexts", "0"],
        error="argument --contexts: 0 must be > 0",
    ),
    Case(
        "compare --state-budget 0",
        "compare",
        lambda ws: ["--state-budget", "0"],
        error="argument --state-budget: 0 must be at least 1 byte",
    ),
    Case(
        "compare --state-budget that is not a size",
        "compare",
        lambda ws: ["--state-budget", "4 lots"],
        error="is not a size",
    ),
    Case(
        "compare --dtype fp16 on a CPU",
        "compare",
        lambda ws: ["--dtype", "fp16", "--out", str(ws.root / "cmp")],
        error="--dtype=fp16 is for CUDA devices",
    ),
    Case(
        "generate --dtype fp16 on a CPU",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--dtype", "fp16"),
        error="--dtype=fp16 is for CUDA devices",
    ),
    Case(
        "generate --compile with --strategy full",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--compile", "--strategy", "full"),
        error="--compile applies to --strategy cached",
    ),
    Case(
        "generate --compile without a C++ compiler",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--compile"),
        error="--compile on CPU needs a C++ compiler",
        env={"CXX": "no-such-compiler-gpthf"},
    ),
    Case(
        "generate --batch-size 0",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--batch-size", "0"),
        error="argument --batch-size: 0 must be > 0",
    ),
    Case(
        "generate --resume without --output",
        "generate",
        lambda ws: generate_args(
            ws.checkpoint, "--batch-file", str(batch_file(ws, "r.txt", "Hi.")), "--resume"
        ),
        error="--resume continues a job's --output file",
    ),
    Case(
        "generate --output onto the --batch-file",
        "generate",
        lambda ws: generate_args(
            ws.checkpoint,
            "--batch-file",
            str(batch_file(ws, "in.txt", "Hi.")),
            "--output",
            str(ws.root / "in.txt"),
        ),
        error="is the --batch-file itself",
    ),
    Case(
        "generate into the output of an unfinished job",
        "generate",
        lambda ws: generate_args(
            ws.checkpoint, "--prompt", "Hi.", "--output", str(unfinished_job(ws, "results.jsonl"))
        ),
        error="add --resume to continue it",
    ),
    Case(
        "generate --output into a folder",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--output", str(ws.root)),
        error="is a folder; give a file name",
    ),
    Case(
        "compare into an unwritable --out",
        "compare",
        lambda ws: ["--out", str(ws.checkpoint / "config.json" / "x")],
        error="cannot write to --out",
    ),
    Case(
        "perplexity --batch-size 0",
        "perplexity",
        lambda ws: ["--ckpt", str(ws.checkpoint), "--batch-size", "0"],
        error="argument --batch-size: 0 must be > 0",
    ),
    Case(
        "downstream --batch-size 0",
        "downstream",
        lambda ws: ["--ckpt", str(ws.checkpoint), "--batch-size", "0"],
        error="argument --batch-size: 0 must be > 0",
    ),
    Case(
        "perplexity --dtype fp16 on a CPU",
        "perplexity",
        lambda ws: ["--ckpt", str(ws.checkpoint), "--dtype", "fp16", "--device", "cpu"],
        error="--dtype=fp16 is for CUDA devices",
    ),
    Case(
        "perplexity without --ckpt",
        "perplexity",
        lambda ws: [],
        error="the following arguments are required: --ckpt",
    ),
    Case(
        "checkpoint of another arch",
        "generate",
        lambda ws: generate_args(ws.broken_checkpoint("wider", change_width), "--prompt", "Hi."),
        error="does not fit this model",
    ),
    Case(
        "checkpoint with the tokenizer of another vocabulary",
        "generate",
        lambda ws: generate_args(
            ws.broken_checkpoint("vocab", lambda c: shutil.copy(ws.other_tokenizer, c / "tokenizer.json")),
            "--prompt",
            "Hi.",
        ),
        error="holds a tokenizer of",
    ),
    Case(
        "tokenizer file missing",
        "generate",
        lambda ws: generate_args(
            ws.broken_checkpoint("no-tokenizer", lambda c: (c / "tokenizer.json").unlink()), "--prompt", "Hi."
        ),
        error="tokenizer.json is missing",
    ),
    Case(
        "checkpoint path missing",
        "generate",
        lambda ws: generate_args(ws.root / "nope", "--prompt", "Hi."),
        error="does not exist",
    ),
    Case(
        "override typo",
        "pretrain",
        lambda ws: [f"output_dir={ws.outputs}", "trian.lr=1"],
        error="unknown key 'trian.lr'",
    ),
    Case("unknown arch", "pretrain", lambda ws: ["arch=gpthf-huge"], error="gpthf-tiny"),
    Case(
        "budget of 0",
        "pretrain",
        lambda ws: [f"output_dir={ws.outputs}", "budget=0"],
        error="must be positive",
    ),
    Case(
        "negative budget",
        "pretrain",
        lambda ws: [f"output_dir={ws.outputs}", "budget=-1h"],
        error="is not a duration",
    ),
    Case(
        "resume with another arch",
        "pretrain",
        lambda ws: [f"output_dir={ws.outputs}", "resume=true", "arch=gpt-test"],
        error="no run of gpt-kjv",
    ),
    Case(
        "whitespace-only prompt",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", " \n\t "),
        error="prompt is empty",
    ),
    Case(
        "negative max_new_tokens",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--max-new-tokens", "-1"),
        error="must be >= 0",
    ),
    Case(
        "negative temperature",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--temperature", "-1"),
        error="0 = greedy",
    ),
    Case(
        "NaN temperature",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--temperature", "nan"),
        error="must be a finite number",
    ),
    Case(
        "infinite temperature",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--temperature", "inf"),
        error="must be a finite number",
    ),
    Case(
        "max_sentences=0",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--max-sentences", "0"),
        error="--max-sentences=0 must be >= 1",
    ),
    Case(
        "negative max_sentences",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Hi.", "--max-sentences", "-1"),
        error="--max-sentences=-1 must be >= 1",
    ),
    Case(
        "max_new_tokens=0",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "And God said.", "--max-new-tokens", "0"),
        check=check_prompt_only,
    ),
    Case(
        "batch file with blank lines",
        "generate",
        lambda ws: generate_args(
            ws.checkpoint,
            "--batch-file",
            str(batch_file(ws, "b.txt", "\nIn the beginning\n\n  \nAnd Moses said.\n")),
        ),
        check=check_two_outputs,
    ),
    Case(
        "batch file with a prompt longer than the model's context",
        "generate",
        lambda ws: generate_args(
            ws.checkpoint,
            "--batch-file",
            str(batch_file(ws, "long.txt", "\nIn the beginning.\n\n" + "Go. " * 100 + "\nAnd Moses said.\n")),
        ),
        error="prompt 1 (line 4 of",
    ),
    Case(
        "prompt longer than the model's context",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--prompt", "Go. " * 100),
        error="the prompt has",
    ),
    Case(
        "batch file of blank lines only",
        "generate",
        lambda ws: generate_args(ws.checkpoint, "--batch-file", str(batch_file(ws, "blank.txt", "\n  \n\n"))),
        error="has no prompts",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case: Case, workspace: Workspace, capsys, monkeypatch):
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    before = digest(workspace.root)
    main = SCRIPTS[case.script]()
    capsys.readouterr()
    code = run_cli(main, case.args(workspace))
    out = capsys.readouterr()
    if case.error is None:
        assert code == 0, out.err[-2000:]
        case.check(workspace, out.out)
    else:
        assert code == EXIT_USER_ERROR, out.err[-2000:]
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and case.error in lines[0], out.err
        assert not out.out, "an error prints nothing else (no half-echoed prompt)"
    after = digest(workspace.root)
    changed = [path for path, sha in before.items() if after.get(path) != sha]
    assert not changed, f"files written before the command were changed or removed: {changed[:5]}"
    assert not list(workspace.cache.glob("*.partial-*")), "no half-built data set is left behind"


# -- cases that need the operating system: read-only folders and a full disk ----------------------


@contextmanager
def read_only(folder: Path):
    """`folder` made unwritable, also for root (which ignores modes): chattr +i where the filesystem allows."""
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None
    immutable = (
        immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    )
    try:
        try:
            (folder / ".probe").touch()
        except OSError:
            yield
        else:
            (folder / ".probe").unlink()
            pytest.skip("no way to make a folder read-only on this machine (root, no chattr)")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_read_only_folders(tales_dir, tmp_path, capsys):
    from gpthf.data.prepare import main

    cache = tmp_path / "cache"
    with read_only(tales_dir):  # a read-only data folder is fine to read from
        assert run_cli(main, tiny_overrides(cache, tales_dir)) == 0
    before = digest(cache)
    capsys.readouterr()
    with read_only(cache):
        # a finished build is found without writing anything ...
        assert run_cli(main, tiny_overrides(cache, tales_dir)) == 0
        # ... and a new one that cannot be written is a one-line error naming the fix
        assert run_cli(main, tiny_overrides(cache, tales_dir, vocab_size=290)) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: cannot write the data cache under")
        and "cache_dir=" in err[0]
    )
    assert digest(cache) == before


def test_unwritable_output_dir(data_cache, tmp_path, capsys):
    main = runpy.run_path(str(REPO / "pretrain.py"))["main"]
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    with read_only(outputs):
        assert run_cli(main, run_overrides(data_cache, outputs, "train.max_tokens=400")) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: cannot create a run folder under")
        and "output_dir=" in err[0]
    )
    assert list(outputs.iterdir()) == []


def _limit_file_size(max_bytes: int) -> Callable[[], None]:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def last_error_with_files_limited_to(max_bytes: int, *command: str) -> str:
    """Run `python COMMAND...` where no file may grow past `max_bytes` (a full disk, as the kernel
    reports it); it must fail as a user error: its last stderr line. (The data, checkpoint, metrics,
    plot and result writers have their full-disk table in tests/test_faults.py.)"""
    run = subprocess.run(
        [sys.executable, *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size(max_bytes),
    )
    assert run.returncode == EXIT_USER_ERROR, run.stderr[-2000:]
    return run.stderr.strip().splitlines()[-1]


def test_disk_full_during_a_batch_job_keeps_what_was_written(trained_runs, tmp_path, capsys):
    """The kernel refuses the output file's growth, as a full disk would: one error line naming what
    was kept, and --resume, once there is room, finishes the job."""
    batch = tmp_path / "prompts.txt"
    batch.write_text("\n".join(f"In the beginning {i}" for i in range(12)) + "\n")
    out = tmp_path / "out.jsonl"
    job = generate_args(trained_runs["gpthf"], "--batch-file", str(batch), "--output", str(out))
    last = last_error_with_files_limited_to(1_200, "generate.py", *job)
    assert last.startswith("error: cannot write") and "results kept in" in last and "--resume" in last
    assert not out.exists()
    main = runpy.run_path(str(REPO / "generate.py"))["main"]
    assert run_cli(main, [*job, "--resume"]) == 0, capsys.readouterr().err[-2000:]
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == list(range(12))
