"""`python -m gpthf lm-eval` (and `gpthf-lm-eval`): lm-eval's own command line with the gpthf model
registered, and what a user gets wrong there checked before lm-eval starts: one error line, exit 2,
and nothing written (every check first, the output folders created last)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import io
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpthf.errors import ConfigError
from gpthf.evaluation.harness import (
    MODEL_NAME,
    NO_CHAT_TEMPLATE,
    batch_size,
    check_model_args,
    generation_request,
    merged_model_args,
    positive,
)

if TYPE_CHECKING:
    from lm_eval._cli import HarnessCLI


COMMAND = "python -m gpthf lm-eval"
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")  # what gpthf uses
# a --limit below 1 is a fraction of each task's documents; below this one it is a typo, not a sample
MIN_LIMIT_FRACTION = 1e-6


def _data_files(folder: Path, task: str, seen: set) -> list[Path]:
    """The data files task `task` (or every task of group `task`) reads, defined in `folder`/`task`.yaml
    (the file of each of our tasks and groups is named after it)."""
    yaml_path = folder / f"{task}.yaml"
    if task in seen or not yaml_path.is_file():
        return []
    seen.add(task)
    text = yaml_path.read_text(encoding="utf-8")
    files = [folder / "data" / m for m in re.findall(r"^\s*data_file:\s*(\S+)", text, re.M)]
    for member in re.findall(r"^\s*-\s*(gpthf_\w+)\s*$", text, re.M):  # a group's tasks
        files += _data_files(folder, member, seen)
    return files


def check_task_data(tasks: list[str], include_path: str | None) -> None:
    """Our offline tasks read <task folder>/data/<task>.jsonl; a missing file is named before lm-eval
    loads anything (lm-eval itself would end in a traceback deep in its task loading)."""
    folders = [task_folder()] + [Path(p) for p in (include_path or "").split(",") if p]
    for task in tasks:
        for folder in folders:
            for data in _data_files(folder, task.strip(), set()):
                if not data.is_file():
                    raise ConfigError(
                        f"{data} (data of task {task}) is missing; rebuild it: python eval/tasks/build_data.py --out {data.parent}"
                    )


def check_run_args(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """`run`'s arguments as lm-eval parsed them, checked before it starts: what it would refuse only
    after seconds of task indexing and model loading (a --limit of 0 finds no documents, a negative
    one is a traceback from islice), or take silently (a negative --num_fewshot; an --output_path it
    cannot write, found only after the run, its results lost). Without --output_path, gpthf's results
    go beside the checkpoint's other results: <run>/eval/lm-eval/. Nothing is created here: the
    folders to write (--output_path's, --use_cache's) are returned, checked writable, for `cli` to
    create once lm-eval has found the tasks too (`create_folders`)."""
    from lm_eval.api.registry import model_registry

    from gpthf.evaluation.results import run_dir_of

    if args.tasks:  # `--tasks a,` is ["a", ""]: the empty name is no task
        args.tasks = [task.strip() for task in args.tasks if task.strip()]
        if not args.tasks:
            raise ConfigError(
                f"--tasks names no task; e.g. --tasks gpthf_offline (list them: {COMMAND} ls tasks)"
            )
    if not args.tasks and not args.config:
        raise ConfigError(f"no --tasks given; e.g. --tasks gpthf_offline (list them: {COMMAND} ls tasks)")
    limit = args.limit
    if limit is not None and not (MIN_LIMIT_FRACTION <= limit < 1 or (limit >= 1 and limit.is_integer())):
        raise ConfigError(  # nan, inf: no
            f"--limit {limit:g}: give a number of documents per task (e.g. 10) or a fraction of them from "
            f"{MIN_LIMIT_FRACTION:g} to below 1 (e.g. 0.1)"
        )
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ConfigError(f"--num_fewshot {args.num_fewshot}: give 0 or more examples")
    if getattr(args, "batch_size", None) is not None:
        batch_size("--batch_size", args.batch_size)
    if args.max_batch_size is not None:
        positive("--max_batch_size", args.max_batch_size)
    if args.model is not None and args.model not in model_registry.keys():
        close = difflib.get_close_matches(args.model, list(model_registry.keys()), n=1)
        hint = f"did you mean {close[0]}?" if close else f"gpthf's model is --model {MODEL_NAME}"
        raise ConfigError(f"--model {args.model!r} is not a model lm-eval knows; {hint}")
    folders = []
    if args.model == MODEL_NAME:
        if getattr(args, "apply_chat_template", False) not in (False, None, "false", "False"):
            raise ConfigError(NO_CHAT_TEMPLATE)
        model_args = args.model_args or {}
        general = {"batch_size": getattr(args, "batch_size", None), "device": args.device}
        flag = "--device" if args.device is not None and "device" not in model_args else None
        checked = check_model_args(merged_model_args(model_args, general, cuda_fallback=False), flag)
        unused = sorted(set(args.gen_kwargs or {}) - set(GEN_KWARGS))
        if unused:
            raise ConfigError(
                f"--gen_kwargs {', '.join(unused)}: not used by --model gpthf; it uses {', '.join(GEN_KWARGS)}"
            )
        generation_request(args.gen_kwargs or {}, checked["max_gen_toks"])
        if args.output_path is None and not args.config:
            args.output_path = str(run_dir_of(checked["ckpt"]) / "eval" / "lm-eval")
    if args.output_path:
        out = Path(args.output_path)  # lm-eval writes a .json path's folder, or into the folder given
        folders.append((out.parent if out.suffix == ".json" else out, "--output_path"))
    if getattr(args, "use_cache", None):  # lm-eval writes USE_CACHE_rank0.db, making its folder
        folders.append((Path(args.use_cache).parent, "--use_cache"))
    for folder, flag in folders:
        check_writable(folder, flag)
    if args.include_path and not Path(args.include_path).is_dir():
        raise ConfigError(
            f"--include_path {args.include_path} is not a folder; give the folder of task files"
        )
    check_task_data(args.tasks or [], args.include_path)
    return folders


def check_writable(folder: Path, flag: str) -> None:
    """`folder` could be created and written, tried in the nearest folder that exists (a probe file
    made and removed there), so a refused command leaves nothing behind."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"cannot write to {flag} {folder} ({existing} is not a folder); give a writable folder"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"cannot write to {flag} {folder} ({err.strerror}); give a writable folder"
        ) from None


