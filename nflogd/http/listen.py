"""Listening sockets for `listen:` addresses, with errors that name the address."""

from __future__ import annotations

import errno
import socket


def show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening socket. "" is every address: dual-stack IPv6 when available, else IPv4."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    shown = show(name, port)
    candidates: list[tuple[int, tuple[str, int]]] = []
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
        fam, _, _, _, sockaddr = infos[0]
        candidates.append((int(fam), (str(sockaddr[0]), int(sockaddr[1]))))
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
            sock.listen(backlog)
            return sock
        except OSError as e:
            sock.close()
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and family == socket.AF_INET6:
                first_error = first_error or e
                continue  # IPv6 present but unusable here: try IPv4
            raise OSError(e.errno, f"cannot listen on {shown}: {e.strerror}") from None
    assert first_error is not None
    raise OSError(first_error.errno, f"cannot listen on {shown}: {first_error.strerror}")
