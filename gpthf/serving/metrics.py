"""`/metrics`: the server's numbers in Prometheus's text format, written by hand (no client library).

Latencies are what a client sees: from the HTTP request's arrival to its first token (TTFT), the
mean gap between its later tokens (TPOT), and its whole time (E2E), one observation per choice.
Counts of tokens and the engine's queue and state memory are read from the engine's own snapshot.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "gpthf_"
# Seconds: sub-millisecond steps of a tiny model up to minutes of a long prompt in a full queue.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 60)
TPOT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms are exposed."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        self.name, self.help, self.bounds = PREFIX + name, help, tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, count in zip([*map(_number, self.bounds), "+Inf"], self.counts):
            total += count
            out.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        return [*out, f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {total}"]


class ServerMetrics:
    """What the HTTP side measures; observed from the event loop and the engine thread alike."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ttft = Histogram(
            "time_to_first_token_seconds", "Request arrival to its first token.", TTFT_BUCKETS
        )
        self.tpot = Histogram(
            "time_per_output_token_seconds",
            "Mean time between a choice's tokens after the first.",
            TPOT_BUCKETS,
        )
        self.e2e = Histogram("e2e_request_latency_seconds", "Request arrival to its last token.", E2E_BUCKETS)
        self.finished: dict[str, int] = {}  # engine finish reason -> engine requests
        self.rejected: dict[str, int] = {}  # HTTP status -> requests answered with it

    def observe_first_token(self, seconds: float) -> None:
        with self.lock:
            self.ttft.observe(seconds)

    def observe_finished(
        self, first_token: float | None, last_token: float | None, tokens: int, total: float
    ) -> None:
        """One finished choice: its TPOT (with two or more tokens) and end-to-end time."""
        with self.lock:
            if first_token is not None and last_token is not None and tokens >= 2:
                self.tpot.observe((last_token - first_token) / (tokens - 1))
            self.e2e.observe(total)

    def count_finished(self, reason: str) -> None:
        with self.lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def count_rejected(self, status: str) -> None:
        with self.lock:
            self.rejected[status] = self.rejected.get(status, 0) + 1

    def render(self, stats, engine_up: bool) -> str:
        """The exposition text; `stats` is the engine's EngineStats snapshot (None before it exists)."""
        free = math.inf if stats is None or stats.state_bytes_free is None else stats.state_bytes_free
        gauges = [
            (
                "engine_up",
                "1 while the engine thread runs and has answered its warm-up request.",
                int(engine_up),
            ),
            ("requests_running", "Engine requests decoding now.", stats.running if stats else 0),
            (
                "requests_waiting",
                "Engine requests queued for a slot or state memory.",
                stats.waiting if stats else 0,
            ),
            (
                "state_in_use_bytes",
                "Generation state held by running requests.",
                stats.state_bytes_in_use if stats else 0,
            ),
            ("state_free_bytes", "Generation state left under --max-state-memory (+Inf: no limit).", free),
        ]
        counters = [
            (
                "prompt_tokens_total",
                "Prompt tokens the engine admitted.",
                stats.prompt_tokens_total if stats else 0,
            ),
            (
                "generation_tokens_total",
                "Tokens the engine generated.",
                stats.generated_tokens_total if stats else 0,
            ),
        ]
        out: list[str] = []
        for name, help, value in gauges:
            out += [
                f"# HELP {PREFIX}{name} {help}",
                f"# TYPE {PREFIX}{name} gauge",
                f"{PREFIX}{name} {_number(value)}",
            ]
        for name, help, value in counters:
            out += [
                f"# HELP {PREFIX}{name} {help}",
                f"# TYPE {PREFIX}{name} counter",
                f"{PREFIX}{name} {_number(value)}",
            ]
        with self.lock:
            out += _labelled(
                "requests_finished_total",
                "Engine requests finished, by the engine's reason.",
                "reason",
                self.finished,
            )
            out += _labelled(
                "http_rejected_total",
                "HTTP requests answered with an error, by status code.",
                "status",
                self.rejected,
            )
            for histogram in (self.ttft, self.tpot, self.e2e):
                out += histogram.lines()
        return "\n".join(out) + "\n"


def _labelled(name: str, help: str, label: str, values: dict[str, int]) -> list[str]:
    lines = [f"# HELP {PREFIX}{name} {help}", f"# TYPE {PREFIX}{name} counter"]
    return lines + [f'{PREFIX}{name}{{{label}="{key}"}} {value}' for key, value in sorted(values.items())]


def _number(value: float) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)
