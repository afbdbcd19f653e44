"""make test-compat: nflogd.nflog against the real nflogr 0.2.12, on the same packets.

Run by the Makefile with the interpreter of a virtualenv that holds nflogr (from PyPI) and nflogd's
extension built for that interpreter (CPython 3.9 or 3.13: nflogr reads records on no other).
Namespaces client -- router -- server over veth pairs with IPv4 and IPv6, and a host on a bridge of
the router's; the router's nft rules log each packet to group 1 (read by nflogr) and group 2 (read
by nflogd.nflog) in one rule: IPv4/IPv6 TCP, UDP and ICMP, to the router (INPUT) and through it
(FORWARD), marked and unmarked, with an empty, a plain, an odd and a 127-byte prefix, TCP from a
socket of another uid, frames on the bridge (physindev/physoutdev); OUTPUT records (group 3) only
nflogd can read: nflogr's decoding rules (nflogr_model.py, proven equal to nflogr on every record
it read) say what it should have returned. All that under COPY_PACKET, COPY_META and COPY_NONE.
tests/compat/reader.py is the script both libraries run; this compares what they saw, field by
field, and the handle's attributes and exceptions. Any difference fails unless it is one the
README's API section lists (ALLOWED below: each names its row there). Exit status 0 when all agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from netns import SYSTEM_PYTHON, Netns, run, unused_uids  # noqa: E402 - found via sys.path

PY = sys.executable
STEP_TIMEOUT = 60.0
# The kernel stamps a packet's two records (one per group) each with the time of its own log call
# when the packet carries no receive time (TCP's do not): they may differ by microseconds. So
# live timestamps agree within this, and nflogr_model proves the decoding exact on the same bytes.
STAMP_SLACK = 1.0  # generous: a loaded machine may delay the second log call
NFLOGR_FIELDS = ["proto", "hwtype", "nfmark", "timestamp", "timestamp_us", "indev", "physindev",
                 "outdev", "physoutdev", "uid", "gid", "hwaddr", "hwhdr", "payload", "prefix"]
EXTRA_FIELDS = ["indev_index", "outdev_index", "physindev_index", "physoutdev_index", "seq", "hook",
                "family", "group", "l4proto", "length",
                # the payload labels' fields (nflogd/labels.py)
                "saddr", "daddr", "sport", "dport", "icmp_type", "tcp_flags", "ct_state"]
ODD_PREFIX = "semi;colon {brace} #hash 100% it's \\x41 é"
LONG_PREFIX = "L" * 126 + "!"  # the kernel's longest, 127 bytes


class Failed(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class OneOf:
    """What nflogr gives in ALLOWED when it differs between interpreters (3.9 vs 3.13)."""

    alternatives: tuple[Any, ...]

    def matches(self, value: Any) -> bool:
        return value in self.alternatives


NFLOGR_RETRY = {"raised": "NflogRetryError", "catches": ["NflogError", "NflogRetryError"],
                "errno": None}
TYPE_ERROR = {"raised": "TypeError", "catches": ["TypeError"], "errno": None}
OURS_CLOSED = {"raised": "NflogClosedError",
               "catches": ["NflogClosedError", "NflogError", "OSError"], "errno": 125}

# Every difference allowed: where it shows, (README row, what nflogr gives, what nflogd gives).
ALLOWED: dict[str, tuple[str, Any, Any]] = {
    "closed_handle.next_wait_when_drained": ("next() on a closed, drained handle", NFLOGR_RETRY,
                                             OURS_CLOSED),
    "examples[2]": ("iterating a closed handle", dict(NFLOGR_RETRY, left_queued=0),
                    {"value": None, "left_queued": 0}),
    "examples[3]": ("next() on a closed, drained handle", dict(NFLOGR_RETRY, left_queued=0),
                    dict(OURS_CLOSED, left_queued=0)),
    "examples[4]": ("loop() on a closed handle", dict(NFLOGR_RETRY, left_queued=0),
                    {"value": None, "left_queued": 0}),
    "pickle round trip: fields that differ": (
        "pickling NflogData", OneOf(({"crashed": "SIGSEGV"}, {"value": ["hwaddr"]})),
        {"value": []}),
    "open_handle.queued_type": ("`queued`", "bool", "int"),
    "blocked_next": ("waiting in next(), queue(), loop(), iteration",
                     {"got_record": True, "waited": True, "other_thread_ran": False},
                     {"got_record": True, "waited": True, "other_thread_ran": True}),
    "closed_handle.set_rcvbuf": ("rcvbuf set on a closed handle", {"crashed": "SIGSEGV"},
                                 OURS_CLOSED),
    "open_handle.next_keyword": ("keyword arguments", TYPE_ERROR, {"value": None}),
    "open_handle.queue_keyword": ("keyword arguments", TYPE_ERROR, {"value": 0}),
    "queued_handle.loop_callback_raises": (
        "loop() callback raises", {"raised": "SystemError", "catches": [], "errno": None},
        {"raised": "ZeroDivisionError", "catches": [], "errno": None}),
}


def rules() -> str:
    def both(prefix: str | None) -> str:
        p = "" if prefix is None else f'prefix "{prefix}" '
        return f"log {p}group 1 log {p}group 2"
    return f"""
    table inet compat {{
        chain pre {{
            type filter hook prerouting priority -150;
            meta l4proto {{ tcp, udp }} th dport 5003 meta mark set 0x2a
        }}
        chain input {{
            type filter hook input priority 0;
            udp dport 5000 counter {both(None)} comment "in-udp-noprefix"
            udp dport 5001 counter {both("in udp")} comment "in-udp"
            udp dport 5002 counter {both(ODD_PREFIX)} comment "in-udp-odd"
            udp dport 5003 counter {both("in marked")} comment "in-udp-mark"
            udp dport 5004 counter {both(LONG_PREFIX)} comment "in-udp-long"
            tcp dport 5005 counter {both("in tcp")} comment "in-tcp"
            tcp dport 5006 counter {both("in tcp closed")} comment "in-tcp-closed"
            icmp type echo-request counter {both("in icmp")} comment "in-icmp"
            icmpv6 type echo-request counter {both("in icmpv6")} comment "in-icmpv6"
            udp dport 5999 counter {both("burst")} comment "burst"
        }}
        chain forward {{
            type filter hook forward priority 0;
            udp dport 5000-5004 counter {both("fwd udp")} comment "fwd-udp"
            tcp dport 5005 counter {both("fwd tcp")} comment "fwd-tcp"
            icmp type echo-request counter {both("fwd icmp")} comment "fwd-icmp"
            icmpv6 type echo-request counter {both("fwd icmpv6")} comment "fwd-icmpv6"
        }}
        chain output {{
            type filter hook output priority 0;
            udp dport 6000 counter log prefix "out udp" group 3 comment "out-udp"
            tcp sport 5005 counter log prefix "out tcp" group 3 comment "out-tcp"
            icmp type echo-reply counter log prefix "out icmp" group 3 comment "out-icmp"
            icmpv6 type echo-reply counter log prefix "out icmpv6" group 3 comment "out-icmpv6"
        }}
    }}
    table bridge compat {{
        chain input {{
            type filter hook input priority 0;
            udp dport 5010 counter {both("br in")} comment "in-br"
        }}
        chain output {{
            type filter hook output priority 0;
            udp dport 5011 counter log prefix "br out" group 3 comment "out-br"
        }}
    }}
    """


TRAFFIC = r"""
import json, socket, struct, sys
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
for op in json.loads(sys.argv[1]):
    kind, dst = op[0], op[1]
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    if kind == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        for i in range(op[3]):
            s.sendto(bytes([i]) * op[4], (dst, op[2]))
        s.close()
    elif kind == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((dst, op[2]))
            got = b""
            while got != b"hi":  # the server has accepted: our packets find its socket and uid
                more = s.recv(2 - len(got))
                if not more:
                    raise SystemExit("the server closed before its greeting")
                got += more
            s.sendall(b"hello " * op[3] + b"end\n")
            got = b""
            while not got.endswith(b"ok"):  # the server holds the socket open until our FIN
                more = s.recv(4096)
                if not more:
                    raise SystemExit("the server closed before its ok")
                got += more
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        except ConnectionRefusedError:
            pass
        s.close()
    elif kind == "icmp":
        if fam == socket.AF_INET:
            s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            for i in range(op[2]):
                body = struct.pack("!BBHHH", 8, 0, 0, 77, i) + b"ping" * 8
                s.sendto(body[:2] + struct.pack("!H", csum(body)) + body[4:], (dst, 0))
        else:
            s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            for i in range(op[2]):
                s.sendto(struct.pack("!BBHHH", 128, 0, 0, 77, i) + b"ping" * 8, (dst, 0))
        s.close()
