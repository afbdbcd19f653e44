"""nflogd.notify against a real AF_UNIX datagram socket, as systemd's notify socket would be."""

from __future__ import annotations

import logging
import os
import socket
import struct
import tempfile
import time
import uuid
from typing import Callable, Iterator, Tuple

import pytest

from nflogd.notify import Notifier


def _receiver(addr: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # systemd reads the sender's pid from SCM_CREDENTIALS (NotifyAccess=main): ask for it too.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(addr)
    sock.settimeout(5)
    return sock


def _recv(sock: socket.socket) -> Tuple[str, int]:
    """One datagram and the pid the kernel says sent it."""
    data, ancdata, _flags, _addr = sock.recvmsg(8192, socket.CMSG_SPACE(12))
    pid = -1
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    return data.decode("utf-8"), pid


def _assert_empty(sock: socket.socket) -> None:
    sock.settimeout(0.05)
    with pytest.raises(socket.timeout):
        sock.recv(8192)


@pytest.fixture
def notifier(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict], Notifier]:
    """Notifier() with exactly this environment for NOTIFY_SOCKET and WATCHDOG_*: it reads
    os.environ, as sdnotify and libsystemd do."""
    def make(env: dict) -> Notifier:
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Notifier()
    return make


@pytest.fixture
def path_socket() -> Iterator[Tuple[str, socket.socket]]:
    # A short directory of our own: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="nflogd-notify-") as tmp:
        path = os.path.join(tmp, "notify")
        sock = _receiver(path)
        try:
            yield path, sock
        finally:
            sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[Tuple[str, socket.socket]]:
    name = f"nflogd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sock = _receiver("\0" + name)
    try:
        yield "@" + name, sock
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["path_socket", "abstract_socket"])
def test_every_message_arrives_as_one_datagram(notifier, kind: str, request: pytest.FixtureRequest) -> None:
    value, sock = request.getfixturevalue(kind)
    n = notifier({"NOTIFY_SOCKET": value})
    assert n.enabled
    assert n.ready() is True
    assert _recv(sock) == ("READY=1", os.getpid())
    assert n.ready("3 groups bound")
    assert _recv(sock)[0] == "READY=1\nSTATUS=3 groups bound"
    assert n.status("1200 records/s, 0 lost")
    assert _recv(sock)[0] == "STATUS=1200 records/s, 0 lost"
    assert n.watchdog()
    assert _recv(sock)[0] == "WATCHDOG=1"

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    text, _ = _recv(sock)
    first, second = text.split("\n")
    assert first == "RELOADING=1"
    key, usec = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after

    assert n.stopping()
    assert _recv(sock)[0] == "STOPPING=1"
    _assert_empty(sock)
    n.close()


def test_status_cannot_inject_assignments_and_keeps_utf8(notifier, path_socket) -> None:
    value, sock = path_socket
    n = notifier({"NOTIFY_SOCKET": value})
    n.status("prefix \"drop\u2192in\"\nREADY=1")
    assert _recv(sock)[0] == "STATUS=prefix \"drop\u2192in\" READY=1"
    n.status("x" * 100_000)
    text, _ = _recv(sock)
    assert text.startswith("STATUS=x") and len(text.encode()) < 4096


def test_unset_socket_is_disabled_and_silent(notifier, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nflogd.notify")
    n = notifier({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    assert n.watchdog_interval is None  # nobody to ping
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False
    assert caplog.records == []


def test_relative_socket_name_is_refused_with_a_warning(notifier, caplog: pytest.LogCaptureFixture) -> None:
    n = notifier({"NOTIFY_SOCKET": "relative/notify"})
    assert not n.enabled
    assert n.ready() is False
    assert any("NOTIFY_SOCKET" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_send_errors_are_logged_once_not_raised(notifier, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nflogd.notify")
    with tempfile.TemporaryDirectory(prefix="nflogd-notify-") as tmp:
        path = os.path.join(tmp, "notify")
        n = notifier({"NOTIFY_SOCKET": path})
        assert n.enabled
        assert n.ready() is False  # nobody bound there yet
        assert n.watchdog() is False
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and path in warnings[0].getMessage()
        assert warnings[0].name == "nflogd.notify"
        assert any(r.levelno == logging.DEBUG for r in caplog.records)

        # The manager binds its socket later (or re-binds it): the next message reaches it.
        sock = _receiver(path)
        try:
            assert n.watchdog() is True
            assert _recv(sock)[0] == "WATCHDOG=1"
            # ...and loses it again: a real send error, still only logged.
            sock.close()
            os.unlink(path)
            assert n.watchdog() is False
        finally:
            sock.close()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_abstract_name_nobody_listens_on_is_logged(notifier, caplog: pytest.LogCaptureFixture) -> None:
    n = notifier({"NOTIFY_SOCKET": f"@nflogd-nobody-{uuid.uuid4().hex}"})
    assert n.ready() is False
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "10000000"}, 5.0),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval(notifier, env: dict, expected, path_socket) -> None:
    value, _ = path_socket
    n = notifier({"NOTIFY_SOCKET": value, **env})
    assert n.watchdog_interval == expected


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch, abstract_socket) -> None:
    value, sock = abstract_socket
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.enabled and n.watchdog_interval == 1.0
    assert n.watchdog()
    assert _recv(sock)[0] == "WATCHDOG=1"
