"""One client connection: asyncio for the socket and TLS, h11 for HTTP/1.1.

Why this transport: asyncio runs every socket non-blocking on one thread, so a slow or idle client
costs a socket and a few kilobytes, never a thread; `loop.connect_accepted_socket(..., ssl=,
ssl_handshake_timeout=)` gives each connection its own TLS handshake with a deadline, using the
context current at accept (certificate rotation without restart). h11 (a well-kept, I/O-free
HTTP/1.1 parser; Debian ships 0.14) does the request parsing, keep-alive and pipelining rules, so
the only HTTP written here is the policy around it: deadlines, size limits and what each state may
cost.

A connection's life: accepted (pending in `admission`) -> TLS handshake -> request head -> admitted
-> answered (handler, render pool) -> written -> idle keep-alive -> next request, or closed. One
request is answered at a time; reading pauses while it is, so a pipelining client that never reads
holds at most one response in our buffers (plus the kernel's socket buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable

import h11

from .context import ServerContext
from .handler import Handler, Request
from .responses import REASONS, Response, plain
from .tls import sans_match

_HTTPS_ON_HTTP = "Client sent an HTTPS request to an HTTP server.\n"
_WRITE_HIGH = 64 * 1024  # above this much unsent, a connection stops taking on work
_WRITE_CHUNK = 256 * 1024  # a response body is handed to asyncio this much at a time


class Connection(asyncio.Protocol):
    def __init__(self, ctx: ServerContext, handler: Handler,
                 registry: set[Connection]) -> None:
        self._ctx = ctx
        self._handler = handler
        self._registry = registry
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._rendering = False
        # last progress, for the eviction policy: accept, handshake done, an answer below 400
        # drained, bytes of an answer taken; a client sending only bad requests makes none
        self._since = time.monotonic()
        self._h11 = h11.Connection(h11.SERVER,
                                   max_incomplete_event_size=ctx.limits.max_header_bytes)
        self.connecting: asyncio.Task[None] | None = None  # accept to connection_made (TLS)
        self._task: asyncio.Task[None] | None = None  # the request being answered
        self._timer: asyncio.TimerHandle | None = None
        self._request: h11.Request | None = None
        self._body = 0
        self._got_bytes = False  # any byte of the current request seen (408 vs a silent close)
        self._first = True
        self._drained: asyncio.Future[None] | None = None
        self._unsent = 0  # write buffer size when last looked at, for progress()
        self._lingering = False
        self._tls = False
        self._evicted = False
        self._gone = False
        ctx.tally.add("accepted")
        ctx.tally.add("open")
        registry.add(self)
        ctx.admission.arrive(self)  # pending from the accept on, TLS handshake included

    # --- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called once the TLS handshake (if any) is done."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        ctx = self._ctx
        if self._gone or ctx.stopping:
            self.abort()
            return
        ssl_object = transport.get_extra_info("ssl_object")
        sans = ctx.tls.allowed_sans
        if ssl_object is not None and sans is not None and \
                not sans_match(ssl_object.getpeercert() or {}, sans):
            self.handshake_failed("client certificate has none of client_allowed_sans")
            return
        self._tls = ssl_object is not None
        self._since = time.monotonic()
        transport.set_write_buffer_limits(high=_WRITE_HIGH, low=0)
        self._arm(ctx.limits.header_timeout, self._head_expired)

    def data_received(self, data: bytes) -> None:
        if self._gone or self._lingering:
            return
        try:
            self._received(data)
        except Exception:  # noqa: BLE001 -- a bug must cost this connection, not the server
            self._ctx.throttle(logging.ERROR, "bug", "%s: unexpected error; connection closed",
                               self.peer, exc_info=True)
            self.abort()

    def eof_received(self) -> bool | None:
        if self._lingering or self._task is None or self.transport is None or \
                not self.transport.can_write_eof():  # TLS cannot stay half-open in asyncio
            self.close()  # the client is done; a half-sent request gets no answer
            return False
        with contextlib.suppress(h11.RemoteProtocolError):
            self._h11.receive_data(b"")
        return True  # answer the request under way, then close (h11 knows they closed)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        self._since = time.monotonic()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- what admission sees --------------------------------------------------------------------

    @property
    def rendering(self) -> bool:
        return self._rendering

    @rendering.setter
    def rendering(self, value: bool) -> None:
        self._rendering = value
        if not value:
            self._ctx.admission.wake()

    def progress(self, now: float) -> float:
        """A writer progresses when the client takes bytes, which asyncio does not report until
        the buffer is empty: look at the buffer size now."""
        if self._drained is not None and not self._drained.done() and self.transport is not None:
            unsent = self.transport.get_write_buffer_size()
            if unsent < self._unsent:
                self._since = now
            self._unsent = unsent
        return self._since

    def evict(self) -> None:
        self._evicted = True
        self._ctx.throttle(logging.INFO, "evict", "%s: closed to make room for a newer connection",
                           self.peer)
        self.abort()

    def abort(self) -> None:
        """Close at once, dropping unsent data (or the TLS handshake under way)."""
        if self.transport is not None:
            self.transport.abort()
        elif self.connecting is not None and not self.connecting.done() and \
                self.connecting is not _current_task():
            self.connecting.cancel()  # asyncio aborts the handshake and closes the socket
        self._forget()

    def close(self) -> None:
        """Close after the unsent data is written."""
        if self.transport is not None:
            self.transport.close()

    # --- TLS ----------------------------------------------------------------------------------

    def handshake_failed(self, why: object) -> None:
        """The TLS handshake failed or timed out, or the client certificate was refused."""
        if not self._evicted and not self._ctx.stopping and not self._gone:
            self._ctx.tally.add("handshake_failures")
            self._ctx.throttle(logging.DEBUG, "tls", "%s: TLS handshake failed: %s", self.peer,
                               why)
        self.abort()

    # --- reading --------------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if not data:
            return
        if self._first and not self._got_bytes and data[:1] == b"\x16" and not self._tls:
            # a TLS ClientHello on the plain port: say so, as Go's net/http does
            self._fail(400, _HTTPS_ON_HTTP, "HTTPS request on the plain HTTP port")
            return
        if not self._got_bytes:
            self._got_bytes = True
            if not self._first:  # the idle timeout ends; the request's own limit starts
                self._arm(self._ctx.limits.header_timeout, self._head_expired)
        self._h11.receive_data(data)
        self._advance()

    def _advance(self) -> None:
        """Parse what has arrived, up to one complete request."""
        limits = self._ctx.limits
        while not self._gone and self._task is None and not self._lingering:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as e:
                self._fail(e.error_status_hint, None, f"malformed request: {e}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                refusal = self._refuse(event)
                if refusal is not None:
                    self._fail(refusal, None, f"request refused with {refusal}")
                    return
                self._request, self._body = event, 0
            elif isinstance(event, h11.Data):
                self._body += len(event.data)
                if self._body > limits.max_body_bytes:
                    self._fail(413, None, "request body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._complete()
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _refuse(self, req: h11.Request) -> int | None:
        """The 4xx/5xx a parsed request head gets before anyone looks at it, or None."""
        limits = self._ctx.limits
        if req.http_version not in (b"1.0", b"1.1"):
            return 505
        # h11 bounds only heads that arrive in pieces: measure whole ones here
        size = len(req.method) + len(req.target) + 12 + \
            sum(len(k) + len(v) + 4 for k, v in req.headers)
        if size > limits.max_header_bytes or len(req.headers) > limits.max_header_fields:
            return 431
        names = {k for k, _ in req.headers}
        if b"transfer-encoding" in names:
            # nothing here takes a body: chunked framing is not worth accepting
            return 400 if b"content-length" in names else 501
        for k, v in req.headers:
            if k == b"content-length" and int(v) > limits.max_body_bytes:
                return 413  # h11 checked it is digits only
        target = req.target
        if target.startswith((b"http://", b"https://")):  # absolute-form
            target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
        if not target.startswith(b"/"):
            return 400
        return None

    def _complete(self) -> None:
        """A whole request has arrived: admit it and answer it."""
        req = self._request
        assert req is not None and self.transport is not None
        self._request = None
        self._cancel_timer()
        self.transport.pause_reading()  # one request at a time; the rest waits in the kernel
        self._task = self._loop.create_task(self._admit_and_answer(req))

    async def _admit_and_answer(self, req: h11.Request) -> None:
        ctx = self._ctx
        if not await ctx.admission.admit_soon(self):
            ctx.tally.add("rejected")
            await self._respond(plain(503, "Too many connections; try again later.\n",
                                      (("Retry-After", "1"),), close=True), req)
            return
        headers: dict[str, str] = {}
        for k, v in req.headers:
            key, value = k.decode("ascii"), v.decode("latin-1")  # h11 checked the characters
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        target = req.target.decode("ascii", "replace")
        if target.startswith(("http://", "https://")):
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        request = Request(method=req.method.decode("ascii", "replace"),
                          path=target.split("?", 1)[0], headers=headers)
        try:
            resp = await self._handler.handle(request, self)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 -- render() is the caller's: a 500, not a dead task
            self._ctx.throttle(logging.ERROR, "handler", "error answering %s %s",
                               request.method, request.path, exc_info=True)
            resp = plain(500, close=True)
        await self._respond(resp, req)

    # --- writing --------------------------------------------------------------------------------

    async def _respond(self, resp: Response, req: h11.Request) -> None:
        ctx = self._ctx
        transport = self.transport
        if self._gone or transport is None:
            return
        ctx.tally.code(resp.status)
        close = resp.close or ctx.stopping
        fields = resp.head_fields(ctx.policy.headers)
        if close:
            fields.append(("Connection", "close"))
        body = resp.body if req.method != b"HEAD" else b""
        armed = False
        try:
            transport.write(self._h11.send(h11.Response(
                status_code=resp.status, headers=fields, reason=REASONS.get(resp.status, ""))))
            # The body goes out in slices, each written once the last has left: asyncio would
            # otherwise copy whatever the socket does not take at once (most of a 16 MB scrape)
            # into its own buffer, doubling the scrape's peak memory.
            for start in range(0, len(body), _WRITE_CHUNK):
                transport.write(self._h11.send(h11.Data(data=body[start:start + _WRITE_CHUNK])))
                if self._drained is not None and not self._drained.done():
                    self._unsent = transport.get_write_buffer_size()
                    if not armed:  # one deadline for the whole response
                        self._arm(ctx.limits.write_timeout, self._write_expired)
                        armed = True
                    await self._drained
                if self._gone:
                    return
            tail = self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:  # a bug: never send a response h11 thinks is wrong
            ctx.throttle(logging.ERROR, "bug", "%s: cannot send response: %s", self.peer, e)
            self.abort()
            return
        if tail:
            transport.write(tail)
        self._unsent = transport.get_write_buffer_size()
        if self._drained is not None and not self._drained.done():
            if not armed:
                self._arm(ctx.limits.write_timeout, self._write_expired)
            await self._drained  # bounded output: the next request waits for this one to leave
        if resp.status < 400:  # progress is what the client got, not what it asked for
            self._since = time.monotonic()
        if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
            self._finish()  # MUST_CLOSE (ours or theirs): this was the last answer
            return
        self._h11.start_next_cycle()
        self._task = None
        self._first, self._got_bytes = False, False
        self._arm(ctx.limits.idle_timeout, self._idle_expired)
        transport.resume_reading()
        self._advance()  # a pipelined request may be here already

    def _fail(self, status: int, text: str | None, why: str) -> None:
        """Answer a request the parser or the limits refused, then close."""
        self._ctx.throttle(logging.INFO, "client-error", "%s: %s", self.peer,
                           why.replace("\n", " ")[:200])
        if self.transport is None or self._task is not None:
            self.abort()
            return
        self._cancel_timer()
        self.transport.pause_reading()
        resp = plain(status if status in REASONS else 400, text, close=True)
        ctx = self._ctx
        ctx.tally.code(resp.status)
        # written by hand: h11 refuses to send once the client broke the protocol
        head = f"HTTP/1.1 {resp.status} {REASONS[resp.status]}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in resp.head_fields(ctx.policy.headers)) + \
            "Connection: close\r\n\r\n"
        self.transport.write(head.encode("latin-1") + resp.body)
        self._finish()

    def _finish(self) -> None:
        """The last answer is written (or buffered): half-close and read what the client still
        sends for a moment, so closing does not reset the connection under our answer."""
        transport = self.transport
        if transport is None or self._gone:
            return
        self._lingering = True
        limits = self._ctx.limits
        unsent = transport.get_write_buffer_size() > 0
        if transport.can_write_eof():
            transport.write_eof()  # after the buffer is flushed
            transport.resume_reading()
            self._arm(limits.linger + (limits.write_timeout if unsent else 0.0), self.abort)
        else:  # TLS: close() sends close_notify after the buffer, and may read the peer's
            transport.resume_reading()
            transport.close()
            self._arm(limits.write_timeout, self.abort)

    # --- deadlines ------------------------------------------------------------------------------

    def _arm(self, delay: float, then: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, then)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        if self._got_bytes and self._task is None:
            self._fail(408, None, "request head not finished in time")
        else:
            self.close()  # nothing of a request came: close quietly

    def _idle_expired(self) -> None:
        self.close()

    def _write_expired(self) -> None:
        self._ctx.throttle(logging.INFO, "write-timeout", "%s: response not taken in time",
                           self.peer)
        self.abort()

    def _forget(self) -> None:
        if self._gone:
            return
        self._gone = True
        self._cancel_timer()
        for task in (self._task, self.connecting):
            if task is not None and not task.done() and task is not _current_task():
                task.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.cancel()
        self._ctx.admission.leave(self)
        self._ctx.tally.add("open", -1)
        self._registry.discard(self)


def _current_task() -> asyncio.Task[None] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
