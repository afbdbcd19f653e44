"""Listening sockets handed over by systemd socket activation (sd_listen_fds(3)).

systemd passes the sockets of nflogd.socket as file descriptors 3, 4, ... and says so in
LISTEN_PID (the pid they are meant for) and LISTEN_FDS (how many). Written here rather than taken
from a library: sdnotify only sends notifications, and python-systemd (systemd.daemon.listen_fds)
is a C binding to libsystemd that is not on PyPI as a wheel -- a build dependency on
libsystemd-dev for twenty lines of protocol that sd_listen_fds(3) fully specifies.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import MutableMapping

SD_LISTEN_FDS_START = 3
# One more than any sane unit: a bogus LISTEN_FDS must not make us walk the whole fd table.
MAX_FDS = 64


class ActivationError(Exception):
    """No usable sockets from systemd; str() says what is wrong in one line."""


def listen_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening stream sockets systemd passed to this process, in order.

    As sd_listen_fds(unset_environment=1): LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are removed
    from the environment, so no child takes them for its own, and each fd is made close-on-exec.
    Raises ActivationError when there are none, or one is not a listening TCP socket.
    """
    env = os.environ if environ is None else environ
    pid_text = env.pop("LISTEN_PID", None)
    fds_text = env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid_text is None or fds_text is None:
        raise ActivationError("no sockets from systemd (LISTEN_FDS is not set): start nflogd "
                              "through nflogd.socket, or drop --web.systemd-socket")
    try:
        pid, count = int(pid_text), int(fds_text)
    except ValueError:
        raise ActivationError(f"LISTEN_PID={pid_text!r} LISTEN_FDS={fds_text!r} are not "
                              "numbers") from None
    if pid != os.getpid():
        raise ActivationError(f"the sockets are meant for pid {pid}, not this process "
                              f"({os.getpid()})")
    if not 1 <= count <= MAX_FDS:
        raise ActivationError(f"LISTEN_FDS={count}: expected 1-{MAX_FDS} sockets")
    sockets = []
    try:
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
            sockets.append(_listener(fd))
    except ActivationError:
        for s in sockets:
            s.detach()  # not ours to close on a failed start: leave the fds to systemd
        raise
    return sockets


def _listener(fd: int) -> socket.socket:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        raise ActivationError(f"fd {fd}: {e.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"fd {fd} is not a socket")
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)  # family and type are read from the fd
    ok = (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
          and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    if not ok:
        sock.detach()
        raise ActivationError(f"fd {fd} is not a listening TCP socket (use ListenStream= with an "
                              "IP address or port in nflogd.socket)")
    return sock
