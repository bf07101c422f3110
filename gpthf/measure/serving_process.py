"""Our server as a subprocess for a benchmark: started for a checkpoint on a free local port, ready
when /health says so, and stopped (SIGTERM, then SIGKILL after a grace period) however the
benchmark ends, so a failed or interrupted run never leaves a server holding memory and a port."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gpthf.measure.serving import ServerError

HEALTH_POLL_S = 0.25
STOP_GRACE_S = 30.0  # the server's own grace period for in-flight requests, then SIGKILL


def server_command(
    ckpt: str | Path,
    port: int,
    *,
    max_batch: int | None = None,
    max_state_memory: int | None = None,
    max_queue: int | None = None,
    dtype: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """`python -m gpthf serve` for a checkpoint on 127.0.0.1:`port`; options left None keep the
    server's own defaults."""
    command = [
        python,
        "-m",
        "gpthf",
        "serve",
        "--ckpt",
        str(ckpt),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for flag, value in (
        ("--max-batch", max_batch),
        ("--max-state-memory", max_state_memory),
        ("--max-queue", max_queue),
        ("--dtype", dtype),
    ):
        if value is not None:
            command += [flag, str(value)]
    return command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1]}" if lines else ""


def wait_until_healthy(base_url: str, process: subprocess.Popen, timeout_s: float, log: Path) -> None:
    """Until /health answers 200; a server that exits or stays unready past `timeout_s` is an error
    naming its log."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise ServerError(
                f"the server exited ({process.returncode}) before it was ready{_log_tail(log)} (log: {log})"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ServerError(f"the server was not ready within {timeout_s:g} s (log: {log})")
        time.sleep(HEALTH_POLL_S)


def stop_server(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM, then SIGKILL after `grace_s` (or at a second Ctrl-C); its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.kill()
    return process.wait()


@contextlib.contextmanager
def server_process(
    command: list[str], port: int, log: Path, startup_timeout_s: float
) -> Iterator[tuple[str, subprocess.Popen]]:
    """The server of `command` (listening on 127.0.0.1:`port`), ready: its base URL and its process
    (whose memory a soak test watches). It is stopped on the way out however the block ends (an
    error, Ctrl-C). Its own session, so a Ctrl-C in the terminal reaches only this process, which
    stops it in order."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_healthy(base_url, process, startup_timeout_s, log)
            yield base_url, process
        finally:
            stop_server(process)


@contextlib.contextmanager
def running_server(command: list[str], port: int, log: Path, startup_timeout_s: float) -> Iterator[str]:
    """`server_process`'s base URL alone."""
    with server_process(command, port, log, startup_timeout_s) as (base_url, _):
        yield base_url


def rss_bytes(pid: int) -> int | None:
    """A process's resident memory from /proc (Linux); None where there is no /proc to read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
