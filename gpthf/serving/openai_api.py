"""OpenAI's wire format: request bodies read and checked, responses and errors shaped as its clients expect.

Nothing here touches the engine or torch: a body becomes a `GenerationRequest` of checked Python
values, or an `ApiError` that is already the HTTP answer. Types are checked here (JSON has no
integers, NaN or infinity of its own, so each is refused by name); the ranges of the sampling
settings are the engine's `RequestSettings` to judge, so they are stated once.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpthf.settings import CHOICES, SEED, Setting

DEFAULT_MAX_TOKENS = 16  # /v1/completions without max_tokens, as OpenAI's default
DEFAULT_CHAT_MAX_TOKENS = 256  # /v1/chat/completions: a reply, bounded so admission can count its state
MAX_STOP_STRINGS = 16
INT_LIMIT = 2**63  # integers beyond int64 are refused before they reach torch
CHAT_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = ("User:",)  # a base LM that starts the user's next turn has finished its reply
# The engine's finish reasons as OpenAI names them; "abort" and "error" never reach a finished choice.
FINISH_REASONS = {"eod": "stop", "max_sentences": "stop", "max_tokens": "length", "context": "length"}
# Options OpenAI defines that this server does not implement: refused unless they ask for nothing.
UNSUPPORTED = {
    "echo": lambda v: v in (None, False),
    "suffix": lambda v: v in (None, ""),
    "logprobs": lambda v: v in (None, False, 0),
    "top_logprobs": lambda v: v in (None, 0),
    "best_of": lambda v: v in (None, 1),
    "logit_bias": lambda v: not v,
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "tools": lambda v: not v,
    "response_format": lambda v: v is None or v == {"type": "text"},
    # vLLM's sampling extras, refused rather than silently ignored
    "min_p": lambda v: v in (None, 0),
    "repetition_penalty": lambda v: v in (None, 1),
    "min_tokens": lambda v: v in (None, 0),
    "use_beam_search": lambda v: v in (None, False),
}
NO_TOP_K = (-1, 0)  # vLLM's spelling of "no top-k", sent by clients written for it
_SENTENCE_END = re.compile(r"""[.!?]["'”’)\]]*$""")


class ApiError(Exception):
    """An HTTP error answer in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    """One /v1/completions or /v1/chat/completions body, checked. `sampling` holds the keyword
    arguments of the engine's RequestSettings the body gave (others keep the engine's defaults)."""

    chat: bool
    prompts: list[str | list[int]]  # text, or token ids as the model's tokenizer made them
    sampling: dict[str, Any]
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    stop: tuple[str, ...] = ()
    seed: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def choice_seed(self, choice: int) -> int | None:
        """Choice j of n draws from its own stream: the given seed for the first, one derived from
        it for the others (so n=1 with a seed gives the first of n>1 with that seed)."""
        if self.seed is None or choice == 0:
            return self.seed
        digest = hashlib.blake2b(f"{self.seed}/{choice}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN and Infinity (which Python's json accepts) are refused."""

    def refuse_constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {_kind(body)}", code="invalid_json")
    try:  # JSON's \ud800 escapes parse to lone surrogates, which no tokenizer (nor UTF-8) takes
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400,
            "the body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)",
            code="invalid_json",
        ) from None
    return body


