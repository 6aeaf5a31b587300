"""Stop strings on a text stream.

Generated text arrives in pieces, and a stop string may straddle two pieces, so the matcher
holds back the longest tail of the text that could still grow into a stop string and emits
the rest. The emitted text never contains a stop string: on a match it ends right before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from imp_core.errors import ConfigError


class StopMatcher:
    """Feed text pieces; get back what is safe to show, and whether a stop string completed."""

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            stops = [stops]
        for stop in stops:
            if not isinstance(stop, str) or stop == "":
                raise ConfigError(f"stop strings must be non-empty strings, got {stop!r}")
        self._stops = tuple(dict.fromkeys(stops))
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def feed(self, text_piece: str) -> tuple[str, bool]:
        """Return ``(text safe to emit now, whether a stop string was completed)``.

        After a stop the matcher emits nothing more and keeps answering ``("", True)``.
        """
        if self._stopped:
            return "", True
        text = self._held + text_piece
        starts = [i for i in (text.find(stop) for stop in self._stops) if i >= 0]
        if starts:
            self._held = ""
            self._stopped = True
            return text[:min(starts)], True
        keep = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """The held-back tail, at the end of the stream (no stop string can complete any more)."""
        held, self._held = self._held, ""
        return "" if self._stopped else held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:length]):
                    best = length
                    break
        return best
