"""When the kernel puts a uid in an NFLOG record, as the README says (issue 13): checked on the
running kernel, since the README's advice on the `uid` label rests on it.

A server as uid U in namespace B, a client in namespace A over a veth pair, an nft INPUT rule in
B logging to a group read through nflogd's own API: the SYN and the handshake's last ACK (to the
listener) have no uid, data on the established connection has U; a datagram to an unconnected
UDP socket has none, to a connected one U. Over loopback, INPUT never has one (the route is set
before early demux could find the socket), while OUTPUT has the sender's.
"""

from __future__ import annotations

import select
import subprocess
import time

from nflog_support import open_in

from netns import SYSTEM_PYTHON, Netns, unused_uids, veth_pair
from nflogd import nflog

SERVER = r"""
import socket, sys, time
l = socket.socket(); l.bind(("0.0.0.0", 7001)); l.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7002))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind((sys.argv[1], 7003))
c.connect((sys.argv[2], 7004))
print("ready", flush=True)
s, _ = l.accept(); s.recv(100)
sys.stdin.read()
"""
CLIENT = r"""
import socket, sys, time
t = socket.create_connection((sys.argv[1], 7001)); time.sleep(0.1); t.sendall(b"x" * 10)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"y", (sys.argv[1], 7002))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(("0.0.0.0", 7004))
c.sendto(b"z", (sys.argv[1], 7003))
time.sleep(0.3)
"""
RULES = r"""
    table inet t {
        chain input {
            type filter hook input priority 0;
            tcp dport 7001 tcp flags syn counter log prefix "syn" group 2 comment "syn"
            tcp dport 7001 tcp flags & syn == 0 meta length > 60 counter log prefix "data" group 2 \
                comment "data"
            udp dport 7002 counter log prefix "udp-unconnected" group 2 \
                comment "udp-unconnected"
            udp dport 7003 counter log prefix "udp-connected" group 2 comment "udp-connected"
        }
        chain output {
            type filter hook output priority 0;
            tcp dport 7001 tcp flags syn counter log prefix "out-syn" group 2 comment "out-syn"
        }
    }
"""


def records(ns: Netns, h: nflog.Nflog, timeout: float = 10) -> dict[str, list[int | None]]:
    """{prefix: the uid of each record}, once as many records arrived as the rules counted."""
    seen: dict[str, list[int | None]] = {}
    n = 0
    deadline = time.monotonic() + timeout
    while True:
        want = sum(packets for packets, _ in ns.counters().values())
        if n >= want or time.monotonic() > deadline:
            return seen
        rec = h.next(wait=False)
        if rec is None:
            select.select([h], [], [], 0.2)
            continue
        seen.setdefault(rec.prefix or "", []).append(rec.uid)
        n += 1


def run_pair(server_ns: Netns, client_ns: Netns, server_ip: str, client_ip: str, uid: int) -> None:
    server = server_ns.popen([SYSTEM_PYTHON, "-c", SERVER, server_ip, client_ip], uid=uid,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        client_ns.run(SYSTEM_PYTHON, "-c", CLIENT, server_ip, uid=uid + 1)
    finally:
        server.kill()
        server.wait(5)


def test_uid_on_input_only_for_sockets_early_demux_found() -> None:
    uid = unused_uids(2)[0]
    with Netns("uida") as a, Netns("uidb") as b:
        veth_pair(a, b, "va", "vb", "10.9.0.1", "10.9.0.2")
        b.nft(RULES)
        with open_in(b, 2) as h:
            run_pair(b, a, "10.9.0.2", "10.9.0.1", uid)
            seen = records(b, h)
        assert {k: set(v) for k, v in seen.items()} == {
            "syn": {None}, "data": {uid}, "udp-unconnected": {None}, "udp-connected": {uid}}, seen


def test_no_uid_on_input_over_loopback() -> None:
    uid = unused_uids(2)[0]
    with Netns("uidl") as ns:
        ns.nft(RULES)
        with open_in(ns, 2) as h:
            run_pair(ns, ns, "127.0.0.1", "127.0.0.1", uid)
            seen = records(ns, h)
        assert {k: set(v) for k, v in seen.items()} == {
            "out-syn": {uid + 1}, "syn": {None}, "data": {None}, "udp-unconnected": {None},
            "udp-connected": {None}}, seen
