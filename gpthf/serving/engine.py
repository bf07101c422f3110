"""The engine a server drives, from its own thread: see gpthf.generation.engine, where it lives so
that `generate()` (below serving) can be its client too."""

from gpthf.generation.engine import (
    FINISH_REASONS,
    Engine,
    EngineStats,
    EngineStopped,
    Event,
    Finished,
    QueueFull,
    RequestSettings,
    RequestTooLarge,
    Token,
)
from gpthf.generation.limits import ContextLimit, GenerationError, PromptError

__all__ = [
    "FINISH_REASONS",
    "ContextLimit",
    "Engine",
    "EngineStats",
    "EngineStopped",
    "Event",
    "Finished",
    "GenerationError",
    "PromptError",
    "QueueFull",
    "RequestSettings",
    "RequestTooLarge",
    "Token",
]