"""

# A TCP packet carries its socket's uid only once accept() has given the socket a file, and the
# kernel logs group 1 and group 2 in two calls: an accept() between them gave one group a uid and
# the other none (a CI failure). So the server greets after accept() and closes only after the
# client's FIN, and the client sends only after the greeting: no packet races accept() or close().
SERVER = r"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 5005)); s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    got = b""
    while not got.endswith(b"end\n"):
        more = c.recv(4096)
        if not more:
            break
        got += more
    c.sendall(b"ok")
    while c.recv(4096):
        pass
    c.close()
"""

PLAN = [
    ["udp", "10.1.0.2", 5000, 2, 40], ["udp", "fd01::2", 5000, 1, 40],
    ["udp", "10.1.0.2", 5001, 2, 300], ["udp", "fd01::2", 5001, 2, 300],
    ["udp", "10.1.0.2", 5002, 1, 10], ["udp", "10.1.0.2", 5003, 2, 64],
    ["udp", "fd01::2", 5003, 1, 64], ["udp", "10.1.0.2", 5004, 1, 1400],
    ["tcp", "10.1.0.2", 5005, 3], ["tcp", "fd01::2", 5005, 2], ["tcp", "10.1.0.2", 5006, 1],
    ["icmp", "10.1.0.2", 2], ["icmp", "fd01::2", 2],
    ["udp", "10.2.0.1", 5001, 2, 100], ["udp", "fd02::1", 5003, 2, 100],
    ["tcp", "10.2.0.1", 5005, 2], ["tcp", "fd02::1", 5005, 1],
    ["icmp", "10.2.0.1", 1], ["icmp", "fd02::1", 1],
]


