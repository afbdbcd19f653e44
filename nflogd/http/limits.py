"""Every number that bounds what one client can cost the endpoint, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Timeouts in seconds, sizes in bytes. The README's "Limits that keep one client from
    hurting others" section describes these defaults; change both together."""

    # Connections that have sent a complete request: served, or idle between keep-alive requests.
    max_connections: int = 64
    # Connections that have not yet sent a complete request (TLS handshake, request head). A
    # newcomer beyond this evicts the oldest of them, so stalled clients cannot hold the door.
    max_pending: int = 512
    admit_wait: float = 1.0  # a complete request waits this long for a slot, then gets 503
    handshake_timeout: float = 5.0
    header_timeout: float = 10.0  # from the first byte of a request (or the accept) to its end
    idle_timeout: float = 30.0  # keep-alive: between the end of a response and the next request
    write_timeout: float = 30.0  # to hand the whole response to the kernel
    linger: float = 1.0  # after "Connection: close": read what the client still sends
    max_header_bytes: int = 8192
    max_header_fields: int = 100
    max_body_bytes: int = 1024
    render_threads: int = 2
    max_bcrypt_waiting: int = 8  # password checks queued behind the one running; beyond: 503
    gzip_min_bytes: int = 256
    log_interval: float = 10.0  # at most one log line per kind of client error per interval

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_pending < 1 or self.render_threads < 1:
            raise ValueError("max_connections, max_pending and render_threads must be at least 1")

    @property
    def fds_needed(self) -> int:
        """File descriptors the endpoint may hold at once (plus a margin for everything else)."""
        return self.max_connections + self.max_pending + 256
