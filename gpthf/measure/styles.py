"""How the benchmarks' plots draw a model: its kind's colour and marker (from its spec), the
strategy's line; the outside peer has its own."""

from __future__ import annotations

from gpthf.models import SPECS, spec_for

STRATEGY_LINES = {"cached": "-", "full": ":", "compiled": "--"}
COMPILED_MARKER = "x"  # a compiled step is drawn in its kind's colour with this marker
PEER_STYLES = {("hf-llama", "generate"): "C2--^"}  # Hugging Face's Llama, our GPT's shape


def kind_style(kind: str, strategy: str = "cached") -> str:
    """A matplotlib format string, e.g. "C0-o" for GPTHF's cached decode."""
    spec = spec_for(kind)
    marker = COMPILED_MARKER if strategy == "compiled" else spec.marker
    return f"{spec.color}{STRATEGY_LINES[strategy]}{marker}"


def decode_styles() -> dict[tuple[str, str], str]:
    """Every (model, strategy) line a decode plot may draw, kinds in registry order, then the peer."""
    lines = {(kind, strategy): kind_style(kind, strategy) for kind in SPECS for strategy in STRATEGY_LINES}
    return {**lines, **PEER_STYLES}
