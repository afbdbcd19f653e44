"""Shared by the tests of nflogd.http: a throwaway PKI made with the openssl CLI once per session
(two CAs, server certificates, client certificates from each CA), a server serving a fixed body,
and real clients (curl, Python's ssl/http.client, raw sockets). No kernel is involved."""

from __future__ import annotations

import contextlib
import http.client
import resource
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from http_attack_tools import partial_client_hello  # noqa: F401  (re-exported for the tests)
from nflogd.http import Limits, MetricsServer
from nflogd.webconfig import load_web_config

BODY = b"".join(b'nflog_packets_total{group="0",prefix="drop %d"} %d\n' % (i, i * 7)
                for i in range(200))
CTYPE = "text/plain; version=0.0.4; charset=utf-8"
TOOLS = ("curl", "openssl", "htpasswd")


def render(accept: str | None) -> tuple[bytes, str]:
    return BODY, CTYPE


# --- fixtures: tools, PKI, servers ---------------------------------------------------------------

@pytest.fixture(scope="session", name="tools")
def tools_fixture() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:  # fail, never skip: these tests are the proof that TLS and auth work
        pytest.fail(f"missing tools {missing}: apt-get install curl openssl apache2-utils")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _make_leaf(d: Path, name: str, ca: str, san: str, usage: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
                                   "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="session", name="pki")
def pki_fixture(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "ca2")
    server_san = "DNS:localhost,IP:127.0.0.1,IP:::1"
    _make_leaf(d, "server", "ca", server_san, "serverAuth")
    _make_leaf(d, "server2", "ca", server_san, "serverAuth")  # the rotated-in certificate
    _make_leaf(d, "client", "ca", "DNS:scraper.example,email:ops@example.org", "clientAuth")
    _make_leaf(d, "client_wrongca", "ca2", "DNS:scraper.example", "clientAuth")
    return d


@contextlib.contextmanager
def serving(web_config_path: Path | None = None, **kw: Any) -> Iterator[MetricsServer]:
    """A started server; keyword arguments other than these few are Limits fields."""
    cfg = load_web_config(web_config_path) if web_config_path else None
    opts = {k: kw.pop(k) for k in ("render", "readiness", "tls_check_interval", "sockets")
            if k in kw}
    addresses = [(kw.pop("host", "127.0.0.1"), kw.pop("port", 0))]
    if opts.get("sockets"):
        addresses = []
    srv = MetricsServer(addresses, metrics_path="/metrics", web_config=cfg,
                        render=opts.pop("render", render), limits=Limits(**kw), **opts)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def web_config(tmp_path: Path, text: str, name: str = "web.yml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def tls_config(tmp_path: Path, pki: Path, extra: str = "", server: str = "server") -> Path:
    for suffix in (".pem", ".key"):  # private copies: rotation tests replace them
        shutil.copy(pki / f"{server}{suffix}", tmp_path / f"srv{suffix}")
    return web_config(tmp_path, "tls_server_config:\n  cert_file: srv.pem\n  key_file: srv.key\n"
                      + extra)


def curl(*args: str, timeout: float = 15) -> tuple[int, str, bytes]:
    """(curl exit code, HTTP status or "000", body)."""
    p = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}",
                        *args], capture_output=True, timeout=timeout, check=False)
    body, _, status = p.stdout.rpartition(b"\n")
    return p.returncode, status.decode(), body


def client_ctx(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    return ctx


def https_get(port: int, ctx: ssl.SSLContext, path: str = "/metrics",
              headers: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """(status, body, server certificate DER) over a fresh connection."""
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        der = conn.sock.getpeercert(binary_form=True)
        return resp.status, resp.read(), der
    finally:
        conn.close()


def http_get(port: int, path: str = "/metrics", headers: dict[str, str] | None = None,
             method: str = "GET") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, read until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def htpasswd(user: str, password: str, cost: int = 4) -> str:
    out = subprocess.run(["htpasswd", "-nbB", "-C", str(cost), user, password], check=True,
                         capture_output=True, text=True, timeout=30).stdout.strip()
    return out.split(":", 1)[1]


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= n, "cannot raise RLIMIT_NOFILE"


def _wait_closed(srv: MetricsServer, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while srv.stats().connections_open and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.stats().connections_open == 0


def threading_count_is_bounded() -> bool:
    return threading.active_count() < 20
