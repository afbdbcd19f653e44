"""The endpoint's counters: a lock-guarded tally on the serving side, a frozen snapshot out."""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerStats:
    """Counters for the daemon to export; all totals since start()."""

    connections_accepted: int
    connections_rejected: int  # a complete request answered 503: every served slot was busy
    connections_evicted: int  # closed to make room for a newer connection (see admission.py)
    connections_open: int
    tls_handshake_failures: int  # includes handshake timeouts and refused client certificates
    requests: Mapping[int, int]  # responses by status code
    auth_failures: int
    tls_reloads: int  # certificate (re)loads that succeeded (file change or reload())
    tls_reload_failures: int
    last_tls_reload_ok: bool
    last_tls_reload_timestamp: float  # unix time of the last successful (re)load, 0 before TLS


class Tally:
    """The mutable side: bumped from the event loop, read by stats() from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.rejected = 0
        self.evicted = 0
        self.open = 0
        self.handshake_failures = 0
        self.auth_failures = 0
        self.codes: collections.Counter[int] = collections.Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def code(self, status: int) -> None:
        with self._lock:
            self.codes[status] += 1

    def snapshot(self, tls_reloads: int, tls_reload_failures: int, last_tls_ok: bool,
                 last_tls_time: float) -> ServerStats:
        with self._lock:
            return ServerStats(
                connections_accepted=self.accepted, connections_rejected=self.rejected,
                connections_evicted=self.evicted, connections_open=self.open,
                tls_handshake_failures=self.handshake_failures, requests=dict(self.codes),
                auth_failures=self.auth_failures, tls_reloads=tls_reloads,
                tls_reload_failures=tls_reload_failures, last_tls_reload_ok=last_tls_ok,
                last_tls_reload_timestamp=last_tls_time)