def parse_completion(body: dict[str, Any], model_name: str) -> GenerationRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif _token_ids(prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(_token_ids(p) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise ApiError(
            400,
            "'prompt' must be a string, a non-empty list of strings, a list of token ids or a list of "
            f"lists of token ids, not {_kind(prompt)}",
            param="prompt",
        )
    return _generation(body, model_name, chat=False, prompts=prompts, default_max_tokens=DEFAULT_MAX_TOKENS)


def _token_ids(value: Any) -> bool:
    """A non-empty list of integers (not booleans, which JSON keeps apart and Python does not)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def parse_chat(body: dict[str, Any], model_name: str) -> GenerationRequest:
    prompt = chat_prompt(body.get("messages"))
    max_tokens = _integer(body, "max_completion_tokens")
    if max_tokens is not None:  # the newer name wins over the deprecated max_tokens
        body = {**body, "max_tokens": max_tokens}
    return _generation(
        body, model_name, chat=True, prompts=[prompt], default_max_tokens=DEFAULT_CHAT_MAX_TOKENS
    )


def chat_prompt(messages: Any) -> str:
    """The plain template for base LMs: each message as "Role: content" closed as a sentence (a
    full stop is added when its text has no sentence end), joined by spaces, then an open
    "Assistant:" sentence the model continues. Roles: System (system, developer), User, Assistant."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"'messages' must be a non-empty list, not {_kind(messages)}", param="messages")
    parts = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object, not {_kind(message)}", param=where)
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ApiError(
                400, f"{where}.role {role!r} is not one of: {', '.join(CHAT_ROLES)}", param=f"{where}.role"
            )
        text = " ".join(_message_text(message.get("content"), f"{where}.content").split())
        if text and not _SENTENCE_END.search(text):
            text += "."
        parts.append(f"{CHAT_ROLES[role]}: {text}" if text else f"{CHAT_ROLES[role]}:.")
    return " ".join([*parts, "Assistant:"])


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones
        texts = []
        for j, part in enumerate(content):
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise ApiError(
                    400, f"{where}[{j}] must be a text part ({{'type': 'text', 'text': ...}})", param=where
                )
            texts.append(part["text"])
        return " ".join(texts)
    raise ApiError(
        400, f"{where} must be a string or a list of text parts, not {_kind(content)}", param=where
    )


def _generation(
    body: dict[str, Any],
    model_name: str,
    *,
    chat: bool,
    prompts: list[str | list[int]],
    default_max_tokens: int,
) -> GenerationRequest:
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(
            400,
            f"model {model!r} is not served here; this server serves {model_name!r}",
            "model",
            "model_not_found",
        )
    for name, asks_nothing in UNSUPPORTED.items():
        if name in body and not asks_nothing(body[name]):
            raise ApiError(400, f"'{name}' is not supported by this server; leave it out", param=name)
    max_tokens = _integer(body, "max_tokens")
    sampling = {"max_tokens": default_max_tokens if max_tokens is None else max_tokens}
    for name, read in (
        ("temperature", _number),
        ("top_p", _number),
        ("top_k", _integer),
        ("max_sentences", _integer),
    ):
        value = read(body, name)
        if value is not None and not (name == "top_k" and value in NO_TOP_K):
            sampling[name] = value
    extras = {}
    if _boolean(body, "ignore_eos"):
        extras["ignore_eos"] = True
    n, seed = _setting(body, CHOICES), _setting(body, SEED)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(
            400, f"'stream_options' must be an object, not {_kind(options)}", param="stream_options"
        )
    return GenerationRequest(
        chat=chat,
        prompts=prompts,
        sampling=sampling,
        n=1 if n is None else n,
        stream=bool(_boolean(body, "stream")),
        include_usage=bool(_boolean(options or {}, "include_usage")),
        stop=_stops(body.get("stop")) + (CHAT_STOP if chat else ()),
        seed=seed,
        extras=extras,
    )


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, f"'stop' must be a string or a list of strings, not {_kind(stop)}", param="stop")
    if len(stops) > MAX_STOP_STRINGS or not all(stops):
        raise ApiError(400, f"'stop' takes at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
    return tuple(stops)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # 16.0: an integer JSON wrote as a float
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be an integer, not {_kind(value)}", param=name)
    if not -INT_LIMIT < value < INT_LIMIT:
        raise ApiError(400, f"{name}={value} is out of range (a 64-bit integer)", param=name)
    return value


def _setting(body: dict[str, Any], setting: Setting) -> int | None:
    """An integer field by its setting's rule (gpthf.settings), which the library checks too."""
    value = _integer(body, setting.name)
    problem = None if value is None else setting.problem(value)
    if problem is not None:
        raise ApiError(400, f"{setting.name}={value} {problem}", param=setting.name)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be a number, not {_kind(value)}", param=name)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ApiError(400, f"{name}={value} must be a finite number", param=name)
    return float(value)


def _boolean(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false, not {_kind(value)}", param=name)
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def param_of(message: str, request: GenerationRequest) -> str | None:
    """Which body field a settings error names (the engine's messages start with `name=value`)."""
    match = re.match(r"(\w+)=", message)
    if match and match.group(1) in request.sampling:
        return match.group(1)
    return None


# Responses ---------------------------------------------------------------------------------------


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(
    request: GenerationRequest,
    request_id: str,
    model: str,
    choices: Sequence[tuple[str, str]],
    tokens: tuple[int, int],
) -> dict[str, Any]:
    """The whole answer: `choices` as (text, finish_reason) in choice order, `tokens` as (prompt, completion)."""
    if request.chat:
        shaped = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason) in enumerate(choices)
        ]
    else:
        shaped = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices)
        ]
    return {
        "id": request_id,
        "object": "chat.completion" if request.chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": shaped,
        "usage": usage(*tokens),
    }


def chunk(
    request: GenerationRequest,
    request_id: str,
    model: str,
    index: int,
    text: str | None,
    finish_reason: str | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One streamed event of choice `index`: new text, or its finish reason (text None)."""
    if request.chat:
        delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": request_id,
        "object": "chat.completion.chunk" if request.chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def usage_chunk(
    request: GenerationRequest, request_id: str, model: str, tokens: tuple[int, int]
) -> dict[str, Any]:
    """The last streamed event when `stream_options.include_usage` asks for it: no choices, the usage."""
    return {
        "id": request_id,
        "object": "chat.completion.chunk" if request.chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(*tokens),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: {...}` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def models_response(model: str, created: int, owned_by: str = "gpthf", **details: Any) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": owned_by, **details}],
    }
