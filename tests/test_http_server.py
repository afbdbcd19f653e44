"""The transport and its limits (nflogd.http.server, connection, admission, listen) against
real clients: curl, raw sockets, Python's http.client and ssl."""

from __future__ import annotations

import http.client
import logging
import selectors
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from http_support import (  # noqa: F401 -- fixtures
    BODY,
    CTYPE,
    _raise_nofile,
    _wait_closed,
    client_ctx,
    curl,
    http_get,
    https_get,
    partial_client_hello,
    pki_fixture,
    raw_exchange,
    render,
    serving,
    threading_count_is_bounded,
    tls_config,
    tools_fixture,
)

from nflogd.http import MetricsServer, listen

# --- plain HTTP ------------------------------------------------------------------------------------

def test_plain_scrape_exact_body_with_and_without_gzip(tools: None) -> None:
    with serving() as srv:
        port = srv.address[1]
        rc, status, body = curl(f"http://127.0.0.1:{port}/metrics")
        assert (rc, status, body) == (0, "200", BODY)
        rc, status, body = curl("--compressed", f"http://127.0.0.1:{port}/metrics")
        assert rc == 0
        assert (rc, status, body) == (0, "200", BODY)
        resp = http_get(port, headers={"Accept-Encoding": "gzip"})
        assert resp.getheader("Content-Encoding") == "gzip"
        assert len(resp.body) < len(BODY) // 3  # type: ignore[attr-defined]
        resp = http_get(port, headers={"Accept-Encoding": "gzip;q=0"})
        assert resp.getheader("Content-Encoding") is None
        assert resp.body == BODY  # type: ignore[attr-defined]
        assert resp.getheader("Content-Type") == CTYPE


def test_landing_page_404_405_head(tools: None) -> None:
    with serving() as srv:
        port = srv.address[1]
        _, status, body = curl(f"http://127.0.0.1:{port}/")
        assert status == "200" and b'<a href="/metrics">' in body
        assert curl(f"http://127.0.0.1:{port}/nope")[1] == "404"
        resp = http_get(port, method="POST")
        assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
        resp = http_get(port, method="HEAD")
        assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(BODY)
        assert resp.body == b""  # type: ignore[attr-defined]
        assert srv.stats().requests == {200: 2, 404: 1, 405: 1}


