"""What a complete request gets: rate limit, auth, then the route. Runs on the event loop; the
slow parts (bcrypt, render(), gzip) go to their thread pools."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from .auth import credentials
from .context import ServerContext
from .responses import HEALTHY_PATH, READY_PATH, Response, accepts_gzip, compress, plain

_UNAUTHORIZED = ("WWW-Authenticate", 'Basic realm="nflogd", charset="UTF-8"')
_RETRY = ("Retry-After", "1")
MAX_RENDER_KEYS = 8  # distinct Accept headers rendered at once; a scraper sends one


class Renders(Protocol):
    """A connection, as far as the handler marks it: rendering ones are never evicted."""

    rendering: bool


@dataclass(frozen=True)
class Request:
    """The parts of a parsed request the policy looks at."""

    method: str
    path: str  # without the query string
    headers: Mapping[str, str]  # lower-case name -> value (repeated fields joined with ", ")


class Renderer:
    """render() in the render pool, single-flight: requests that arrive while a render with the
    same Accept (and gzip choice) runs share its result, so a crowd of scrapes costs one render,
    and the pool's queue never holds more than MAX_RENDER_KEYS jobs."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._inflight: dict[tuple[str | None, bool], asyncio.Future[Response]] = {}

    async def get(self, accept: str | None, gz: bool) -> Response:
        key = (accept, gz)
        fut = self._inflight.get(key)
        if fut is None:
            if len(self._inflight) >= MAX_RENDER_KEYS:
                return plain(503, "Too many different scrapes at once; try again later.\n",
                             (_RETRY,))
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._ctx.render_pool, self._render, accept, gz)
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._forget(key, f))
        # shield: one waiter leaving (evicted, closed) must not cancel the others' render
        return await asyncio.shield(fut)

    def _forget(self, key: tuple[str | None, bool], fut: asyncio.Future[Response]) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if not fut.cancelled():
            fut.exception()  # retrieved: each waiter reports a failure, not "never retrieved"

    def _render(self, accept: str | None, gz: bool) -> Response:
        body, ctype = self._ctx.render(accept)
        headers: tuple[tuple[str, str], ...] = (("Vary", "Accept-Encoding"),)
        if gz and len(body) >= self._ctx.limits.gzip_min_bytes:
            body = compress(body)
            headers += (("Content-Encoding", "gzip"),)
        return Response(200, body, ctype, headers)


class Handler:
    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._renderer = Renderer(ctx)

    async def handle(self, req: Request, conn: Renders) -> Response:
        ctx = self._ctx
        policy = ctx.policy
        if policy.limiter is not None and not policy.limiter.allow():
            return plain(429)
        if policy.auth.required(req.path):
            refused = await self._authorize(req)
            if refused is not None:
                return refused
        paths = ctx.paths
        if req.path not in (paths.metrics, "/", HEALTHY_PATH, READY_PATH):
            return plain(404)
        if req.method not in ("GET", "HEAD"):
            return plain(405, headers=(("Allow", "GET, HEAD"),))
        if req.path == "/":
            return Response(200, paths.landing, "text/html; charset=utf-8")
        if req.path == paths.metrics:  # first: a metrics_path of /-/ready would win
            return await self._metrics(req, conn)
        if req.path == HEALTHY_PATH:
            return plain(200, "nflogd is healthy.\n")
        return self._ready()

    async def _metrics(self, req: Request, conn: Renders) -> Response:
        conn.rendering = True
        try:
            return await self._renderer.get(req.headers.get("accept"),
                                            accepts_gzip(req.headers.get("accept-encoding")))
        finally:
            conn.rendering = False

    def _ready(self) -> Response:
        try:
            ready, reason = self._ctx.readiness()
        except Exception as e:  # noqa: BLE001 -- a bug in the callable: say so, not ready
            self._ctx.throttle(logging.ERROR, "readiness", "readiness check failed: %r", e)
            return plain(503, "readiness check failed\n")
        if ready:
            return plain(200, "nflogd is ready.\n")
        return plain(503, f"not ready: {' '.join(reason.split())}\n")

    async def _authorize(self, req: Request) -> Response | None:
        """None when the credentials are good; otherwise the answer (401, or 503 when too many
        password checks are waiting already)."""
        ctx = self._ctx
        auth = ctx.policy.auth
        creds = credentials(req.headers.get("authorization"))
        if creds is not None and auth.cached(*creds):
            return None  # checked before: no bcrypt, no queue
        if creds is not None:
            if ctx.bcrypt_waiting > ctx.limits.max_bcrypt_waiting:
                # do not queue without bound: the guessers wait, a cached scraper never does
                return plain(503, "Too many password checks waiting; try again later.\n",
                             (_RETRY,))
            ctx.bcrypt_waiting += 1
            try:
                loop = asyncio.get_running_loop()
                if await loop.run_in_executor(ctx.bcrypt_pool, auth.check, *creds):
                    return None
            finally:
                ctx.bcrypt_waiting -= 1
        ctx.tally.add("auth_failures")
        return plain(401, headers=(_UNAUTHORIZED,))