class Lab:
    """client (C) -- router (R, the rules and the readers) -- server (S); and a host (B) on a
    bridge of the router's (br0, port vr3), whose records carry physindev/physoutdev."""

    def __init__(self) -> None:
        self.c, self.r, self.s, self.b = Netns("cc"), Netns("cr"), Netns("cs"), Netns("cb")
        self.link(self.c, "vc", "10.1.0.1", "fd01::1", self.r, "vr1", "10.1.0.2", "fd01::2")
        self.link(self.s, "vs", "10.2.0.1", "fd02::1", self.r, "vr2", "10.2.0.2", "fd02::2")
        self.link(self.b, "vb", "10.3.0.1", "fd03::1", self.r, "vr3", "10.3.0.9", "fd03::9")
        self.r.ip("addr", "flush", "dev", "vr3")
        self.r.ip("link", "add", "br0", "type", "bridge")
        self.r.ip("link", "set", "vr3", "master", "br0")
        self.r.ip("addr", "add", "10.3.0.2/24", "dev", "br0")
        self.r.ip("link", "set", "br0", "up")
        self.r.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for ns, v4, v6 in ((self.c, "10.1.0.2", "fd01::2"), (self.s, "10.2.0.2", "fd02::2")):
            ns.ip("route", "add", "default", "via", v4)
            ns.ip("-6", "route", "add", "default", "via", v6)
        self.r.nft(rules())
        uid = unused_uids(1)[0]
        self.servers = [
            self.r.popen([SYSTEM_PYTHON, "-c", SERVER], uid=uid, stdout=subprocess.PIPE),
            self.s.popen([SYSTEM_PYTHON, "-c", SERVER], stdout=subprocess.PIPE)]
        for srv in self.servers:
            assert srv.stdout is not None
            if not select.select([srv.stdout], [], [], 10)[0] or not srv.stdout.readline():
                raise Failed("a TCP server did not start")

    @staticmethod
    def link(a: Netns, an: str, a4: str, a6: str, b: Netns, bn: str, b4: str, b6: str) -> None:
        tmp = f"vc{os.getpid() % 100000}{an}"
        run(["ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp + "p"])
        run(["ip", "link", "set", tmp, "netns", a.name])
        run(["ip", "link", "set", tmp + "p", "netns", b.name])
        for ns, old, new, v4, v6 in ((a, tmp, an, a4, a6), (b, tmp + "p", bn, b4, b6)):
            ns.ip("link", "set", old, "name", new)
            ns.ip("addr", "add", f"{v4}/24", "dev", new)
            ns.ip("-6", "addr", "add", f"{v6}/64", "dev", new, "nodad")
            ns.ip("link", "set", new, "up")

    def close(self) -> None:
        for ns in (self.c, self.r, self.s, self.b):
            ns.delete()

    def counts(self, *prefixes: str) -> int:
        return sum(p for name, (p, _) in self.r.counters().items() if name.startswith(prefixes))

    def settled(self, *prefixes: str) -> int:
        """The logged count once no more packets arrive (TCP closes take a moment), bounded."""
        last, since, deadline = -1, time.monotonic(), time.monotonic() + 10
        while time.monotonic() < deadline:
            n = self.counts(*prefixes)
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > 0.3:
                return n
            time.sleep(0.05)
        raise Failed(f"rules {prefixes} still counting after 10 s")

    def traffic(self) -> dict[str, int]:
        """Send PLAN (and OUTPUT packets from the router); how many records each group got."""
        before = {"count": self.counts("in-", "fwd-"), "tail": self.counts("out-")}
        self.c.run(SYSTEM_PYTHON, "-c", TRAFFIC, json.dumps(PLAN))
        self.r.send_udp("10.1.0.1", 6000, 2, 50)
        self.r.send_udp("fd01::1", 6000, 1, 50)
        self.b.send_udp("10.3.0.2", 5010, 2, 30)  # bridge INPUT: physindev vr3, indev br0
        self.r.send_udp("10.3.0.1", 5011, 2, 30)  # bridge OUTPUT: physoutdev vr3, outdev br0
        return {"count": self.settled("in-", "fwd-") - before["count"],
                "tail": self.settled("out-") - before["tail"]}

    def burst(self, n: int) -> None:
        before = self.counts("burst")
        self.c.send_udp("10.1.0.2", 5999, n, 20)
        if self.settled("burst") != before + n:
            raise Failed(f"burst of {n} not logged exactly")


def run_phase(lab: Lab, copymode: str) -> dict[str, dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                             "stderr": subprocess.PIPE}
    reader = [PY, str(HERE / "reader.py")]
    procs = {
        "nflogr": lab.r.popen([*reader, "nflogr", "1", "2", copymode], env=env, **pipes),
        "nflogd": lab.r.popen([*reader, "nflogd", "2", "1", copymode, "3"], env=env, **pipes),
    }
    reports: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    try:
        while len(reports) < 2:
            asks = {lib: read_line(lib, p) for lib, p in procs.items() if lib not in reports}
            steps = {a["step"] for a in asks.values()}
            if len(steps) != 1:
                raise Failed(f"the readers diverged: {asks}")
            step = steps.pop()
            if step == "report":
                reports.update({lib: a["report"] for lib, a in asks.items()})
                continue
            answer: dict[str, Any] = {}
            if step == "ready":
                counts = lab.traffic()
            elif step == "read":
                answer = dict(counts)
            elif step == "burst":
                lab.burst(asks["nflogd"]["count"])
            elif step == "burst_later":  # answer first: the readers are waiting when it comes
                for lib in asks:
                    reply(procs[lib], {})
                time.sleep(asks["nflogd"]["delay"])
                lab.burst(asks["nflogd"]["count"])
                continue
            elif step == "turn":  # let each reader run alone, one after the other
                for lib in asks:
                    reply(procs[lib], {})
                    if read_line(lib, procs[lib])["step"] != "turn_done":
                        raise Failed(f"{lib} reader did not end its turn")
            for lib in asks:
                reply(procs[lib], answer)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    reports["nflogd"]["expected"] = counts
    return reports


def read_line(lib: str, p: subprocess.Popen) -> dict[str, Any]:
    assert p.stdout is not None and p.stderr is not None
    if not select.select([p.stdout], [], [], STEP_TIMEOUT)[0]:
        p.kill()
        raise Failed(f"{lib} reader: no answer within {STEP_TIMEOUT} s: {p.stderr.read().decode()}")
    line = p.stdout.readline()
    if not line:
        p.wait()
        raise Failed(f"{lib} reader exited {p.returncode}: {p.stderr.read().decode()[-3000:]}")
    return json.loads(line)


def reply(p: subprocess.Popen, answer: dict[str, Any]) -> None:
    assert p.stdin is not None
    p.stdin.write(json.dumps(answer).encode() + b"\n")
    p.stdin.flush()


class Comparison:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.allowed_seen: set[str] = set()
        self.fields = 0

    def same(self, path: str, theirs: Any, ours: Any) -> None:
        self.fields += 1
        if theirs == ours:
            return
        rule = ALLOWED.get(path)
        if rule and (rule[1].matches(theirs) if isinstance(rule[1], OneOf) else rule[1] == theirs) \
                and rule[2] == ours:
            self.allowed_seen.add(rule[0])
            return
        self.failures.append(f"{path}: nflogr {theirs!r} != nflogd {ours!r}")

    def catches(self, path: str, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
        """Every `except` that catches nflogr's exception catches ours (ours may be more exact)."""
        self.fields += 1
        if "raised" not in theirs or "raised" not in ours:
            self.same(path, theirs, ours)
        elif not set(theirs["catches"]) <= set(ours["catches"]):
            self.failures.append(f"{path}: nflogr raised {theirs}, nflogd {ours}: not caught alike")

    def record(self, path: str, theirs: list[list[Any]], ours: dict[str, Any],
               no_timestamp: bool = False, live: bool = False) -> None:
        """nflogr's fields, in its order, equal; then exactly the documented extra fields. live:
        two records of one packet (timestamps within STAMP_SLACK)."""
        names = [k for k, _ in ours["items"]]
        self.same(f"{path} field order", [k for k, _ in theirs], names[:len(theirs)])
        if names[len(theirs):] != EXTRA_FIELDS:
            self.failures.append(f"{path}: extra fields {names[len(theirs):]} != {EXTRA_FIELDS}")
        mine = dict(ours["items"])
        for k, v in theirs:
            if no_timestamp and k in ("timestamp", "timestamp_us") and v is not None:
                self.failures.append(f"{path}.{k}: an OUTPUT record with a timestamp {v}")
            if live and k in ("timestamp", "timestamp_us") and v is not None:
                scale = 1e6 if k == "timestamp_us" else 1.0
                a = float(v["float"]) if isinstance(v, dict) else v
                b = mine.get(k)
                b = float(b["float"]) if isinstance(b, dict) else b
                close = b is not None and type(a) is type(b) and abs(a - b) <= STAMP_SLACK * scale
                self.same(f"{path}.{k} within {STAMP_SLACK} s", True, close)
            else:
                self.same(f"{path}.{k}", v, mine.get(k))


def compare(reports: dict[str, dict[str, Any]], phase: str, cmp: Comparison, lab: Lab) -> int:
    theirs, ours = reports["nflogr"], reports["nflogd"]
    for name, value in theirs["constants"].items():
        cmp.same(f"constant {name}", value, ours["constants"].get(name))
    cmp.same("module metadata", theirs["metadata"], ours["metadata"])
    for name, mro in theirs["classes"].items():
        cmp.same(f"{name} is caught by except {mro}",
                 [c for c in ours["classes"][name] if c in mro], mro)
    for name, o in theirs["bad_open"].items():
        cmp.catches(f"open({name})", o, ours["bad_open"][name])
    cmp.catches("open(a group another process holds)", theirs["open_taken_group"],
                ours["open_taken_group"])
    cmp.same("open(qthresh=0)", theirs["qthresh0"], ours["qthresh0"])

    n = ours["expected"]["count"]
    for lib in ("nflogr", "nflogd"):
        if len(reports[lib]["records"]) != n:
            got = len(reports[lib]["records"])
            cmp.failures.append(f"{phase}: {lib} read {got} of {n} records")
    for i, (t, o) in enumerate(zip(theirs["records"], ours["records"])):
        cmp.record(f"{phase} record {i} ({dict(t['items']).get('prefix')!r})", t["items"], o,
                   live=True)
        for k in ("keys_match_getattr", "timestamp_from_us"):
            cmp.same(f"{phase} record {i} {k}", t[k], o[k])
        cmp.same(f"{phase} record {i} repr is <NflogData {{dict}}>", t["repr"].startswith(
            "<NflogData {'proto': ") and t["repr"] == t["str"],
            o["repr"].startswith("<NflogData {'proto': ") and o["repr"] == o["str"])

    # nflogr's decoding rules on the messages nflogd read: first proven equal to nflogr on the
    # records both read, then they say what nflogr should have returned for the OUTPUT records.
    msgs = [o["message"] for o in ours["records"]] + [o["message"] for o in ours["tail"]]
    decoded = json.loads(lab.r.run(PY, str(HERE / "nflogr_model.py"),
                                   input=json.dumps(msgs)).stdout)
    for i, (t, o) in enumerate(zip(theirs["records"], ours["records"])):
        cmp.record(f"{phase} record {i}: nflogr_model(nflogd's message) vs nflogr", t["items"],
                   {"items": decoded[i] + [[k, None] for k in EXTRA_FIELDS]}, live=True)
        cmp.record(f"{phase} record {i}: nflogr_model(nflogd's message) vs nflogd", decoded[i], o)
    tail = decoded[len(ours["records"]):]
    if len(tail) != ours["expected"]["tail"] or not tail:
        cmp.failures.append(f"{phase}: {len(tail)} OUTPUT records of {ours['expected']['tail']}")
    for i, (t, o) in enumerate(zip(tail, ours["tail"])):
        cmp.record(f"{phase} OUTPUT record {i}", t, o, no_timestamp=True)

    for section in ("open_handle", "queued_handle", "closed_handle"):
        for key, t in theirs[section].items():
            o = ours[section][key]
            if key == "next_nowait_x4":
                for j, (tr, orr) in enumerate(zip(t, o)):
                    if tr is None or orr is None:
                        cmp.same(f"{section}.{key}[{j}]", tr, orr)
                    else:
                        cmp.record(f"{section}.{key}[{j}]", tr["items"], orr, live=True)
            else:
                cmp.same(f"{section}.{key}", t, o)
    cmp.same("pickle round trip: fields that differ", theirs["pickle"], ours["pickle"])
    cmp.same("blocked_next", theirs["blocked_next"], ours["blocked_next"])
    for i, (t, o) in enumerate(zip(theirs["examples"], ours["examples"])):
        cmp.same(f"examples[{i}]", t, o)
    cmp.same("README examples run", len(theirs["examples"]), len(ours["examples"]))
    return n + len(tail)


def readme_rows() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## The Python API")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def main() -> int:
    if os.geteuid() != 0:
        print("test-compat needs root (network namespaces, nft, NFLOG groups)", file=sys.stderr)
        return 1
    import nflogr  # type: ignore[import-not-found]

    from nflogd import nflog
    print(f"nflogr {nflogr.__version__} vs nflogd.nflog {nflog.__version__} on Python "
          f"{sys.version.split()[0]}")
    started = time.monotonic()
    cmp = Comparison()
    records = 0
    lab = Lab()
    try:
        for copymode in ("COPY_PACKET", "COPY_META", "COPY_NONE"):
            reports = run_phase(lab, copymode)
            # Kept for whoever reads a failure: everything both libraries saw.
            (Path(sys.prefix) / f"report-{copymode}.json").write_text(json.dumps(reports, indent=1))
            records += compare(reports, copymode, cmp, lab)
    except Failed as e:
        cmp.failures.append(str(e))
    finally:
        lab.close()
    section = readme_rows()
    for row in sorted({r[0] for r in ALLOWED.values()}):
        if f"| {row} |" not in section:
            cmp.failures.append(f"allowed difference {row!r} is not in the README's API section")
    for name in EXTRA_FIELDS:
        if f"`{name}`" not in section:
            cmp.failures.append(f"extra field {name!r} is not in the README's API section")
    for row in sorted(cmp.allowed_seen):
        print(f"  documented difference seen: {row}")
    print(f"{records} records, {cmp.fields} comparisons in {time.monotonic() - started:.1f} s")
    for f in cmp.failures:
        print(f"FAIL {f}")
    return 1 if cmp.failures else 0


if __name__ == "__main__":
    sys.exit(main())
