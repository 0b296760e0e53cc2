"""Stop strings matched on text, not token ids.

TensorRT-LLM matches stop words as token-id sequences, so a stop string that the model spells with other tokens
never fires. Matching on the detokenized text always does. To never emit a part of a stop string, the last
`max(len(stop)) - 1` characters are held back until the next delta shows they are not the start of a stop
string (or the stream ends).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StopCheck:
    """What one delta of text turned into: the text safe to emit, and whether a stop string matched."""

    text: str
    stopped: bool
    matched: str | None = None


class StopMatcher:
    """Finds the first stop string in a stream of text deltas.

    Args:
        stops: the stop strings (empty strings are ignored).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> StopCheck:
        """Add text; return the part that can be emitted now (truncated before a matched stop string)."""
        if self.stopped:
            return StopCheck("", True)
        if not self._stops:
            return StopCheck(delta, False)
        # Only the pending tail can hold the start of a match that spans the old and new text.
        buffer = self._pending + delta
        match = self._find(buffer)
        if match is not None:
            index, stop = match
            self.stopped = True
            self._pending = ""
            return StopCheck(buffer[:index], True, stop)
        cut = max(len(buffer) - self._hold, 0)
        self._pending = buffer[cut:]
        return StopCheck(buffer[:cut], False)

    def flush(self) -> str:
        """The held-back text at the end of the stream (no stop string matched in it)."""
        text, self._pending = self._pending, ""
        return "" if self.stopped else text

    def _find(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            index = text.find(stop)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        return best
