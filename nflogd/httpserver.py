"""The metrics endpoint: HTTP/1.1 and HTTPS with limits, basic auth and a landing page.

Why not prometheus_client's start_http_server or http.server: both do the TLS handshake on the
accepting thread (one idle client stalls every HTTPS scrape) and start a thread per request with no
limit. Here:

- an acceptor thread only accepts and counts; it never reads or handshakes;
- one I/O thread runs every socket non-blocking (TLS handshake, request head, writing), each
  connection a small state machine with a deadline, so a slow or idle client costs a socket and a
  few bytes, never a thread, and never delays anyone else;
- a fixed pool of worker threads does the slow parts (bcrypt, render(), gzip) one request at a time.

At `max_connections`, a newcomer takes the slot of the connection that has waited longest on its
client (handshake, request head or idle keep-alive, for at least 0.25 s), so idle clients cannot
lock scrapers out. When every slot is busy, the newcomer still gets its TLS handshake and a 503 (in
a bounded number of extra slots); beyond those it is closed at once. Nothing grows without a bound.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import email.utils
import errno
import gzip
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import queue
import re
import secrets
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import bcrypt

from . import __version__
from .webconfig import WebConfig, WebConfigError, build_ssl_context

__all__ = ["MetricsServer", "ServerStats"]

log = logging.getLogger("nflogd.http")

Render = Callable[["str | None"], "tuple[bytes, str]"]

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_MAX_HEADER_FIELDS = 100
_BCRYPT_MAX = 72  # bcrypt uses at most 72 bytes of a password
_AUTH_CACHE_SIZE = 1024
_LINGER = 1.0  # seconds to drain a client after "Connection: close" so our answer is not reset
_REJECT_TIMEOUT = 2.0  # handshake/request budget of a connection that only gets a 503
_GZIP_MIN = 256
# At the cap, a connection that has waited this long on its client (handshake, request head, or
# idle keep-alive) gives its slot to a newcomer: idle clients cannot hold every slot, while a
# real client gets through a handshake and a request head in milliseconds.
_EVICT_AFTER = 0.25

# connection states
_HANDSHAKE, _READ, _BODY, _BUSY, _WRITE, _DRAIN, _CLOSED = range(7)


@dataclass(frozen=True)
class ServerStats:
    """Counters for the daemon to export; all totals since start()."""

    connections_accepted: int
    connections_rejected: int  # over max_connections: answered 503 or closed at once
    connections_evicted: int  # stalled connections closed at the cap to make room for a new one
    connections_open: int
    tls_handshake_failures: int  # includes handshake timeouts and refused client certificates
    requests: Mapping[int, int]  # responses by status code
    auth_failures: int
    tls_reloads: int  # certificate re-reads that succeeded (file change or reload())
    tls_reload_failures: int
    last_tls_reload_ok: bool
    last_tls_reload_timestamp: float  # unix time of the last successful (re)load, 0 before TLS


@dataclass
class _Request:
    method: str
    target: str
    path: str
    headers: dict[str, str]  # lower-case name -> value (repeated fields joined with ", ")
    keep_alive: bool


class _Conn:
    __slots__ = ("sock", "peer", "tls", "reject", "state", "deadline", "inbuf", "out", "close_after",
                 "events", "got_bytes", "idle", "request", "head_len", "since")

    def __init__(self, sock: socket.socket, peer: str, reject: bool) -> None:
        self.sock = sock
        self.peer = peer
        self.tls = False
        self.reject = reject  # over the cap: handshake, read the request, answer 503
        self.state = _READ
        self.deadline = 0.0
        self.inbuf = bytearray()
        self.out: memoryview | None = None
        self.close_after = False
        self.events = 0
        self.got_bytes = False  # any byte of the current request seen (408 vs silent close)
        self.idle = False  # between keep-alive requests: the idle timeout applies
        self.request: _Request | None = None
        self.head_len = 0
        self.since = 0.0  # when it started waiting on the client (handshake or request head)


class _AuthCache:
    """Successful basic-auth checks, keyed by an HMAC (per-process random key) of user, stored hash
    and password: the plaintext never stays in memory, and a changed hash never matches an old
    entry. Only successes are cached, so a wrong password always costs one full bcrypt."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def digest(self, user: bytes, stored: bytes, password: bytes) -> bytes:
        msg = b"".join(len(x).to_bytes(4, "big") + x for x in (user, stored, password))
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            if digest in self._entries:
                self._entries.move_to_end(digest)
                return True
            return False

    def add(self, digest: bytes) -> None:
        with self._lock:
            self._entries[digest] = None
            while len(self._entries) > _AUTH_CACHE_SIZE:
                self._entries.popitem(last=False)