def test_keep_alive_and_pipelining(tools: None) -> None:
    with serving() as srv:
        port = srv.address[1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(3):  # one connection, three requests
            conn.request("GET", "/metrics")
            assert conn.getresponse().read() == BODY
        conn.close()
        req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        out = raw_exchange(port, req + req + req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert out.count(b"HTTP/1.1 200 OK") == 3 and out.endswith(BODY)
        out = raw_exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")  # 1.0: closes by default
        assert out.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in out
        assert srv.stats().connections_accepted == 3


def test_request_limits(tools: None) -> None:
    with serving(header_timeout=1.0, max_header_bytes=4096, max_body_bytes=64) as srv:
        port = srv.address[1]
        big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
        assert raw_exchange(port, big).startswith(b"HTTP/1.1 431 ")
        many = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + \
            b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"
        assert raw_exchange(port, many).startswith(b"HTTP/1.1 431 ")
        assert raw_exchange(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw_exchange(port, b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n").startswith(
            b"HTTP/1.1 505 ")
        assert raw_exchange(port, b"GET /metrics HTTP/1.1\r\n bad fold\r\n\r\n").startswith(
            b"HTTP/1.1 400 ")
        assert raw_exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 400 ")  # HTTP/1.1 without Host (RFC 9112 3.2)
        body = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        assert raw_exchange(port, body).startswith(b"HTTP/1.1 413 ")
        chunked = (b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"0\r\n\r\n")
        assert raw_exchange(port, chunked).startswith(b"HTTP/1.1 501 ")
        smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"
        assert raw_exchange(port, smuggle).startswith(b"HTTP/1.1 400 ")
        small = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde"
        assert raw_exchange(port, small).endswith(BODY)  # a small body is read and dropped
        t0 = time.monotonic()
        out = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert out.startswith(b"HTTP/1.1 408 ") and 0.8 < time.monotonic() - t0 < 3
        assert raw_exchange(port, partial_client_hello()).startswith(b"HTTP/1.1 400 ")
        assert curl(f"http://127.0.0.1:{port}/metrics")[2] == BODY  # still serving


def test_idle_keepalive_connection_is_closed(tools: None) -> None:
    with serving(idle_timeout=0.5) as srv:
        port = srv.address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert data.endswith(BODY) and 0.4 < time.monotonic() - t0 < 2  # closed when idle


# --- listening -------------------------------------------------------------------------------------

def test_listen_all_addresses_dual_stack_and_literals(tools: None) -> None:
    with serving(host="") as srv:
        host, port = srv.address
        assert host == "::"  # one dual-stack socket
        assert curl(f"http://127.0.0.1:{port}/metrics")[2] == BODY
        assert curl(f"http://[::1]:{port}/metrics")[2] == BODY
    with serving(host="[::1]") as srv:
        assert srv.address[0] == "::1"
        assert curl(f"http://[::1]:{srv.address[1]}/metrics")[2] == BODY
    with serving(host="localhost") as srv:
        assert srv.address[0] == "127.0.0.1"


def test_several_addresses_or_preopened_sockets(tools: None) -> None:
    srv = MetricsServer([("127.0.0.1", 0), ("::1", 0)], metrics_path="/metrics", render=render)
    srv.start()
    try:
        (h1, p1), (h2, p2) = srv.addresses
        assert (h1, h2) == ("127.0.0.1", "::1")
        assert curl(f"http://127.0.0.1:{p1}/metrics") == (0, "200", BODY)
        assert curl(f"http://[::1]:{p2}/metrics") == (0, "200", BODY)
    finally:
        srv.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p1), timeout=2)
    pre = [socket.socket(), socket.socket(socket.AF_INET6)]
    pre[0].bind(("127.0.0.1", 0))
    pre[1].bind(("::1", 0))
    for s in pre:
        s.listen(16)  # as systemd hands them over with socket activation
    try:
        # with sockets, the addresses (the config's listen:) are not bound: systemd holds them
        srv = MetricsServer([("127.0.0.1", pre[0].getsockname()[1])], sockets=pre,
                            metrics_path="/metrics", render=render)
        srv.start()
        try:
            assert srv.addresses == tuple(s.getsockname()[:2] for s in pre)
            assert curl(f"http://127.0.0.1:{pre[0].getsockname()[1]}/metrics")[2] == BODY
            assert curl(f"http://[::1]:{pre[1].getsockname()[1]}/metrics")[2] == BODY
        finally:
            srv.stop()
        assert all(s.fileno() != -1 for s in pre)  # still the caller's, still listening
    finally:
        for s in pre:
            s.close()


def test_bind_failure_names_the_address() -> None:
    with serving() as srv:
        port = srv.address[1]
        other = MetricsServer([("127.0.0.1", port)], metrics_path="/metrics", render=render)
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: Address already in use"):
            other.start()


def test_listen_falls_back_to_ipv4_without_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *a, **kw):  # type: ignore[no-untyped-def]
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real_socket(family, *a, **kw)

    monkeypatch.setattr(listen.socket, "socket", no_ipv6)
    sock = listen.listen("", 0)
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0"
    finally:
        sock.close()


def test_stop_is_prompt_with_clients_holding_connections(pki: Path, tmp_path: Path) -> None:
    with serving(tls_config(tmp_path, pki)) as srv:
        port = srv.address[1]
        idle = socket.create_connection(("127.0.0.1", port))
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(partial_client_hello())
        time.sleep(0.1)
        t0 = time.monotonic()
        srv.stop()
        # far below the 5 s handshake and 30 s idle timeouts it would wait for if it waited
        assert time.monotonic() - t0 < 2.0
        for s in (idle, half):
            s.settimeout(2)
            assert s.recv(100) == b""  # the server closed its side
            s.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)


