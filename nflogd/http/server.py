"""MetricsServer: the metrics endpoint's public face, and the threads it runs on.

Threads, whatever the number of clients: one event-loop thread (every socket, TLS, parsing,
policy), `Limits.render_threads` render threads (render() and gzip), one bcrypt thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import resource
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from ..webconfig import WebConfig
from .connection import Connection
from .context import Readiness, Render, ServerContext, make_paths, make_policy
from .handler import Handler
from .limits import Limits
from .listen import listen, show
from .stats import ServerStats
from .tls import TLSContexts

__all__ = ["MetricsServer"]

log = logging.getLogger("nflogd.http")

ACCEPT_BATCH = 64  # connections accepted per turn of the event loop
# asyncio (3.11+) gives every TLS connection a read buffer of SSLProtocol.max_size (256 KiB) from
# its accept on: 512 half-open handshakes held 160 MB. A request here is a few KiB, so reading in
# 32 KiB pieces costs nothing (measured: 317 -> 90 KiB per pending TLS connection).
TLS_READ_BUFFER = 32 * 1024


def _always_ready() -> tuple[bool, str]:
    return True, ""


class MetricsServer:
    """Serves `render()` at `metrics_path`, a landing page at `/`, and `/-/healthy`,
    `/-/ready`, over HTTP or HTTPS, on every address in `addresses` and every pre-opened
    listening socket in `sockets` (systemd socket activation; duplicated, the caller keeps its
    own).

    `render(accept_header)` returns (body, content_type) and runs in a render thread.
    `readiness()` returns (ready, reason) and runs on the event loop: it must be quick.
    `web_config` adds TLS, client certificates, basic auth, extra headers and a rate limit.
    """

    def __init__(self, addresses: Sequence[tuple[str, int]] = (), *,
                 sockets: Sequence[socket.socket] = (), metrics_path: str, render: Render,
                 web_config: WebConfig | None = None, readiness: Readiness = _always_ready,
                 limits: Limits | None = None, tls_check_interval: float = 1.0) -> None:
        if not addresses and not sockets:
            raise ValueError("nothing to listen on: no address and no socket")
        self._wanted = tuple(addresses)
        self._given = tuple(sockets)
        self._limits = limits or Limits()
        self._render_pool = concurrent.futures.ThreadPoolExecutor(
            self._limits.render_threads, thread_name_prefix="nflogd-http-render")
        self._bcrypt_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="nflogd-http-bcrypt")
        self._reload_lock = threading.Lock()
        self._ctx = ServerContext(
            self._limits, TLSContexts(web_config, tls_check_interval),
            make_policy(web_config, self._bcrypt_pool), make_paths(metrics_path), render,
            readiness, self._render_pool, self._bcrypt_pool)
        self._listeners: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    # --- public API -----------------------------------------------------------------------------

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The bound (host, port) of every listener; a port is the real one when 0 was asked."""
        if not self._listeners:
            raise RuntimeError("server not started")
        return tuple((s.getsockname()[0], s.getsockname()[1]) for s in self._listeners)

    @property
    def address(self) -> tuple[str, int]:
        return self.addresses[0]

    @property
    def tls_enabled(self) -> bool:
        return self._ctx.tls.enabled

    @property
    def tls_reload_failures(self) -> int:
        return self._ctx.tls.reload_failures

    @property
    def last_tls_reload_ok(self) -> bool:
        return self._ctx.tls.last_ok

    def stats(self) -> ServerStats:
        tls = self._ctx.tls
        return self._ctx.tally.snapshot(tls.reloads, tls.reload_failures, tls.last_ok,
                                        tls.last_time)

    def start(self) -> None:
        """Listen and serve in the background. Raises OSError naming the address on failure;
        returns without waiting for any bcrypt work (see auth.BasicAuth)."""
        if self._listeners or self._stopped:
            raise RuntimeError("server already started")
        self._ensure_fds()
        _bound_tls_read_buffer()
        try:
            for host, port in self._wanted:
                self._listeners.append(listen(host, port))
            for sock in self._given:
                self._listeners.append(sock.dup())
        except OSError:
            for s in self._listeners:
                s.close()
            self._listeners = []
            raise
        for s in self._listeners:
            s.setblocking(False)
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(started, failure),
                                        name="nflogd-http", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        scheme = "https" if self._ctx.tls.enabled else "http"
        for host, port in self.addresses:
            log.info("listening on %s://%s%s", scheme, show(host, port), self._ctx.paths.metrics)

    def stop(self) -> None:
        """Close the listeners and every connection; returns within a fraction of a second
        (a render() still running is left to finish on its own)."""
        if self._stopped:
            return
        self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._shutdown()))
            thread.join(2.0)
        for s in self._listeners:
            s.close()
        self._render_pool.shutdown(wait=False, cancel_futures=True)
        self._bcrypt_pool.shutdown(wait=False, cancel_futures=True)

    def reload(self, web_config: WebConfig | None) -> None:
        """Swap TLS, auth, headers and rate limit (on SIGHUP); certificates are re-read too.

        Raises WebConfigError (and keeps serving the old config) if the new one cannot be used.
        """
        with self._reload_lock:
            ctx = self._ctx
            policy = make_policy(web_config, self._bcrypt_pool, ctx.policy)
            ctx.tls.replace(web_config)  # raises before changing anything
            ctx.policy = policy
        log.info("web config %s", "reloaded" if web_config else "cleared: plain HTTP, no auth")

    def set_metrics_path(self, metrics_path: str) -> None:
        """Serve the metrics at another path from the next request on (a reload that moves it)."""
        self._ctx.paths = make_paths(metrics_path)

    # --- the event-loop thread ------------------------------------------------------------------

    def _run(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(self._loop_error)
        registry: set[Connection] = set()
        self._registry = registry
        self._connecting: set[asyncio.Task[None]] = set()
        handler = Handler(self._ctx)
        try:
            for sock in self._listeners:
                loop.add_reader(sock, self._accept, sock, handler)
        except BaseException as e:  # noqa: BLE001 -- handed to start()
            failure.append(e)
            loop.close()
            started.set()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        ctx = self._ctx
        ctx.stopping = True
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock)
        for conn in list(self._registry):
            conn.abort()
        for _ in range(3):  # let the transports run their close callbacks
            await asyncio.sleep(0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.2)
        asyncio.get_running_loop().stop()

    def _accept(self, listener: socket.socket, handler: Handler) -> None:
        """Accept a bounded batch per turn of the loop (asyncio's create_server would take up to
        its backlog at once): fewer than `max_pending`, so a connection accepted in this batch is
        read before a flood of newer ones could evict it. Out of descriptors, accepting pauses
        briefly instead of spinning or logging per attempt."""
        loop = asyncio.get_running_loop()
        for _ in range(max(1, min(ACCEPT_BATCH, self._limits.max_pending // 2))):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._ctx.throttle(logging.WARNING, "accept", "cannot accept connections: %s",
                                       e.strerror)
                    loop.remove_reader(listener)
                    loop.call_later(0.1, self._resume_accept, listener, handler)
                return  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self._ctx, handler, self._registry)
            if isinstance(addr, tuple) and len(addr) >= 2:
                conn.peer = show(str(addr[0]), int(addr[1]))
            task = loop.create_task(self._connect(sock, conn, self._ctx.tls.current()))
            conn.connecting = task
            self._connecting.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._connecting.discard)

    def _resume_accept(self, listener: socket.socket, handler: Handler) -> None:
        if not self._ctx.stopping:
            asyncio.get_running_loop().add_reader(listener, self._accept, listener, handler)

    async def _connect(self, sock: socket.socket, conn: Connection,
                       tls: ssl.SSLContext | None) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, sock, ssl=tls,
                ssl_handshake_timeout=self._limits.handshake_timeout if tls else None)
        except asyncio.CancelledError:  # evicted or stopping: the socket is ours to close
            sock.close()
        except (OSError, ssl.SSLError, asyncio.TimeoutError, TimeoutError) as e:
            sock.close()
            if tls is not None:
                conn.handshake_failed(e)
            else:  # a plain socket asyncio could not take (reset already): nothing to count
                conn.abort()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's own reports (a client's TLS alert, a reset during a write, ...) are about
        one connection: one throttled line, never a traceback per client."""
        exc = context.get("exception")
        level = logging.DEBUG if isinstance(exc, OSError) else logging.WARNING
        self._ctx.throttle(level, "asyncio", "%s%s", context.get("message", "asyncio error"),
                           f": {exc!r}" if exc is not None else "")

    def _ensure_fds(self) -> None:
        """Every connection the limits allow needs a file descriptor: raise the soft limit to
        that (the hard limit permitting), else serve fewer pending connections. Running out of
        descriptors would stall accept() for everyone."""
        need = self._limits.fds_needed
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            target = need if hard == resource.RLIM_INFINITY else min(need, hard)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
        if soft != resource.RLIM_INFINITY and soft < need:
            pending = max(16, soft - self._limits.max_connections - 256)
            log.warning("only %d file descriptors: at most %d connections before a request "
                        "(instead of %d)", soft, pending, self._limits.max_pending)
            self._limits = dataclasses.replace(self._limits, max_pending=pending)
            self._ctx.limits = self._limits
            self._ctx.admission.limits = self._limits


def _bound_tls_read_buffer() -> None:
    """A class attribute of asyncio's, so process-wide: nflogd runs no other asyncio TLS."""
    proto = getattr(asyncio, "sslproto", None)
    cls = getattr(proto, "SSLProtocol", None)
    if cls is not None and getattr(cls, "max_size", 0) > TLS_READ_BUFFER:
        cls.max_size = TLS_READ_BUFFER
