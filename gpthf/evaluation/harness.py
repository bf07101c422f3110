"""gpthf checkpoints in EleutherAI's lm-evaluation-harness: the `gpthf` model of lm-eval 0.4.

Every text is split into sentences and tokenized exactly as the training data was (each sentence
closed by <eos>, a context that stops mid-sentence left open), so the model sees what it was trained
on. `loglikelihood_rolling` packs the text into rows like the data pipeline and scores them like
`eval/perplexity.py`, so the two agree on any text. Generation runs through the `cached` strategies
with continuous batching.

lm-eval 0.4 looks models up in its own registry only (no plugin entry points), so the `lm_eval`
command cannot see a model another package defines. `python -m gpthf lm-eval ARGS` (or
`gpthf-lm-eval ARGS`) is lm-eval's own command line with `gpthf` registered; from Python,
`import gpthf.evaluation.harness` registers it for `lm_eval.simple_evaluate(model="gpthf", ...)`.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import torch

from gpthf.data.special_tokens import EOD_ID, SENTENCE_CLOSERS
from gpthf.errors import ConfigError, DataError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as err:  # the optional extra
    raise ConfigError('the lm-eval adapter needs lm-eval: pip install ".[eval]"') from err

MODEL_NAME = "gpthf"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@register_model(MODEL_NAME)
class GpthfLM(LM):
    """Any gpthf checkpoint (every model kind) as an lm-eval `LM`.

    model_args: ckpt (a checkpoint or run folder, required), dtype (fp32 | bf16 | fp16), batch_size,
    device (auto | cpu | cuda[:N]), max_length (context tokens kept; default the training row length).
    """

    def __init__(
        self,
        ckpt: str | None = None,
        dtype: str = "fp32",
        batch_size: int | str = 8,
        device: str | None = "auto",
        max_length: int | None = None,
        max_batch_size: int | None = None,  # lm-eval passes it; batches here are fixed
    ) -> None:
        super().__init__()
        from gpthf.data.splitter import build_splitter
        from gpthf.precision import DTYPE_NAMES
        from gpthf.training.checkpoint import load_checkpoint_tokenizer, load_model_from_checkpoint
        from gpthf.training.distributed import resolve_device

        if not ckpt:
            raise ConfigError("--model gpthf needs a checkpoint: --model_args ckpt=outputs/gpthf-kjv")
        if dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
        if str(batch_size).startswith("auto"):  # lm-eval's `auto[:N]`: no search here, the default size
            batch_size = 8
        self.batch_size = _positive("batch_size", batch_size)
        try:
            self._device = resolve_device(device or "auto", 0)
        except ConfigError:
            raise ConfigError(
                f"device={device!r}: no such device here; use device=cpu, cuda or cuda:N"
            ) from None
        self.model, self.meta, self.checkpoint = load_model_from_checkpoint(ckpt, self._device, dtype=dtype)
        self.model.eval()
        self.tokenizer = load_checkpoint_tokenizer(self.checkpoint, self.meta)
        self.splitter = build_splitter(self.meta["data"]["language"])
        self.max_sentence_len = self.meta["data"]["max_sentence_len"]
        self.max_length = _positive("max_length", max_length or self.meta["data"]["seq_len"])

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> GpthfLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> GpthfLM:
        """lm-eval's model_args, with an unknown key named instead of a TypeError; a value in
        model_args wins over the command line's general flags (--batch_size, --device)."""
        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(arg_dict) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown model_args key(s) for --model gpthf: {', '.join(unknown)}; valid: ckpt, dtype, "
                f"batch_size, device, max_length"
            )
        general = {k: v for k, v in (additional_config or {}).items() if v is not None and k in valid}
        if "device" in general and "device" not in arg_dict and not torch.cuda.is_available():
            general["device"] = "cpu"  # lm-eval's --device defaults to cuda; like its HF model, fall back
        return cls(**{**general, **arg_dict})

    # ---- text to tokens, as the training data ----------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Sentences of `text`, each closed by <eos>; a last sentence without its punctuation open."""
        from gpthf.generation.prompts import encode_prompt

        return (
            encode_prompt(text, self.tokenizer, self.splitter, self.max_sentence_len) if text.strip() else []
        )

    def _pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        """(tokens of context + continuation behind a document start, where the continuation starts).
        The whole is encoded at once (so a word split across the two is one token, as in training),
        and the continuation is what the context alone does not already encode."""
        whole = self.encode(context + continuation)
        start = min(common_prefix(self.encode(context), whole), len(whole) - 1)
        tokens = [EOD_ID, *whole]  # the model saw every document begin after another one's <eod>
        start += 1
        if len(tokens) > self.max_length:  # keep the continuation and the most recent whole sentences
            cut = len(tokens) - self.max_length
            if cut >= start:  # the continuation alone is too long: its oldest tokens go unscored
                return tokens[cut:], 1
            cut = next((i + 1 for i in range(cut, start - 1) if tokens[i] in SENTENCE_CLOSERS), cut)
            tokens, start = tokens[cut:], start - cut
        return tokens, start

    # ---- lm-eval's three requests -------------------------------------------------------------------

    @torch.inference_mode()
    def _score(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """(summed log-probability of tokens[start:], whether each is the argmax) of every row."""
        from gpthf.generation.strategies import pad_rows, sentence_ids_for

        results: list[tuple[float, bool] | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch together
        for begin in range(0, len(order), self.batch_size):
            batch = order[begin : begin + self.batch_size]
            ids, lengths = pad_rows([rows[i][0] for i in batch], self._device)
            logprobs = self.model(ids, sentence_ids_for(ids, lengths)).float().log_softmax(-1)
            for row, i in enumerate(batch):
                tokens, start = rows[i]
                targets = torch.tensor(tokens[start:], device=self._device)
                predicted = logprobs[row, start - 1 : len(tokens) - 1]
                chosen = predicted.gather(-1, targets[:, None]).squeeze(-1)
                results[i] = (float(chosen.sum()), bool((predicted.argmax(-1) == targets).all()))
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score([self._pair(*request.args) for request in requests])

    @torch.inference_mode()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log P(text): the text packed into rows like the training data and scored like perplexity.py
        (summed over every predicted token), so `-result` equals that script's nats on the text."""
        from gpthf.data.dataset import pack_text
        from gpthf.evaluation.perplexity import score

        results = []
        for request in requests:
            input_ids, sentence_ids, stats = pack_text(
                self.meta["data"], self.tokenizer, request.args[0], self.splitter
            )
            try:
                scored = score(self.model, input_ids, sentence_ids, max(stats["bytes"], 1), self.batch_size)
            except DataError:  # no token to predict (an empty text): log P = 0
                results.append(0.0)
                continue
            results.append(-scored.nats_per_token * scored.tokens)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, when asked) continuations cut at the first stop string; prompts run
        through continuous batching with `batch_size` slots."""
        from gpthf.generation import GenerationSettings, SamplingSettings, generate
        from gpthf.generation.prompts import decode_continuation

        outputs: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            _, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            key = (int(kwargs.get("max_gen_toks", 256)), temperature, tuple(until))
            groups.setdefault(key, []).append(i)
        for (max_new, temperature, until), members in groups.items():
            prompts = [self._prompt(requests[i].args[0], max_new) for i in members]
            settings = GenerationSettings(
                max_new_tokens=max_new,
                sampling=SamplingSettings(temperature=temperature),
                max_sentence_len=self.max_sentence_len,
            )
            result = generate(self.model, prompts, settings, slots=self.batch_size)
            for i, tokens in zip(members, result.tokens):
                text = decode_continuation(self.tokenizer, tokens)
                for stop in until:
                    if stop and stop in text:
                        text = text[: text.index(stop)]
                outputs[i] = text
        return outputs  # type: ignore[return-value]

    def _prompt(self, context: str, max_new: int) -> list[int]:
        tokens = [EOD_ID, *self.encode(context)]
        room = max(self.max_length - max_new, 1)
        return tokens[-room:]


def _positive(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a positive whole number") from None
    if number < 1:
        raise ConfigError(f"{name}={value!r} must be a positive whole number")
    return number


def _flag(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


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


def check_task_data(argv: list[str]) -> None:
    """Our offline tasks read <task folder>/data/<task>.jsonl; a missing file is named before lm-eval
    loads anything (lm-eval itself would end in a traceback deep in its task loading)."""
    folders = [task_folder()] + [Path(p) for p in (_flag(argv, "--include_path") or "").split(",") if p]
    for task in (_flag(argv, "--tasks", "-t") or "").split(","):
        for folder in folders:
            for data in _data_files(folder, task.strip(), set()):
                if not data.is_file():
                    raise ConfigError(
                        f"{data} (data of task {task}) is missing; rebuild it: python eval/tasks/build_data.py --out {data.parent}"
                    )


def default_output_path(argv: list[str]) -> list[str]:
    """Without --output_path, results go beside the checkpoint's other results: <run>/eval/lm-eval/."""
    from gpthf.evaluation.results import run_dir_of
    from gpthf.training.checkpoint import resolve_checkpoint

    if _flag(argv, "--output_path", "-o") is not None or _flag(argv, "--model") != MODEL_NAME:
        return []
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(_flag(argv, "--model_args", "-a") or "")
    if "ckpt" not in args:
        return []
    try:
        checkpoint = resolve_checkpoint(args["ckpt"])
    except Exception:  # let the model report a bad checkpoint in its own words
        return []
    return ["--output_path", str(run_dir_of(checkpoint) / "eval" / "lm-eval")]


def cli(argv: list[str] | None = None) -> int:
    """lm-eval's command line (`lm_eval ...`, same arguments) with the gpthf model registered."""
    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv[1:] if argv is None else argv
    check_task_data(argv)
    saved = sys.argv
    sys.argv = ["lm_eval", *argv, *default_output_path(argv)]
    try:
        cli_evaluate()
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