class _TokenBucket:
    """exporter-toolkit's rate_limit: one bucket for every client (golang.org/x/time/rate)."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval, self.burst = interval, burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) / self.interval)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


@dataclass(frozen=True)
class _State:
    """Everything a reload swaps, replaced as a whole so a request sees one consistent config."""

    config: WebConfig | None
    ssl_ctx: ssl.SSLContext | None
    users: Mapping[bytes, bytes]
    dummy_hash: bytes  # what an unknown user is checked against: same cost as real users
    cache: _AuthCache
    limiter: _TokenBucket | None
    headers: tuple[tuple[str, str], ...]
    tls_sig: tuple[Any, ...]  # stat() of the TLS files the context was built from


def _file_sig(config: WebConfig | None) -> tuple[Any, ...]:
    if config is None or config.tls is None:
        return ()
    sig: list[tuple[Any, ...]] = []
    for path in config.tls.files:
        try:
            st = os.stat(path)
            sig.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError as e:
            sig.append((path, e.errno))
    return tuple(sig)


def _make_state(config: WebConfig | None, previous: _State | None = None) -> _State:
    sig = _file_sig(config)
    ctx = build_ssl_context(config) if config is not None else None
    users = {u.encode(): h.encode() for u, h in (config.basic_auth_users if config else {}).items()}
    dummy = b""
    if users:
        # the most common cost among the users, so an unknown name takes as long as a known one
        costs = collections.Counter(int(h[4:6]) for h in users.values())
        cost = max(costs, key=lambda c: (costs[c], c))
        if previous is not None and previous.dummy_hash[4:6] == b"%02d" % cost:
            dummy = previous.dummy_hash
        else:
            # Hex, not raw bytes: bcrypt 3.2 (Debian 12) refuses a password holding a NUL byte,
            # which 16 random bytes hold one time in sixteen.
            dummy = bcrypt.hashpw(secrets.token_hex(16).encode(), bcrypt.gensalt(cost))
    limiter = None
    rl = config.rate_limit if config else None
    if rl is not None:
        old = previous.limiter if previous else None
        same = old is not None and (old.interval, old.burst) == (rl.interval, rl.burst)
        limiter = old if same else _TokenBucket(rl.interval, rl.burst)
    return _State(
        config=config, ssl_ctx=ctx, users=users, dummy_hash=dummy, cache=_AuthCache(),
        limiter=limiter, headers=tuple((config.headers if config else {}).items()), tls_sig=sig)


class MetricsServer:
    """Serves `render()` at `metrics_path` and a landing page at `/`, over HTTP or HTTPS.

    `render(accept_header)` returns (body, content_type); it runs in a worker thread.
    `web_config` adds TLS, client certificates, basic auth, extra headers and a rate limit.
    Timeouts are in seconds; sizes in bytes.
    """

    def __init__(
        self,
        host: str | Sequence[tuple[str, int]],
        port: int = 0,
        *,
        sockets: Sequence[socket.socket] = (),
        readiness: Callable[[], tuple[bool, str]] | None = None,
        metrics_path: str,
        render: Render,
        web_config: WebConfig | None = None,
        max_connections: int = 64,
        workers: int = 4,
        handshake_timeout: float = 5.0,
        header_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        write_timeout: float = 30.0,
        max_header_bytes: int = 8192,
        max_body_bytes: int = 1024,
        tls_check_interval: float = 1.0,
    ) -> None:
        if not metrics_path.startswith("/") or metrics_path == "/":
            raise ValueError(f"metrics_path must start with / and not be /: {metrics_path!r}")
        if max_connections < 1 or workers < 1:
            raise ValueError("max_connections and workers must be at least 1")
        # (host, port) or the new package's contract, a list of addresses (packaging's bridge
        # until nflogd/http/ replaces this module); pre-opened sockets replace the addresses.
        self._addresses = [(host, port)] if isinstance(host, str) else list(host)
        self._given = list(sockets)
        self._paths = (metrics_path, _landing_page(metrics_path))  # swapped whole, never torn
        self._render = render
        self.max_connections = max_connections
        self._reject_slots = max(16, max_connections)
        self._nworkers = workers
        self._handshake_timeout = handshake_timeout
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._tls_check_interval = tls_check_interval

        self._lock = threading.Lock()  # guards _state swaps and every counter below
        self._state = _make_state(web_config)
        self._bcrypt_lock = threading.Lock()  # one bcrypt at a time, as exporter-toolkit
        self._serving = 0
        self._rejecting = 0
        self._accepted = 0
        self._rejected = 0
        self._evicted = 0
        self._handshake_failures = 0
        self._auth_failures = 0
        self._codes: collections.Counter[int] = collections.Counter()
        self._tls_reloads = 0
        self._tls_reload_failures = 0
        self._last_tls_ok = True
        self._last_tls_time = time.time() if self._state.ssl_ctx else 0.0
        self._failed_sig: tuple[Any, ...] | None = None
        self._next_tls_check = 0.0

        self._listener: socket.socket | None = None
        self._listeners: list[socket.socket] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._jobs: queue.Queue[tuple[_Conn, _Request] | None] = queue.Queue()
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()  # to the I/O thread
        self._wake_r, self._wake_w = socket.socketpair()
        self._acc_wake_r, self._acc_wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w, self._acc_wake_r, self._acc_wake_w):
            s.setblocking(False)

    # --- public API ----------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); port is the real one when 0 was asked for."""
        if self._listener is None:
            raise RuntimeError("server not started")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every bound (host, port)."""
        return [tuple(s.getsockname()[:2]) for s in self._listeners]

    @property
    def tls_enabled(self) -> bool:
        return self._state.ssl_ctx is not None

    @property
    def tls_reload_failures(self) -> int:
        return self._tls_reload_failures

    @property
    def last_tls_reload_ok(self) -> bool:
        return self._last_tls_ok

    def stats(self) -> ServerStats:
        with self._lock:
            return ServerStats(
                connections_accepted=self._accepted, connections_rejected=self._rejected,
                connections_evicted=self._evicted,
                connections_open=self._serving + self._rejecting,
                tls_handshake_failures=self._handshake_failures, requests=dict(self._codes),
                auth_failures=self._auth_failures, tls_reloads=self._tls_reloads,
                tls_reload_failures=self._tls_reload_failures,
                last_tls_reload_ok=self._last_tls_ok, last_tls_reload_timestamp=self._last_tls_time)

    def start(self) -> None:
        """Bind and serve in background threads. Raises OSError naming the address on failure."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        listeners = list(self._given)
        try:
            if not listeners:
                for host, port in self._addresses:
                    listeners.append(_listen(host, port))
        except OSError:
            for s in listeners:
                s.close()
            raise
        self._listeners, self._listener = listeners, listeners[0]
        scheme = "https" if self._state.ssl_ctx else "http"
        for host, port in self.addresses:
            shown = f"[{host}]" if ":" in host else host
            log.info("listening on %s://%s:%d%s", scheme, shown, port, self._paths[0])
        self._threads = [threading.Thread(target=self._accept_loop, name="nflogd-http-accept",
                                          daemon=True),
                         threading.Thread(target=self._io_loop, name="nflogd-http-io", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"nflogd-http-worker-{i}",
                                           daemon=True) for i in range(self._nworkers)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Close the listener and every connection; returns within a fraction of a second
        (a render() still running in a worker is left to finish on its own)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for s in (self._acc_wake_w, self._wake_w):
            _poke(s)
        for _ in range(self._nworkers):
            self._jobs.put(None)
        deadline = time.monotonic() + 0.5
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for s in self._listeners:
            s.close()
        for s in (self._wake_r, self._wake_w, self._acc_wake_r, self._acc_wake_w):
            s.close()

    def reload(self, web_config: WebConfig | None) -> None:
        """Swap TLS, auth, headers and rate limit (on SIGHUP); certificates are re-read too.

        Raises WebConfigError (and keeps serving the old config) if the new one cannot be used.
        """
        with self._lock:
            previous = self._state
        state = _make_state(web_config, previous)
        with self._lock:
            self._state = state
            self._failed_sig = None
            if state.ssl_ctx is not None:
                self._tls_reloads += 1
                self._last_tls_ok = True
                self._last_tls_time = time.time()
        log.info("web config %s", "reloaded" if web_config else "cleared: plain HTTP, no auth")

    def set_metrics_path(self, metrics_path: str) -> None:
        """Serve the metrics at another path from the next request on (a reload that moves it)."""
        if not metrics_path.startswith("/") or metrics_path == "/":
            raise ValueError(f"metrics_path must start with / and not be /: {metrics_path!r}")
        self._paths = (metrics_path, _landing_page(metrics_path))

    # --- acceptor ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self._listeners:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        sel.register(self._acc_wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is not self._acc_wake_r:
                        self._accept_batch(key.fileobj)  # type: ignore[arg-type]
        finally:
            sel.close()

    def _accept_batch(self, listener: socket.socket) -> None:
        for _ in range(256):  # a bounded batch, then look at the stop flag again
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept connections: %s", e.strerror)
                    self._stopping.wait(0.1)  # the backlog waits; no busy loop
                    break
                # ECONNABORTED and friends: that client is gone; back to select()
                log.debug("accept failed: %s", e)
                break
            self._admit(sock, addr)

    def _admit(self, sock: socket.socket, addr: tuple[Any, ...]) -> None:
        with self._lock:
            self._accepted += 1
            if self._serving < self.max_connections:
                self._serving += 1
                reject = False
            elif self._rejecting < self._reject_slots:
                self._rejecting += 1  # counted as rejected unless it gets an evicted one's slot
                reject = True
            else:
                self._rejected += 1
                sock.close()
                return
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        peer = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
        self._inbox.append(("new", _Conn(sock, peer, reject)))
        _poke(self._wake_w)

    # --- I/O thread ----------------------------------------------------------------------------

    def _io_loop(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._conns: set[_Conn] = set()
        self._nearest = float("inf")
        try:
            while not self._stopping.is_set():
                timeout = None
                if self._nearest != float("inf"):
                    timeout = max(0.0, self._nearest - time.monotonic())
                for key, mask in self._sel.select(timeout):
                    conn = key.data
                    if conn is None:
                        _drain_wake(self._wake_r)
                    elif conn.state != _CLOSED:
                        self._guarded(self._on_ready, conn)
                self._take_inbox()
                if time.monotonic() >= self._nearest:
                    self._sweep()
        except Exception:  # a bug here would silently stop serving: make it loud
            log.exception("HTTP I/O loop failed; the metrics endpoint is down")
            raise
        finally:
            for conn in list(self._conns):
                self._close(conn)
            self._sel.close()

    def _guarded(self, step: Callable[..., None], conn: _Conn, *args: object) -> None:
        """One connection's bug closes that connection, not the server."""
        try:
            step(conn, *args)
        except Exception:
            log.exception("%s: unexpected error; connection closed", conn.peer)
            self._close(conn)

    def _take_inbox(self) -> None:
        while self._inbox:
            msg = self._inbox.popleft()
            if msg[0] == "new":
                self._guarded(self._start_conn, msg[1])
            else:  # ("done", conn, response bytes, close_after)
                _, conn, data, close_after = msg
                if conn.state == _BUSY:
                    self._guarded(self._send, conn, data, close_after)

    def _start_conn(self, conn: _Conn) -> None:
        now = time.monotonic()
        conn.since = now
        self._conns.add(conn)
        if conn.reject:
            self._evict_for(conn, now)
        ctx = self._tls_context(now)
        if ctx is not None:
            try:
                conn.sock = ctx.wrap_socket(conn.sock, server_side=True,
                                            do_handshake_on_connect=False)
            except (OSError, ValueError) as e:
                log.debug("%s: cannot start TLS: %s", conn.peer, e)
                self._close(conn)
                return
            conn.tls = True
            conn.state = _HANDSHAKE
            self._set_deadline(conn, now + self._limit(conn, self._handshake_timeout))
            self._handshake(conn)
        else:
            conn.state = _READ
            self._set_deadline(conn, now + self._limit(conn, self._header_timeout))
            self._watch(conn, selectors.EVENT_READ)

    def _evict_for(self, conn: _Conn, now: float) -> None:
        """Give `conn` (over the cap) the slot of the connection that has waited longest on its
        client, if one has waited _EVICT_AFTER; otherwise it stays a 503 connection."""
        victim = None
        for c in self._conns:
            if not c.reject and c.state in (_HANDSHAKE, _READ, _BODY) and \
                    now - c.since >= _EVICT_AFTER and (victim is None or c.since < victim.since):
                victim = c
        with self._lock:
            if victim is None:
                self._rejected += 1
                return
            self._evicted += 1
            self._rejecting -= 1
            self._serving += 1  # the victim's slot, given back below
        log.debug("%s: closed after %.1fs waiting, to make room at the connection cap",
                  victim.peer, now - victim.since)
        self._close(victim)
        conn.reject = False

    def _on_ready(self, conn: _Conn) -> None:
        if conn.state == _HANDSHAKE:
            self._handshake(conn)
        elif conn.state in (_READ, _BODY):
            self._read(conn)
        elif conn.state == _WRITE:
            self._write(conn)
        elif conn.state == _DRAIN:
            self._drain(conn)

    def _handshake(self, conn: _Conn) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as e:
            self._handshake_failed(conn, getattr(e, "reason", None) or str(e))
            return
        sans = self._state.config.tls.client_allowed_sans if self._state.config and \
            self._state.config.tls else None
        if sans is not None and not _sans_match(sock.getpeercert() or {}, sans):
            self._handshake_failed(conn, "client certificate has none of client_allowed_sans")
            return
        conn.state = _READ
        conn.since = time.monotonic()
        self._set_deadline(conn, conn.since + self._limit(conn, self._header_timeout))
        self._read(conn)  # the request may already sit decrypted in OpenSSL's buffer

    def _handshake_failed(self, conn: _Conn, why: str) -> None:
        with self._lock:
            self._handshake_failures += 1
        log.debug("%s: TLS handshake failed: %s", conn.peer, why)
        self._close(conn)

    def _limit(self, conn: _Conn, timeout: float) -> float:
        return min(timeout, _REJECT_TIMEOUT) if conn.reject else timeout

    def _read(self, conn: _Conn) -> None:
        """Read what is there (OpenSSL may hold decrypted bytes select() cannot see), then parse."""
        # enough for the longest head (with its blank line) and body: never stuck short of it
        cap = self._max_header + 4 + self._max_body + 1
        want = selectors.EVENT_READ
        while len(conn.inbuf) < cap:
            try:
                data = conn.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                break
            except ssl.SSLWantWriteError:  # TLS needs to send first (e.g. a key update)
                want = selectors.EVENT_WRITE
                break
            except OSError:  # reset, TLS alert, bad record: nobody left to answer
                self._close(conn)
                return
            if not data:
                self._close(conn)  # EOF: idle keep-alive end, or a request never finished
                return
            if not conn.got_bytes:
                conn.got_bytes = True
                if conn.idle:  # the idle timeout ends and the request's own time limit starts
                    conn.idle = False
                    self._set_deadline(conn, time.monotonic() + self._header_timeout)
            conn.inbuf += data
        self._watch(conn, want)
        self._parse(conn)

    def _parse(self, conn: _Conn) -> None:
        if conn.state == _READ:
            if not conn.tls and conn.inbuf[:1] == b"\x16":
                # a TLS ClientHello on the plain port: say so, as Go's net/http does
                self._error(conn, 400, "Client sent an HTTPS request to an HTTP server.\n")
                return
            m = _HEAD_END.search(conn.inbuf, 0, self._max_header + 4)
            if m is None:
                if len(conn.inbuf) > self._max_header:
                    self._error(conn, 431)
                return
            if m.start() > self._max_header:
                self._error(conn, 431)
                return
            result = _parse_head(bytes(conn.inbuf[:m.start()]))
            if isinstance(result, tuple):
                self._error(conn, *result)
                return
            req = result
            te = req.headers.get("transfer-encoding")
            cl = req.headers.get("content-length")
            if te is not None:
                # no request here needs a body; chunked framing is not worth parsing
                self._error(conn, 501 if cl is None else 400)
                return
            length = 0
            if cl is not None:
                if not cl.isdigit():  # also catches "5, 5" from repeated fields
                    self._error(conn, 400)
                    return
                length = int(cl)
            if length > self._max_body:
                self._error(conn, 413)
                return
            conn.request = req
            conn.head_len = m.end() + length
            conn.state = _BODY
        if conn.state == _BODY:
            if len(conn.inbuf) < conn.head_len:
                return
            pending = conn.request
            assert pending is not None
            del conn.inbuf[:conn.head_len]  # the body, if any, is read and dropped
            conn.request = None
            conn.got_bytes = bool(conn.inbuf)
            if conn.reject:
                self._error(conn, 503, "Too many connections; try again later.\n",
                            extra=(("Retry-After", "1"),))
                return
            conn.state = _BUSY
            self._watch(conn, 0)
            self._jobs.put((conn, pending))

    def _error(self, conn: _Conn, code: int, body: str | None = None,
               extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer from the I/O thread and close: for requests a worker never sees."""
        with self._lock:
            self._codes[code] += 1
        data = _response(code, (body or f"{code} {_REASONS[code]}\n").encode(),
                         "text/plain; charset=utf-8", self._state.headers + extra, close=True)
        self._send(conn, data, True)

    def _send(self, conn: _Conn, data: bytes, close_after: bool) -> None:
        conn.out = memoryview(data)
        conn.close_after = close_after
        conn.state = _WRITE
        self._set_deadline(conn, time.monotonic() + self._write_timeout)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        out = conn.out
        assert out is not None
        while out:
            try:
                # the same bytes are offered again after WANT_WRITE, as OpenSSL requires
                n = conn.sock.send(out[:65536])
            except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                self._watch(conn, selectors.EVENT_WRITE)
                conn.out = out
                return
            except ssl.SSLWantReadError:
                self._watch(conn, selectors.EVENT_READ)
                conn.out = out
                return
            except OSError:
                self._close(conn)
                return
            out = out[n:]
        conn.out = None
        if conn.close_after or self._stopping.is_set():
            self._linger(conn)
            return
        # keep-alive: wait for the next request (maybe already here, pipelined)
        conn.state = _READ
        conn.idle = not conn.got_bytes
        conn.since = time.monotonic()
        limit = self._idle_timeout if conn.idle else self._header_timeout
        self._set_deadline(conn, conn.since + limit)
        self._read(conn)

    def _linger(self, conn: _Conn) -> None:
        """Half-close and read what the client still sends, so closing does not reset the
        connection and destroy the answer before the client has read it."""
        sock = conn.sock
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.unwrap()  # sends close_notify; the peer's answer is not waited for
            except (OSError, ValueError):
                pass
        try:
            sock.shutdown(socket.SHUT_WR)  # on an SSLSocket this also drops the TLS layer
        except OSError:
            self._close(conn)
            return
        conn.state = _DRAIN
        self._set_deadline(conn, time.monotonic() + _LINGER)
        self._watch(conn, selectors.EVENT_READ)
        self._drain(conn)

    def _drain(self, conn: _Conn) -> None:
        for _ in range(16):
            try:
                if not conn.sock.recv(65536):
                    break
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except OSError:
                break
        self._close(conn)

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _set_deadline(self, conn: _Conn, when: float) -> None:
        conn.deadline = when
        if when < self._nearest:
            self._nearest = when

    def _sweep(self) -> None:
        now = time.monotonic()
        # a connection at a worker has no deadline while render() runs
        for conn in [c for c in self._conns if c.state != _BUSY and c.deadline <= now]:
            self._guarded(self._expire, conn)
        self._nearest = min((c.deadline for c in self._conns if c.state != _BUSY),
                            default=float("inf"))

    def _expire(self, conn: _Conn) -> None:
        if conn.state == _HANDSHAKE:
            self._handshake_failed(conn, "timed out")
        elif conn.state in (_READ, _BODY) and conn.got_bytes:
            self._error(conn, 408)  # a request was started but not finished in time
        else:
            self._close(conn)  # idle keep-alive, a stalled writer, or the end of a linger

    def _close(self, conn: _Conn) -> None:
        if conn.state == _CLOSED:
            return
        if conn.events:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0
        conn.state = _CLOSED
        conn.out = None
        try:
            conn.sock.close()
        except OSError:
            pass
        self._conns.discard(conn)
        with self._lock:
            if conn.reject:
                self._rejecting -= 1
            else:
                self._serving -= 1

    # --- TLS certificate rotation --------------------------------------------------------------

    def _tls_context(self, now: float) -> ssl.SSLContext | None:
        """The context for a new connection, re-read first if its files changed (checked at
        most every tls_check_interval): rotation needs no restart."""
        state = self._state
        if state.ssl_ctx is None or now < self._next_tls_check:
            return state.ssl_ctx
        self._next_tls_check = now + self._tls_check_interval
        sig = _file_sig(state.config)
        if sig == state.tls_sig or sig == self._failed_sig:
            return state.ssl_ctx
        assert state.config is not None
        try:
            ctx = build_ssl_context(state.config)
        except WebConfigError as e:
            with self._lock:
                self._failed_sig = sig
                self._tls_reload_failures += 1
                self._last_tls_ok = False
            log.error("new TLS certificate not loaded, still serving the previous one: %s", e)
            return state.ssl_ctx
        with self._lock:
            if self._state is state:
                self._state = dataclasses.replace(state, ssl_ctx=ctx, tls_sig=sig)
            self._failed_sig = None
            self._tls_reloads += 1
            self._last_tls_ok = True
            self._last_tls_time = time.time()
        log.info("TLS certificate files changed: reloaded")
        return ctx

    # --- workers -------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                return
            conn, req = job
            try:
                code, data, close = self._handle(req)
            except Exception:
                log.exception("error answering %s %s", req.method, req.path)
                code, close = 500, True
                data = _response(500, b"500 Internal Server Error\n", "text/plain; charset=utf-8",
                                 self._state.headers, close=True)
            with self._lock:
                self._codes[code] += 1
            self._inbox.append(("done", conn, data, close))
            _poke(self._wake_w)

    def _handle(self, req: _Request) -> tuple[int, bytes, bool]:
        """(status, whole response, close after) for one request; runs in a worker."""
        state = self._state
        close = not req.keep_alive or self._stopping.is_set()
        head = req.method == "HEAD"

        def answer(code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                   extra: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes, bool]:
            return code, _response(code, body, ctype, state.headers + extra, close=close,
                                   head=head), close

        if state.limiter is not None and not state.limiter.allow():
            return answer(429, b"429 Too Many Requests\n")
        if not self._authorized(state, req):
            with self._lock:
                self._auth_failures += 1
            return answer(401, b"401 Unauthorized\n",
                          extra=(("WWW-Authenticate", 'Basic realm="nflogd", charset="UTF-8"'),))
        metrics_path, landing = self._paths
        if req.path not in (metrics_path, "/"):
            return answer(404, b"404 Not Found\n")
        if req.method not in ("GET", "HEAD"):
            return answer(405, b"405 Method Not Allowed\n", extra=(("Allow", "GET, HEAD"),))
        if req.path == "/":
            return answer(200, landing, "text/html; charset=utf-8")
        body, ctype = self._render(req.headers.get("accept"))
        extra: tuple[tuple[str, str], ...] = (("Vary", "Accept-Encoding"),)
        if len(body) >= _GZIP_MIN and _accepts_gzip(req.headers.get("accept-encoding")):
            # level 1: metrics text shrinks ~10x already, at a fraction of the CPU of level 6
            body = gzip.compress(body, compresslevel=1, mtime=0)
            extra += (("Content-Encoding", "gzip"),)
        return answer(200, body, ctype, extra)

    def _authorized(self, state: _State, req: _Request) -> bool:
        if not state.users:
            return True
        assert state.config is not None
        if req.path in state.config.basic_auth_excluded_paths:
            return True
        creds = _basic_credentials(req.headers.get("authorization"))
        if creds is None:
            return False
        user, password = creds
        stored = state.users.get(user)
        hashed = stored if stored is not None else state.dummy_hash
        digest = state.cache.digest(user, hashed, password)
        if stored is not None and digest in state.cache:
            return True
        # An unknown user costs one bcrypt against a dummy hash of the same cost, so the answer
        # takes as long as for a wrong password. Like Go's bcrypt (which exporter-toolkit uses),
        # only the first 72 bytes count: bcrypt 5 raises on longer ones instead of truncating,
        # and htpasswd -B hashes the first 72 bytes of a longer password.
        with self._bcrypt_lock:
            try:
                ok = bcrypt.checkpw(password[:_BCRYPT_MAX], hashed)
            except ValueError:
                ok = False
        if ok and stored is not None:
            state.cache.add(digest)
            return True
        return False


# --- helpers -----------------------------------------------------------------------------------

def _listen(host: str, port: int) -> socket.socket:
    """A listening socket. "" is every address: dual-stack IPv6 when available, else IPv4."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    shown = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    candidates: list[tuple[int, tuple[Any, ...]]] = []
    if name in ("", "::"):
        candidates.append((socket.AF_INET6, ("::", port)))
        if name == "":
            candidates.append((socket.AF_INET, ("0.0.0.0", port)))
    else:
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
        except socket.gaierror as e:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {shown}: {e.strerror}") from None
        # like Go's net.Listen, one address only, IPv4 preferred for a name
        infos.sort(key=lambda i: i[0] != socket.AF_INET)
        candidates.append((infos[0][0], infos[0][4]))
    first_error: OSError | None = None
    for family, addr in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:  # no IPv6 in this kernel: fall back to IPv4
            first_error = first_error or e
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and addr[0] == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
            sock.listen(1024)
            return sock
        except OSError as e:
            sock.close()
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and family == socket.AF_INET6:
                first_error = first_error or e
                continue  # IPv6 present but unusable here: try IPv4
            raise OSError(e.errno, f"cannot listen on {shown}: {e.strerror}") from None
    assert first_error is not None
    raise OSError(first_error.errno, f"cannot listen on {shown}: {first_error.strerror}")


def _parse_head(head: bytes) -> _Request | tuple[int, str | None]:
    """The request line and header fields, or (status, body) for a malformed one."""
    lines = head.decode("latin-1").split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and lines[0] == "":  # RFC 9112: ignore empty lines before the request line
        lines.pop(0)
    if not lines:
        return 400, None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        return 400, None
    method, target, version = parts
    v = _VERSION.fullmatch(version)
    if v is None:
        return 400, None
    if v.group(1) != "1":
        return 505, None
    if len(lines) - 1 > _MAX_HEADER_FIELDS:
        return 431, None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):  # also refuses obs-fold and "Name : value"
            return 400, None
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if target.startswith(("http://", "https://")):  # absolute-form
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    if not target.startswith("/"):
        return 400, None
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        keep_alive = "keep-alive" in tokens
    else:
        keep_alive = "close" not in tokens
    return _Request(method=method, target=target, path=target.split("?", 1)[0],
                    headers=headers, keep_alive=keep_alive)


def _response(code: int, body: bytes, ctype: str, headers: tuple[tuple[str, str], ...], *,
              close: bool, head: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {code} {_REASONS.get(code, '')}",
             f"Date: {email.utils.formatdate(usegmt=True)}",
             f"Content-Type: {ctype}",
             f"Content-Length: {len(body)}",
             f"Connection: {'close' if close else 'keep-alive'}"]
    lines += [f"{k}: {v}" for k, v in headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return data if head else data + body


def _basic_credentials(value: str | None) -> tuple[bytes, bytes] | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


def _accepts_gzip(value: str | None) -> bool:
    if not value:
        return False
    for item in value.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def _sans_match(cert: dict[str, Any], allowed: tuple[str, ...]) -> bool:
    """exporter-toolkit's client_allowed_sans: any DNS, e-mail, IP or URI SAN listed exactly."""
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address":
            try:  # Python prints IPv6 uncompressed; Go compares the compressed form
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                pass
        if kind in ("DNS", "email", "IP Address", "URI") and value in allowed:
            return True
    return False


def _landing_page(metrics_path: str) -> bytes:
    p = html.escape(metrics_path, quote=True)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
            f"<title>nflogd</title></head>\n<body>\n<h1>nflogd</h1>\n"
            f"<p>Netfilter NFLOG records as Prometheus metrics (version {html.escape(__version__)})."
            f"</p>\n<p><a href=\"{p}\">Metrics</a></p>\n</body>\n</html>\n").encode()


def _poke(sock: socket.socket) -> None:
    try:
        sock.send(b"\0")
    except (BlockingIOError, OSError):
        pass  # already awake (buffer full) or shutting down


def _drain_wake(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, OSError):
        pass
