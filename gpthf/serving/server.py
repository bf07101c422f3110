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

from gpthf.cli import ArgumentParser, byte_size, non_negative_int, positive_float
from gpthf.errors import GpthfError
from gpthf.precision import DEFAULT_DTYPE, DTYPE_NAMES
from gpthf.serving.loading import load
from gpthf.settings import MAX_BATCH, MAX_QUEUE

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 2**20  # bytes of a request body; more is 413
DEFAULT_GRACE = 10.0  # seconds requests in flight get after SIGTERM
API_KEY_ENV = "GPTHF_API_KEY"


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
        "--no-pack",
        action="store_true",
        help="multiply from the weights as stored, not packed for the CPU's kernels (changes rounding only)",
    )
    parser.add_argument(
        "--max-batch", type=MAX_BATCH.argument, help="requests decoding at once (default: the engine's)"
    )
    parser.add_argument(
        "--max-state-memory",
        type=byte_size,
        help="generation state the running requests may hold, counted at each one's horizon (e.g. 4GiB; "
        "default: no limit)",
    )
    parser.add_argument(
        "--max-queue",
        type=MAX_QUEUE.argument,
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


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (the OS would wrap a larger one to another port silently)."""
    port = non_negative_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535)")
    return port


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