def create_folders(folders: list[tuple[Path, str]]) -> None:
    """The folders `check_run_args` checked, created: the last step before lm-eval runs."""
    from gpthf.cli import writable_folder

    for folder, flag in folders:
        writable_folder(folder, flag)


def _parse(parser: HarnessCLI) -> argparse.Namespace:
    """lm-eval's arguments parsed; a mistake argparse finds (`--num_fewshot abc`, a model_args item
    without `=`) is one error line instead of its usage text and message."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            return parser.parse_args()
    except SystemExit as done:
        if done.code in (0, None):
            sys.stderr.write(printed.getvalue())
            raise
        last = (printed.getvalue().strip().splitlines() or ["invalid arguments"])[-1]
        message = last.split(" error: ", 1)[-1]  # argparse's `PROG: error: MESSAGE`
        if "--ckpt" in message:
            message += "; give the checkpoint as --model_args ckpt=PATH"
        raise ConfigError(f"{message} (see {COMMAND} --help)") from None


def _one_line(function: Callable, errors: tuple[type[Exception], ...], hint: str = "") -> Callable:
    @functools.wraps(function)
    def checked(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except errors as err:
            raise ConfigError(f"{err}{hint}") from None

    return checked


@contextlib.contextmanager
def _lm_eval_checks_are_one_line(tasks_found_then: Callable[[], object] = lambda: None) -> Iterator[None]:
    """lm-eval raises a plain ValueError (or TypeError, FileNotFoundError) for a user's mistake and
    for its own faults alike, so only what it raises where it checks the user's input becomes one
    error line: a run's settings (`EvaluatorConfig.from_cli`: --samples with --limit, a bad --config
    file), the task names (`process_tasks`), and more few-shot examples than a task has documents to
    draw them from (`ContextSampler.sample`). Everything else keeps its traceback. Once the tasks
    are found, `tasks_found_then` runs (the command's folders are created then, not before)."""
    from lm_eval.api.samplers import ContextSampler
    from lm_eval.config.evaluate_config import EvaluatorConfig

    hint = f"; list the tasks with: {COMMAND} ls tasks --include_path {task_folder()}"
    process_tasks = _one_line(EvaluatorConfig.process_tasks, (ValueError, FileNotFoundError), hint)
    sample = ContextSampler.sample

    def tasks_found(config, *args, **kwargs):
        manager = process_tasks(config, *args, **kwargs)
        if not config.tasks:  # e.g. --tasks naming a folder without task files
            raise ConfigError(f"no task found in --tasks{hint}")
        tasks_found_then()
        return manager

    def few_shot(sampler, n: int, *args, **kwargs):
        try:
            return sample(sampler, n, *args, **kwargs)
        except ValueError:
            available = len(sampler.fewshot_docs())
            if n < available:  # not random.sample's "larger than the population": a fault
                raise
            raise ConfigError(
                f"--num_fewshot {n} is more examples than a task has documents to draw them from "
                f"({available}, the one asked about among them); ask for fewer"
            ) from None

    patches = [
        (EvaluatorConfig, "from_cli", classmethod(
            _one_line(EvaluatorConfig.from_cli.__func__, (ValueError, TypeError, FileNotFoundError))
        )),
        (EvaluatorConfig, "process_tasks", tasks_found),
        (ContextSampler, "sample", few_shot),
    ]  # fmt: skip
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    for owner, name, checked in patches:
        setattr(owner, name, checked)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def cli(argv: list[str] | None = None) -> int:
    """lm-eval's command line (`lm_eval ...`, same arguments) with the gpthf model registered; what
    a user gets wrong is a `GpthfError` (one error line), found before lm-eval starts where it can be."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    argv = sys.argv[1:] if argv is None else argv
    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        setup_logging()
        parser = HarnessCLI()
        args = _parse(parser)
        folders = check_run_args(args) if args.command == "run" else []
        with _lm_eval_checks_are_one_line(lambda: create_folders(folders)):
            parser.execute(args)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def main() -> int:
    """The `gpthf-lm-eval` console command."""
    from gpthf.cli import run_cli

    return run_cli(cli)


def task_folder() -> Path:
    """eval/tasks/ of this checkout: give it to lm-eval as --include_path."""
    return Path(__file__).resolve().parents[2] / "eval" / "tasks"
