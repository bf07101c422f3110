"""Generated tokens to streamed text: whole characters only, stop strings cut out.

A streamed piece must never hold half a character (a byte-level BPE token can end in the middle of
one), and the pieces joined must be exactly the text `generate.py` prints for the same tokens:
`decode_continuation` over all of them, sentence boundaries included. Both follow from decoding a
small window of tokens, not the whole continuation each time: byte-level decoding of tokens that
end on a character boundary does not depend on what comes after them.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpthf.generation.prompts import decode_continuation

REPLACEMENT = "\ufffd"  # what a decoder shows for bytes that are not (yet) a whole character


class IncrementalText:
    """The text of a growing continuation, one token at a time.

    Tokens wait in a window until their text no longer ends with U+FFFD (a character whose other
    bytes are still to come), then leave it as one piece, as `generate.py`'s stream prints them.
    Bytes that never become a character (the model is free to generate them) come out at `flush`."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._window: list[int] = []

    def push(self, token_id: int) -> str:
        """The text this token completes ("" while a character is unfinished, or for <eos>)."""
        self._window.append(token_id)
        text = decode_continuation(self.tokenizer, self._window)
        if text.endswith(REPLACEMENT):
            return ""
        self._window.clear()
        return text

    def flush(self) -> str:
        """What is left when the continuation ends, unfinished bytes shown as U+FFFD."""
        text = decode_continuation(self.tokenizer, self._window) if self._window else ""
        self._window.clear()
        return text


class StopText:
    """Stop strings found in streamed text, as OpenAI's `stop` means them: the text ends just before
    the first one, which is not returned.

    A piece's tail that could still become a stop string is held back until the next piece settles
    it, so no client ever sees the start of a stop string that then completes."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The part of `piece` (with what was held back) that is safe to send; sets `stopped` on a hit."""
        if self.stopped:
            return ""
        text = self._held + piece
        if not self.stops:
            self._held = ""
            return text
        hits = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return text[: min(hits)]
        keep = self._open_prefix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back tail when the text ends without a stop string."""
        text, self._held = self._held, ""
        return "" if self.stopped else text

    def _open_prefix(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string (without being all of it)."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
