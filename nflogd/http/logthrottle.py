"""At most one log line per kind of event per interval, with a count of the ones held back.

Clients control how often their mistakes happen; the log (and journald's rate limit, which would
also swallow nflogd's real errors) must not be theirs to fill."""

from __future__ import annotations

import logging
import threading
import time


class LogThrottle:
    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._log = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, level: int, kind: str, msg: str, *args: object,
                 exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._next[kind] = now + self._interval
            held = self._held.pop(kind, 0)
            if len(self._next) > 64:  # kinds are a fixed set in practice; never grow unbounded
                self._next = {k: v for k, v in self._next.items() if v > now}
        if held:
            msg += f" ({held} more like it in the last {self._interval:g}s not logged)"
        self._log.log(level, msg, *args, exc_info=exc_info)
