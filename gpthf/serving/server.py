"""`python -m gpthf serve --ckpt RUN`: an OpenAI-compatible HTTP server over the generation engine.

The story of a run: parse the arguments, load the checkpoint and bind the port (either failing is
one `error:` line and exit 2, before anything is served), then serve with uvicorn while the engine
decodes in its own thread. /health answers 503 until the engine has answered a one-token warm-up
request (and after it dies), 200 in between. SIGTERM stops accepting connections, lets requests in
flight finish for --grace seconds, cancels the rest, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpthf.cli import ArgumentParser, byte_size, non_negative_int, positive_float, positive_int
from gpthf.errors import CheckpointError, ConfigError, GpthfError
from gpthf.precision import DEFAULT_DTYPE, DTYPE_NAMES

if TYPE_CHECKING:
    from gpthf.serving.engine import RequestSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 2**20  # bytes of a request body; more is 413
DEFAULT_GRACE = 10.0  # seconds requests in flight get after SIGTERM
API_KEY_ENV = "GPTHF_API_KEY"
WARM_UP_PROMPT = "Hello"  # one greedy token of it is the warm-up request, and the smallest one that must fit


def warm_up_settings() -> RequestSettings:
    """Imported when called: the engine pulls in torch, which `--help` need not wait for."""
    from gpthf.serving.engine import RequestSettings

    return RequestSettings(max_tokens=1, temperature=0.0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m gpthf serve", description=__doc__)
    parser.add_argument(
        "--ckpt", required=True, help="checkpoint folder, or a run folder (its newest checkpoint)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=port_number, default=8000, help="0 picks a free port (printed)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES, help="weights and generation state"
    )
    parser.add_argument(
        "--compile", action="store_true", help="compile the decode step (paid during warm-up)"
    )
    parser.add_argument(
        "--max-batch", type=positive_int, help="requests decoding at once (default: the engine's)"
    )
    parser.add_argument(
        "--max-state-memory",
        type=byte_size,
        help="generation state the running requests may hold, counted at each one's horizon (e.g. 4GiB; "
        "default: no limit)",
    )
    parser.add_argument(
        "--max-queue",
        type=positive_int,
        help="requests waiting for a slot; more get 503 (default: the engine's)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"clients must send 'Authorization: Bearer KEY' to /v1 (default: ${API_KEY_ENV}; unset: no key)",
    )
    parser.add_argument("--model-name", help="the model's id in the API (default: the run folder's name)")
    parser.add_argument(
        "--max-body",
        type=byte_size,
        default=DEFAULT_MAX_BODY,
        help="largest request body (default 1MiB); more is 413",
    )
    parser.add_argument(
        "--grace",
        type=positive_float,
        default=DEFAULT_GRACE,
        help="seconds requests in flight get after SIGTERM",
    )
    return parser.parse_args(argv)


@dataclass
class Served:
    """What the app serves: the engine and how text becomes its tokens."""

    engine: Any
    tokenizer: Any
    splitter: Any
    max_sentence_len: int
    name: str
    arch: str
    context: dict[str, int | None]


def load(args: argparse.Namespace) -> Served:
    """The checkpoint, tokenizer, sentence splitter and engine, loaded as generate.py loads them."""
    from gpthf.data.splitter import build_splitter
    from gpthf.generation import ContextLimit
    from gpthf.generation.prompts import encode_prompt
    from gpthf.serving.engine import Engine
    from gpthf.training.checkpoint import (
        load_checkpoint_tokenizer,
        load_model_from_checkpoint,
        resolve_checkpoint,
    )
    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")
    if args.compile:
        from gpthf.generation.compiled import check_compiler

        check_compiler(device)
    checkpoint = resolve_checkpoint(args.ckpt)
    try:
        model, meta, checkpoint = load_model_from_checkpoint(checkpoint, device, dtype=args.dtype)
        tokenizer = load_checkpoint_tokenizer(checkpoint, meta)
        limit = ContextLimit(**meta.get("context", {}))
        max_sentence_len = meta["data"]["max_sentence_len"]
        splitter = build_splitter(meta["data"]["language"])
    except GpthfError:
        raise
    except Exception as err:  # a damaged file raises whatever its reader raises
        raise CheckpointError(
            f"checkpoint {checkpoint} does not load ({type(err).__name__}: {err})"
        ) from None
    given = {
        "max_batch": args.max_batch,
        "max_state_bytes": args.max_state_memory,
        "max_queue": args.max_queue,
    }
    engine = Engine(
        model,
        limit=limit,
        max_sentence_len=max_sentence_len,
        compile=args.compile,
        **{k: v for k, v in given.items() if v is not None},
    )
    smallest = engine.state_bytes(
        encode_prompt(WARM_UP_PROMPT, tokenizer, splitter, max_sentence_len), warm_up_settings()
    )
    if engine.max_state_bytes is not None and smallest > engine.max_state_bytes:
        raise ConfigError(  # else the server would start and answer every request with an error
            f"--max-state-memory {engine.max_state_bytes:,} bytes holds no request: a one-token reply "
            f"to a short prompt needs {smallest:,}; give more"
        )
    return Served(
        engine=engine,
        tokenizer=tokenizer,
        splitter=splitter,
        max_sentence_len=max_sentence_len,
        name=args.model_name or run_name(checkpoint),
        arch=meta["arch"]["model"],
        context={"tokens": limit.tokens, "sentences": limit.sentences},
    )


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (the OS would wrap a larger one to another port silently)."""
    port = non_negative_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535)")
    return port


def run_name(checkpoint: Path) -> str:
    """The run's `name` as its config.yaml records it (`gpthf-kjv`: what `outputs/gpthf-kjv` and the
    README's client examples call it), else the run folder's name (RUN/checkpoints/NAME), or the
    checkpoint folder's for a loose one."""
    import yaml  # omegaconf's, so always there

    from gpthf.training.run_dir import CONFIG_FILE

    checkpoint = Path(checkpoint).resolve()
    if checkpoint.parent.name != "checkpoints":
        return checkpoint.name
    run = checkpoint.parent.parent
    try:
        name = yaml.safe_load((run / CONFIG_FILE).read_text()).get("name")
    except (OSError, AttributeError, yaml.YAMLError):  # no config, or not a mapping
        name = None
    return name if isinstance(name, str) and name.strip() else run.name


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now, so a port in use is one error line before serving starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise GpthfError(
            f"--host {host!r} is not an address this machine can listen on ({err.strerror})"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise GpthfError(
            f"cannot listen on {host}:{port} ({err.strerror}); pick another --port (0: any free one)"
        ) from None
    return sock


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:  # before the model loads: a missing extra costs no wait
        import uvicorn

        from gpthf.serving.app import build_app
    except ImportError as err:
        raise GpthfError(f"the server needs {err.name}: pip install '.[serve]'") from None

    served = load(args)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    app = build_app(served, api_key=args.api_key, max_body=args.max_body, grace=args.grace)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, timeout_graceful_shutdown=args.grace, lifespan="on"
    )
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {served.name} ({served.arch}) at http://{shown}:{port}/v1", flush=True)
    # uvicorn raises the signal again once it has shut down; with the default handler in place that
    # would kill the process after a clean shutdown (exit -15). A handler that returns keeps exit 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    print("stopped", flush=True)
    return 0