def test_idle_and_half_handshake_do_not_delay_a_scrape(pki: Path, tmp_path: Path) -> None:
    with serving(tls_config(tmp_path, pki), handshake_timeout=1.5) as srv:
        port = srv.address[1]
        opened = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        half = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        for s in half:
            s.sendall(partial_client_hello())
        time.sleep(0.2)  # they are all accepted and stuck mid-handshake now
        t0 = time.monotonic()
        rc, status, body = curl("--cacert", str(pki / "ca.pem"), f"https://localhost:{port}/metrics")
        elapsed = time.monotonic() - t0
        assert (rc, status, body) == (0, "200", BODY)
        assert elapsed < 2.0, elapsed
        t0 = time.monotonic()
        assert https_get(port, client_ctx(pki))[:2] == (200, BODY)
        assert time.monotonic() - t0 < 1.0
        # and the server drops the stalled ones at the handshake timeout
        for s in idle + half:
            s.settimeout(5)
            assert s.recv(100) == b""
            s.close()
        assert 1.4 < time.monotonic() - opened < 4.0
        _wait_closed(srv)  # the count follows the close by a turn of the loop
        assert srv.stats().tls_handshake_failures == 10


def test_idle_and_partial_request_do_not_delay_a_plain_scrape(tools: None) -> None:
    with serving() as srv:
        port = srv.address[1]
        idle = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /metr")
        time.sleep(0.1)
        t0 = time.monotonic()
        assert curl(f"http://127.0.0.1:{port}/metrics")[2] == BODY
        assert time.monotonic() - t0 < 2.0
        idle.close()
        slow.close()








def test_1000_concurrent_connections_leave_it_serving(tools: None) -> None:
    _raise_nofile(4096)
    n = 1000
    with serving(max_connections=64) as srv:
        port = srv.address[1]
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        sel = selectors.DefaultSelector()
        replies: dict[socket.socket, bytes] = {}
        for s in socks:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            replies[s] = b""
        done: set[socket.socket] = set()
        deadline = time.monotonic() + 10
        while len(done) < n and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    chunk = b""
                replies[s] += chunk
                if not chunk or replies[s].endswith(BODY):
                    done.add(s)
                    sel.unregister(s)
        assert len(done) == n, "some connections got neither an answer nor a close"
        ok = sum(1 for r in replies.values() if r.startswith(b"HTTP/1.1 200 ") and r.endswith(BODY))
        busy = sum(1 for r in replies.values() if r.startswith(b"HTTP/1.1 503 "))
        closed = sum(1 for r in replies.values() if r == b"")
        assert ok + busy + closed == n
        # at least a full set is served; the rest wait for a slot, get 503 after admit_wait, or
        # are evicted (closed) when more than max_pending wait for their first request
        assert ok >= 64 and closed <= n - 64
        for s in socks:
            s.close()
        sel.close()
        _wait_closed(srv)
        rc, status, body = curl(f"http://127.0.0.1:{port}/metrics")
        assert (rc, status, body) == (0, "200", BODY)
        st = srv.stats()
        assert st.connections_accepted == n + 1
        assert st.connections_rejected == busy
        assert st.requests == {code: k for code, k in ((200, ok + 1), (503, busy)) if k}
        assert st.connections_evicted >= closed  # served idle ones also made room
        assert threading_count_is_bounded()





def test_1000_stalled_tls_connections_then_serving(pki: Path, tmp_path: Path) -> None:
    _raise_nofile(4096)
    with serving(tls_config(tmp_path, pki), handshake_timeout=1.0) as srv:
        port = srv.address[1]
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(1000)]
        hello = partial_client_hello()
        for s in socks[::2]:
            s.sendall(hello)
        time.sleep(0.3)
        for s in socks:
            s.close()
        _wait_closed(srv)
        assert https_get(port, client_ctx(pki))[:2] == (200, BODY)
        st = srv.stats()
        assert st.connections_accepted == 1001 and st.requests == {200: 1}
        assert threading_count_is_bounded()


