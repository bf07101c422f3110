"""Generation: one engine (`engine`) decoding over explicit strategy state (see `strategies` for full vs
cached); `generate` continues a list of prompts through it."""

from gpthf.generation.generate import (
    ContextLimit,
    GenerationError,
    GenerationResult,
    GenerationSettings,
    PromptError,
    check_prompts,
    generate,
)
from gpthf.generation.prompts import decode_continuation, encode_prompt
from gpthf.generation.sampling import SamplingSettings, sample
from gpthf.generation.strategies import STRATEGIES, get_strategy

__all__ = [
    "STRATEGIES",
    "ContextLimit",
    "GenerationError",
    "GenerationResult",
    "GenerationSettings",
    "PromptError",
    "SamplingSettings",
    "check_prompts",
    "decode_continuation",
    "encode_prompt",
    "generate",
    "get_strategy",
    "sample",
]
