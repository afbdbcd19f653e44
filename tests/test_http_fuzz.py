"""Thousands of random and mutated requests against a live server: every one gets a well-formed
4xx/5xx (or 200 when the mutation left it valid) or a close, never a hang; the log stays quiet (no
traceback, a bounded number of lines); no descriptor or thread leaks; a scrape works afterwards."""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from http_support import BODY, http_get, partial_client_hello, raw_exchange, serving, tls_config
from http_support import pki_fixture, tools_fixture  # noqa: F401 -- fixtures

VALID = (b"GET /metrics?x=1 HTTP/1.1\r\nHost: localhost:10040\r\nUser-Agent: Prometheus/2.42\r\n"
         b"Accept: text/plain;version=0.0.4\r\nAccept-Encoding: gzip\r\n\r\n")
TOKENS = [b"\x00", b"\xb2", b"\xff", b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t", b":", b" ",
          b"Content-Length: ", b"Content-Length: \xb2\r\n", b"Content-Length: -1\r\n",
          b"Content-Length: 99999999999999999999999\r\n", b"Transfer-Encoding: chunked\r\n",
          b"HTTP/0.9", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1", b"\x16\x03\x01", b"%00", b"..",
          "\u00b2\u0663\uff11".encode(), b"GET ", b"Host: x\r\n", b"\r\n\r\n", b"a" * 9000]
ANSWER = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")
ALLOWED = {200, 400, 404, 405, 408, 413, 431, 501, 505}


def mutate(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    data = bytearray(VALID)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[pos % len(data)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = rng.choice(TOKENS)
        elif op == 2:
            del data[pos:pos + rng.randrange(1, 20)]
        elif op == 3:
            data[pos:pos] = data[:rng.randrange(1, 60)]
        else:
            data = data[:pos] if kind == 3 else data
    return bytes(data)


def exchange(port: int, data: bytes) -> bytes:
    """Send, half-close, read to the end: the server must answer or close within 3 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server already answered and closed: read what it said
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail(f"no answer and no close within 3 s for {data[:200]!r}")
        return out


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settle(cond, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_fuzzed_requests(caplog: pytest.LogCaptureFixture, tools: None) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    caplog.set_level(logging.INFO, logger="nflogd.http")
    threads0, fds0 = threading.active_count(), fds()
    rng = random.Random(int(os.environ.get("NFLOGD_FUZZ_SEED", "10")))
    codes: dict[int, int] = {}
    with serving(header_timeout=2.0) as srv:
        port = srv.address[1]
        t0 = time.monotonic()
        # the cases the issue names, with the answer each must get
        exact = {
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n": 400,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n": 400,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n": 413,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n": 400,
            b"GET /metrics HTTP/1.1\r\n Host: x\r\n\r\n": 400,  # obs-fold before any field
            b"GET /metrics\r\n\r\n": 400,  # HTTP/0.9
            b"GET /metrics HTTP/0.9\r\nHost: x\r\n\r\n": 505,
            b"GET /m\xe9trics HTTP/1.1\r\nHost: x\r\n\r\n": 400,
        }
        for data, want in exact.items():
            m = ANSWER.match(exchange(port, data))
            assert m and int(m.group(1)) == want, (data, m and m.group(0))
        # obs-fold inside the fields is unfolded (RFC 9112 5.2 allows it)
        folded = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n"
        assert exchange(port, folded).endswith(BODY)
        # a 1000-request pipeline: 1000 answers, in order, one render each
        pipeline = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 999 + \
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        out = raw_exchange(port, pipeline, timeout=30)
        assert out.count(b"HTTP/1.1 200 OK\r\n") == 999 and out.count(b"HTTP/1.1 404 ") == 1
        for _ in range(3000):
            data = mutate(rng)
            out = exchange(port, data)
            if not out:
                codes[0] = codes.get(0, 0) + 1
                continue
            m = ANSWER.match(out)
            assert m, (data[:200], out[:200])
            code = int(m.group(1))
            assert code in ALLOWED, (data[:200], out[:300])
            codes[code] = codes.get(code, 0) + 1
        elapsed = time.monotonic() - t0
        assert http_get(port).body == BODY  # type: ignore[attr-defined]
        settle(lambda: srv.stats().connections_open == 0)
        assert srv.stats().connections_open == 0
    settle(lambda: threading.active_count() <= threads0 and fds() <= fds0)
    assert threading.active_count() <= threads0, threading.enumerate()
    assert fds() <= fds0, os.listdir("/proc/self/fd")
    assert codes.get(400, 0) > 1000, codes  # most mutations are malformed, and said so
    records = [r for r in caplog.records if r.name.startswith(("nflogd", "asyncio"))]
    assert not [r for r in records if r.exc_info or "Traceback" in r.getMessage()], \
        [r.getMessage() for r in records if r.exc_info][:5]
    # one line per kind per 10 s interval at most, whatever the clients did
    assert len(records) <= 2 * (elapsed / 10 + 1) * 6, [r.getMessage() for r in records]
    print(f"{sum(codes.values())} fuzzed requests in {elapsed:.1f} s: {sorted(codes.items())}; "
          f"{len(records)} log lines")


def test_fuzzed_tls_handshakes(pki: Path, tmp_path: Path,
                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    caplog.set_level(logging.INFO, logger="nflogd.http")
    rng = random.Random(11)
    hello = partial_client_hello() * 2  # about a whole ClientHello
    with serving(tls_config(tmp_path, pki), handshake_timeout=1.0) as srv:
        port = srv.address[1]
        for _ in range(300):
            data = bytearray(hello[:rng.randrange(1, len(hello))])
            for _ in range(rng.randrange(0, 4)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            exchange(port, bytes(data))  # answered by an alert or a close, never a hang
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(BODY)
        assert srv.stats().tls_handshake_failures >= 290
    records = [r for r in caplog.records if r.name.startswith(("nflogd", "asyncio"))]
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records][:5]
    assert len(records) <= 12, [r.getMessage() for r in records]