def test_over_the_cap_tls_gets_503_after_handshake(pki: Path, tmp_path: Path) -> None:
    release = threading.Event()

    def slow_render(accept: str | None) -> tuple[bytes, str]:
        if accept == "hold":  # keeps its connection busy until released
            release.wait(10)
        return BODY, CTYPE

    with serving(tls_config(tmp_path, pki), max_connections=2, render=slow_render) as srv:
        port = srv.address[1]
        holders = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        tls = [client_ctx(pki).wrap_socket(s, server_hostname="localhost") for s in holders]
        for s in tls:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: hold\r\n\r\n")
        time.sleep(0.5)  # busy connections are never evicted, however long they take
        _, status, body = curl("--cacert", str(pki / "ca.pem"), f"https://localhost:{port}/metrics")
        assert status == "503" and b"Too many connections" in body
        release.set()
        for s in tls:
            s.settimeout(5)
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")
            s.close()
        _wait_closed(srv)
        assert https_get(port, client_ctx(pki))[:2] == (200, BODY)
        st = srv.stats()
        assert (st.connections_rejected, st.connections_evicted) == (1, 0)


def test_at_the_caps_the_stalest_connections_make_room(pki: Path, tmp_path: Path) -> None:
    with serving(tls_config(tmp_path, pki), max_pending=2, max_connections=1) as srv:
        port = srv.address[1]
        idle = socket.create_connection(("127.0.0.1", port))
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(partial_client_hello())
        time.sleep(0.3)
        t0 = time.monotonic()
        # a third connection before a request: the oldest pending one (idle) makes room
        kept = http.client.HTTPSConnection("localhost", port, context=client_ctx(pki), timeout=5)
        kept.request("GET", "/metrics")
        assert kept.getresponse().read() == BODY
        assert time.monotonic() - t0 < 1.0
        idle.settimeout(2)
        assert idle.recv(100) == b""
        # a second complete request with the one served slot held by an idle keep-alive
        # connection: that one, the stalest admitted, makes room
        assert https_get(port, client_ctx(pki))[:2] == (200, BODY)
        with pytest.raises((ConnectionError, http.client.HTTPException, ssl.SSLError)):
            kept.request("GET", "/metrics")
            kept.getresponse().read()
        kept.close()
        half.settimeout(0.2)
        with pytest.raises(socket.timeout):
            half.recv(100)  # a pending one that nobody needed to evict stays, until its deadline
        half.close()
        assert srv.stats().connections_evicted == 2




def test_render_failure_readiness_and_many_accepts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nflogd.http")
    gate = threading.Event()

    def flaky(accept: str | None) -> tuple[bytes, str]:
        if accept == "boom":
            raise RuntimeError("render bug")
        if accept and accept.startswith("slow"):
            gate.wait(5)
        return BODY, CTYPE

    state = {"ready": (False, "groups not bound: 7")}
    with serving(render=flaky, readiness=lambda: state["ready"]) as srv:
        port = srv.address[1]
        for _ in range(3):  # a failing render is a 500 each time, and one log line in all
            assert http_get(port, headers={"Accept": "boom"}).status == 500
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "render bug" in errors[0].exc_text  # type: ignore[operator]
        resp = http_get(port, "/-/ready")
        assert resp.status == 503 and resp.body == b"not ready: groups not bound: 7\n"  # type: ignore[attr-defined]
        state["ready"] = (True, "")
        assert http_get(port, "/-/ready").status == 200
        assert http_get(port, "/-/healthy").status == 200
        # 8 different Accept headers rendering at once; a 9th different one is told to come back
        results: list[int] = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            http_get(port, headers={"Accept": f"slow{i}"}).status)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        assert http_get(port, headers={"Accept": "another"}).status == 503
        gate.set()
        for t in threads:
            t.join(10)
        assert results == [200] * 8
        assert http_get(port).body == BODY  # type: ignore[attr-defined]
