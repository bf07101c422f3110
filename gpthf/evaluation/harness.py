"""gpthf checkpoints in EleutherAI's lm-evaluation-harness: the `gpthf` model of lm-eval 0.4.

Every text is split into sentences and tokenized exactly as the training data was (each sentence
closed by <eos>, a context that stops mid-sentence left open), so the model sees what it was trained
on. `loglikelihood_rolling` packs the text into rows like the data pipeline and scores them like
`eval/perplexity.py`, so the two agree on any text. Generation runs through the `cached` strategies
with continuous batching.

lm-eval 0.4 looks models up in its own registry only (no plugin entry points), so the `lm_eval`
command cannot see a model another package defines. `python -m gpthf lm-eval ARGS` (or
`gpthf-lm-eval ARGS`) is lm-eval's own command line with `gpthf` registered (`lm_eval_cli`); from
Python, `import gpthf.evaluation.harness` registers it for `lm_eval.simple_evaluate(model="gpthf")`.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING

import torch

from gpthf.config import NUMBER_RANGES, Range
from gpthf.data.special_tokens import EOD_ID, SENTENCE_CLOSERS
from gpthf.errors import ConfigError, DataError
from gpthf.precision import DEFAULT_DTYPE, DTYPE_NAMES

if TYPE_CHECKING:
    from gpthf.generation import ContextLimit, GenerationSettings

try:
    # lm-eval's own models, registered before ours: its `get_model` imports them only while its
    # registry is empty, so registering gpthf first would hide every other model
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as err:  # the optional extra
    raise ConfigError('the lm-eval adapter needs lm-eval: pip install ".[eval]"') from err

MODEL_NAME = "gpthf"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for a request that does not say
DEFAULT_BATCH_SIZE = 8  # also what `auto` means: no batch size search here


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
    device (auto | cpu | cuda[:N]), max_length (context tokens a scored request keeps, default the
    training row length; given, it also caps a generation prompt, which otherwise keeps what the
    model's own context limit allows), max_gen_toks (new tokens of a generation request that does
    not say, default 256).
    """

    def __init__(
        self,
        ckpt: str | None = None,
        dtype: str = DEFAULT_DTYPE,
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        device: str | None = "auto",
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        max_batch_size: int | None = None,  # lm-eval passes it; batches here are fixed
    ) -> None:
        super().__init__()
        from gpthf.data.splitter import build_splitter
        from gpthf.generation import ContextLimit
        from gpthf.loading import load_model_from_checkpoint
        from gpthf.training.checkpoint import load_checkpoint_tokenizer

        args = check_model_args(
            {"ckpt": ckpt, "dtype": dtype, "batch_size": batch_size, "device": device,
             "max_length": max_length, "max_gen_toks": max_gen_toks, "max_batch_size": max_batch_size}
        )  # fmt: skip
        self.batch_size, self._device = args["batch_size"], args["device"]
        self.max_gen_toks = args["max_gen_toks"]
        self.model, self.meta, self.checkpoint = load_model_from_checkpoint(
            args["ckpt"], self._device, dtype=dtype
        )
        self.model.eval()
        self.tokenizer = load_checkpoint_tokenizer(self.checkpoint, self.meta)
        self.splitter = build_splitter(self.meta.data["language"])
        self.max_sentence_len = self.meta.data["max_sentence_len"]
        self.limit = ContextLimit(**self.meta.context)  # what generate.py holds a prompt to
        self.prompt_tokens = args["max_length"]  # a generation prompt's cap, when the user set one
        self.max_length = args["max_length"] or self.meta.data["seq_len"]

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> GpthfLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> GpthfLM:
        """lm-eval's model_args, with an unknown key named instead of a TypeError; a value in
        model_args wins over the command line's general flags (--batch_size, --device)."""
        return cls(**merged_model_args(arg_dict, additional_config))

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
        start = common_prefix(self.encode(context), whole)  # len(whole): nothing to score, log P = 0
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
        """(summed log-probability of tokens[start:], whether each is the argmax) of every row; a row
        with no token to score (an empty continuation) is (0.0, True): log 1, and nothing missed."""
        from gpthf.generation.strategies import pad_rows, sentence_ids_for
        from gpthf.training.scoring import next_token_logprobs

        results: list[tuple[float, bool] | None] = [None] * len(rows)
        for i, (tokens, start) in enumerate(rows):
            if start >= len(tokens):
                results[i] = (0.0, True)
        scored = [i for i in range(len(rows)) if results[i] is None]
        order = sorted(scored, key=lambda i: -len(rows[i][0]))  # similar lengths batch together
        for begin in range(0, len(order), self.batch_size):
            batch = order[begin : begin + self.batch_size]
            ids, lengths = pad_rows([rows[i][0] for i in batch], self._device)
            logprobs, greedy = next_token_logprobs(
                self.model, ids, sentence_ids_for(ids, lengths), greedy=True
            )
            for row, i in enumerate(batch):
                tokens, start = rows[i]
                scored = slice(start - 1, len(tokens) - 1)  # the predictions of tokens[start:]
                results[i] = (float(logprobs[row, scored].sum()), bool(greedy[row, scored].all()))
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
                self.meta.data, self.tokenizer, request.args[0], self.splitter
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
        through continuous batching with `batch_size` slots, and stop where the model's context
        limit does (as in generate.py)."""
        from gpthf.generation import generate
        from gpthf.generation.prompts import decode_continuation

        outputs: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            key = generation_request(request.args[1], self.max_gen_toks, self.max_sentence_len, self.limit)
            groups.setdefault(key, []).append(i)
        for (settings, until), members in groups.items():
            prompts = [self._prompt(requests[i].args[0], settings.max_new_tokens) for i in members]
            result = generate(self.model, prompts, settings, slots=self.batch_size)
            for i, tokens in zip(members, result.tokens):
                text = decode_continuation(self.tokenizer, tokens)
                for stop in until:
                    if stop and stop in text:
                        text = text[: text.index(stop)]
                outputs[i] = text
        return outputs  # type: ignore[return-value]

    def _prompt(self, context: str, max_new_tokens: int = DEFAULT_MAX_GEN_TOKS) -> list[int]:
        """The context behind a document start, cut from the left to what the model may hold with room
        left for the continuation: the most recent tokens `check_prompts` accepts under `prompt_limit`
        (and at most max_length tokens when the user set it), started at a whole sentence where one
        fits, as every training row starts. The continuation then runs until the model's limit stops it.
        """
        from gpthf.generation import PromptError, check_prompts

        tokens = [EOD_ID, *self.encode(context)]
        limit = self.prompt_limit(max_new_tokens)

        def fits(cut: int) -> bool:
            if self.prompt_tokens is not None and len(tokens) - cut > self.prompt_tokens:
                return False
            try:
                check_prompts(self.model, [tokens[cut:]], limit)
            except PromptError:
                return False
            return True

        low, high = 0, len(tokens) - 1  # fewer tokens fit more easily: the least cut that fits
        if fits(low):
            return tokens
        while high - low > 1:  # fits(high) or nothing does (then generate names the prompt it refuses)
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        if tokens[high - 1] not in SENTENCE_CLOSERS:
            high = next((i + 1 for i in range(high, len(tokens) - 1) if tokens[i] in SENTENCE_CLOSERS), high)
        return tokens[high:]

    def prompt_limit(self, max_new_tokens: int) -> ContextLimit:
        """The model's context limit less the room a generation of `max_new_tokens` keeps, at most half
        of it: a GPT's prompt keeps limit - min(max_new_tokens, (limit - 1) // 2) tokens, GPTHF's
        limit - min(ceil(max_new_tokens / max_sentence_len), (limit - 1) // 2) sentences. So a prompt keeps
        at least half of what the model holds (not max_length - max_gen_toks, one token at lm-eval's
        defaults: issue 27) and the continuation at least the other half, never nothing."""
        from gpthf.generation import ContextLimit

        def less(limit: int | None, wanted: int) -> int | None:  # (limit - 1) // 2: a prompt of one fits
            return None if limit is None else limit - min(wanted, (limit - 1) // 2)

        sentences = math.ceil(max_new_tokens / self.max_sentence_len)
        return ContextLimit(
            tokens=less(self.limit.tokens, max_new_tokens), sentences=less(self.limit.sentences, sentences)
        )

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        raise ConfigError(NO_CHAT_TEMPLATE)


NO_CHAT_TEMPLATE = (
    "gpthf models are base language models without a chat template: leave out --apply_chat_template"
)

MODEL_ARGS = [name for name in inspect.signature(GpthfLM.__init__).parameters if name != "self"]


def merged_model_args(
    arg_dict: dict, additional_config: dict | None = None, cuda_fallback: bool = True
) -> dict:
    """model_args over the command line's general flags, as lm-eval hands them to a model; an unknown
    key is named with the valid ones. lm-eval passes --device cuda:0 when none was given, so a general
    cuda device falls back to the CPU where there is no GPU (as lm-eval's HF model does), unless
    `cuda_fallback` is off: the command line, which knows whether --device was given, refuses it."""
    unknown = sorted(set(arg_dict) - set(MODEL_ARGS))
    if unknown:
        valid = ", ".join(name for name in MODEL_ARGS if name != "max_batch_size")
        raise ConfigError(
            f"unknown model_args key(s) for --model gpthf: {', '.join(unknown)}; valid: {valid}"
        )
    general = {k: v for k, v in (additional_config or {}).items() if v is not None and k in MODEL_ARGS}
    device = str(general.get("device", ""))
    if (
        cuda_fallback
        and device.startswith("cuda")
        and "device" not in arg_dict
        and not torch.cuda.is_available()
    ):
        general["device"] = "cpu"
    return {**general, **arg_dict}


# A scored request needs one token of context (<eod> at least) and one to score; above, a row's T²
# attention scores are what data.seq_len is bounded for.
MAX_LENGTH = Range(2, NUMBER_RANGES["data.seq_len"].high, too_high=NUMBER_RANGES["data.seq_len"].too_high)


def check_model_args(args: dict, device_flag: str | None = None) -> dict:
    """The model's arguments checked before anything loads, numbers made whole, the checkpoint found
    and the device resolved: the model checks them so, and the command line does before lm-eval
    spends seconds indexing its tasks (naming `device_flag`, e.g. --device, when the device came from
    it). A missing key takes the model's default."""
    from gpthf.precision import resolve_dtype
    from gpthf.training.checkpoint import resolve_checkpoint
    from gpthf.training.distributed import resolve_device

    checked = dict(args)
    if not args.get("ckpt"):
        raise ConfigError("--model gpthf needs a checkpoint: --model_args ckpt=outputs/gpthf-kjv")
    checked["ckpt"] = resolve_checkpoint(str(args["ckpt"]))
    dtype = args.get("dtype", DEFAULT_DTYPE)
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    checked["batch_size"] = batch_size("batch_size", args.get("batch_size", DEFAULT_BATCH_SIZE))
    checked["max_gen_toks"] = positive("max_gen_toks", args.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
    for name in ("max_length", "max_batch_size"):  # None: the default
        checked[name] = None if args.get(name) is None else positive(name, args[name])
    if checked["max_length"] is not None and not MAX_LENGTH.contains(checked["max_length"]):
        length = checked["max_length"]
        why = MAX_LENGTH.too_high(length) if length > 2 else "a request needs its <eod> and one scored token"
        raise ConfigError(
            f"max_length={args['max_length']!r} is out of range; valid: {MAX_LENGTH.describe('max_length')} ({why})"
        )
    device = "auto" if args.get("device") is None else args["device"]
    shown = f"{device_flag} {device}" if device_flag else f"device={device!r}"
    use = f"{device_flag} " if device_flag else "device="
    if not isinstance(device, str):  # lm-eval reads device=0 as 0, device=false as False
        raise ConfigError(f"{shown} is not a device name; use {use}auto, cpu, cuda or cuda:N")
    try:
        checked["device"] = resolve_device(device, 0)
    except (ConfigError, RuntimeError):  # RuntimeError: torch cannot parse the name
        raise ConfigError(f"{shown}: no such device here; use {use}cpu, cuda or cuda:N") from None
    resolve_dtype(dtype, checked["device"])  # a number format this device cannot run
    return checked


def positive(name: str, value: object) -> int:
    """`value` as a whole number >= 1 (lm-eval hands over `5`, `5.0`, `nan`, `true` or text), or one
    error naming it; zero is refused rather than read as "the default"."""
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number >= 1 and number.is_integer()):  # also refuses nan and inf
        raise ConfigError(f"{name}={value!r} must be a positive whole number")
    return int(number)


def number(name: str, value: object) -> object:
    """lm-eval's text of a number (`temperature=hot` stays text when it parses none) as the number;
    any other value as it came, for the setting's rule to judge."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be a number") from None


def batch_size(name: str, value: object) -> int:
    """A batch size: a positive whole number, or lm-eval's `auto`/`auto:N` (no search here: the default)."""
    text = str(value)
    if text == "auto" or text.startswith("auto:"):
        if text != "auto":
            positive(name, text[len("auto:") :])
        return DEFAULT_BATCH_SIZE
    return positive(name, value)


def generation_request(
    kwargs: dict, max_gen_toks: int, max_sentence_len: int | None = None, limit: ContextLimit | None = None
) -> tuple[GenerationSettings, tuple[str, ...]]:
    """(our GenerationSettings, its stop strings) for one lm-eval generation request's kwargs (from
    the task or --gen_kwargs); a value generation cannot use is one error naming it. top_k and top_p
    apply when sampling (do_sample); a task's other keys (e.g. num_beams) are left to it."""
    from gpthf.generation import ContextLimit, GenerationSettings, SamplingSettings

    until = kwargs.get("until") or []
    until = (until,) if isinstance(until, str) else until
    if not isinstance(until, (list, tuple)) or not all(isinstance(stop, str) for stop in until):
        raise ConfigError(f"until={until!r} must be a stop string or a list of them, e.g. until=['\\n']")
    max_new = positive("max_gen_toks", kwargs.get("max_gen_toks", max_gen_toks))
    temperature = kwargs.get("temperature", 0.0) if kwargs.get("do_sample", False) else 0.0
    top_k, top_p = kwargs.get("top_k", SamplingSettings.top_k), kwargs.get("top_p")
    sampling = SamplingSettings(  # which checks the values by gpthf.settings' rules
        temperature=number("temperature", temperature),
        top_k=None if top_k is None else positive("top_k", top_k),
        top_p=None if top_p is None else number("top_p", top_p),
    )
    settings = GenerationSettings(
        max_new_tokens=max_new,
        sampling=sampling,
        max_sentence_len=max_sentence_len,
        limit=limit or ContextLimit(),
    )
    return settings, tuple(until)
