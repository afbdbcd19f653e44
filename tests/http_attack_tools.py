"""Processes for tests/test_http_attacks.py, each its own interpreter so that neither the attack nor
the legitimate scraper shares a GIL with the server under test:

    serve CONFIG_JSON     two MetricsServers (plain without auth; TLS with basic auth) serving a
                          10k-series body; prints {"plain": port, "tls": port}; stops on stdin EOF
                          and prints its threads, fds and peak RSS as JSON
    scrape CONFIG_JSON    one scrape every 0.25 s on a fresh connection (as a restarted Prometheus
                          would); prints [[status, seconds], ...]
    attack CONFIG_JSON    runs one attack for a bounded time; prints "ready" once it is in place

Every loop here is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import http.client
import itertools
import json
import os
import resource
import socket
import ssl
import sys
import threading
import time
from typing import Any

SERIES = 10_000
INTERVAL = 0.25
DEADLINE = 2.0


def _nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


# --- the server ----------------------------------------------------------------------------------

def serve(cfg: dict[str, Any]) -> None:
    from nflogd.http import MetricsServer
    from nflogd.webconfig import load_web_config

    _nofile(8192)
    tick = itertools.count()

    def render(accept: str | None) -> tuple[bytes, str]:
        n = next(tick)  # built afresh each time, as the collector does: a render costs CPU
        half = SERIES // 2
        lines = ["# HELP nflog_packets_total Packets.\n# TYPE nflog_packets_total counter\n"]
        lines += [f'nflog_packets_total{{group="0",prefix="drop {i}",indev="eth{i % 8}"}} '
                  f'{i * 7 + n}\n' for i in range(half)]
        lines.append("# HELP nflog_bytes_total Bytes.\n# TYPE nflog_bytes_total counter\n")
        lines += [f'nflog_bytes_total{{group="0",prefix="drop {i}",indev="eth{i % 8}"}} '
                  f'{i * 700 + n}\n' for i in range(half)]
        return "".join(lines).encode(), "text/plain; version=0.0.4; charset=utf-8"

    plain = MetricsServer([("127.0.0.1", 0)], metrics_path="/metrics", render=render)
    tls = MetricsServer([("127.0.0.1", 0)], metrics_path="/metrics", render=render,
                        web_config=load_web_config(cfg["web_config"]))
    plain.start()
    tls.start()
    print(json.dumps({"plain": plain.address[1], "tls": tls.address[1]}), flush=True)
    peak_threads = threading.active_count()
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak_threads
        while not stop.wait(0.05):
            peak_threads = max(peak_threads, threading.active_count())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for line in sys.stdin:  # the test writes "stats" lines; EOF stops
        if line.strip() == "stats":
            print(json.dumps(_report(plain, tls, peak_threads)), flush=True)
    stop.set()
    watcher.join()
    plain.stop()
    tls.stop()


def _report(plain: Any, tls: Any, peak_threads: int) -> dict[str, Any]:
    return {"threads": threading.active_count(), "peak_threads": peak_threads,
            "fds": len(os.listdir("/proc/self/fd")),
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "plain": _stats(plain), "tls": _stats(tls)}


def _stats(srv: Any) -> dict[str, Any]:
    st = srv.stats()
    return {"open": st.connections_open, "evicted": st.connections_evicted,
            "accepted": st.connections_accepted, "tls_failures": st.tls_handshake_failures,
            "auth_failures": st.auth_failures,
            "rejected": st.connections_rejected, "requests": {str(k): v for k, v in
                                                              st.requests.items()}}


# --- the legitimate scraper ------------------------------------------------------------------------

def _client_ctx(cfg: dict[str, Any]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cfg["ca"])


def scrape(cfg: dict[str, Any]) -> None:
    port, tls, count = cfg["port"], cfg["tls"], cfg["count"]
    headers = {"Accept-Encoding": "gzip"}
    if tls:
        token = base64.b64encode(f"{cfg['user']}:{cfg['password']}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    ctx = _client_ctx(cfg) if tls else None
    keepalive = cfg.get("keepalive", False)  # one connection, as a running Prometheus keeps
    results: list[tuple[int, float]] = []
    start = time.monotonic()
    conn: http.client.HTTPConnection | None = None
    for i in range(count):
        time.sleep(max(0.0, start + i * INTERVAL - time.monotonic()))
        t0 = time.monotonic()
        status = 0
        if conn is None:
            if ctx is not None:
                conn = http.client.HTTPSConnection("localhost", port, context=ctx,
                                                   timeout=DEADLINE)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
        try:
            conn.request("GET", "/metrics", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.getheader("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            status = resp.status
            if status == 200 and body.count(b"\n") < SERIES:
                status = -1  # a truncated body is no success
        except (OSError, http.client.HTTPException):
            status = 0
        if status != 200 or not keepalive:
            conn.close()  # a failed keep-alive connection is replaced: that scrape failed
            conn = None
        results.append((status, time.monotonic() - t0))
    print(json.dumps(results), flush=True)


# --- the attacks -----------------------------------------------------------------------------------

def partial_client_hello() -> bytes:
    """The first half of a real TLS ClientHello."""
    ctx = ssl.create_default_context()
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(bio_in, bio_out, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = bio_out.read()
    assert hello[:1] == b"\x16"
    return hello[: len(hello) // 2]


async def _open(port: int, rcvbuf: int | None = None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def _until_closed(reader: asyncio.StreamReader, end: float) -> None:
    while time.monotonic() < end:
        try:
            data = await asyncio.wait_for(reader.read(65536), max(0.01, end - time.monotonic()))
        except (asyncio.TimeoutError, OSError):
            return
        if not data:
            return


async def _looping(end: float, body: Any) -> None:
    """Run body() again whenever the server closed it, until `end`."""
    while time.monotonic() < end:
        try:
            await body()
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            await asyncio.sleep(0.01)


async def attack(cfg: dict[str, Any]) -> None:
    kind, port, n, duration = cfg["kind"], cfg["port"], cfg["n"], cfg["duration"]
    end = time.monotonic() + duration
    get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    writers: list[asyncio.StreamWriter] = []

    async def pipeline() -> None:  # `depth` requests at once, never read a byte, hold on
        _, w = await _open(port, rcvbuf=4096)
        writers.append(w)
        w.write(get * cfg.get("depth", 3))
        await asyncio.sleep(max(0.0, end - time.monotonic()))

    async def half_tls() -> None:  # half a ClientHello, reconnect when closed
        r, w = await _open(port)
        writers.append(w)
        w.write(partial_client_hello())
        await _until_closed(r, end)
        w.close()

    async def idle() -> None:  # connect, send nothing, reconnect when closed
        r, w = await _open(port)
        writers.append(w)
        await _until_closed(r, end)
        w.close()

    async def slowloris() -> None:  # a request head one byte every 0.5 s
        r, w = await _open(port)
        writers.append(w)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        for byte in itertools.cycle(b"X-a: b\r\n"):
            if time.monotonic() >= end:
                break
            w.write(bytes([byte]))
            await asyncio.sleep(0.5)
            if r.at_eof() or w.is_closing():
                break
        w.close()

    async def wrong_password() -> None:  # keep-alive TLS, a wrong password again and again
        ctx = _client_ctx(cfg)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname="localhost")
        writers.append(w)
        token = base64.b64encode(b"alice:wrong").decode()
        req = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode()
        while time.monotonic() < end:
            w.write(req)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await r.readexactly(length)
            if b"connection: close" in head.lower():
                return

    bodies = {"pipeline": pipeline, "half_tls": half_tls, "idle": idle, "slowloris": slowloris,
              "wrong_password": wrong_password}
    if kind == "burst":  # 200 idle TCP and 20 half-open TLS at once, held
        hello = partial_client_hello()
        opened = await asyncio.gather(*[_open(port) for _ in range(220)], return_exceptions=True)
        for i, o in enumerate(opened):
            if isinstance(o, tuple):
                writers.append(o[1])
                if i >= 200:
                    o[1].write(hello)
        print("ready", flush=True)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
    else:
        body = bodies[kind]
        loops = [_looping(end, body) for _ in range(n)] if kind != "pipeline" else \
            [body() for _ in range(n)]
        tasks = [asyncio.ensure_future(c) for c in loops]
        await asyncio.sleep(cfg.get("ramp", 1.0))
        print("ready", flush=True)
        await asyncio.wait(tasks, timeout=max(0.0, end - time.monotonic()) + 1)
        for t in tasks:
            t.cancel()
    for w in writers:
        w.transport.abort()


def main() -> None:
    what, cfg = sys.argv[1], json.loads(sys.argv[2])
    _nofile(8192)
    if what == "serve":
        serve(cfg)
    elif what == "scrape":
        scrape(cfg)
    else:
        asyncio.run(attack(cfg))


if __name__ == "__main__":
    main()
