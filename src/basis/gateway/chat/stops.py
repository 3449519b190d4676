"""Stop sequences, applied by the gateway itself: the stop text is never emitted."""

from __future__ import annotations


class StopScanner:
    def __init__(self, stops: list[str] | None) -> None:
        self.stops = stops or []
        self._longest = max((len(s) for s in self.stops), default=0)
        self._buf = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop sequence completed)."""
        if not self.stops:
            return text, False
        self._buf += text
        hits = [i for i in (self._buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            emit, self._buf = self._buf[: min(hits)], ""
            return emit, True
        # Hold back the longest tail that could still begin a stop sequence.
        keep = 0
        for k in range(min(len(self._buf), self._longest - 1), 0, -1):
            tail = self._buf[-k:]
            if any(s.startswith(tail) for s in self.stops):
                keep = k
                break
        emit = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep:]
        return emit, False

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out
