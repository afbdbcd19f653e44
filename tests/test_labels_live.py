"""The payload labels end to end against the real kernel: addresses, ports, ICMP types, TCP flags,
named networks, conntrack state.

Namespace A sends crafted packets (Ethernet frames on a packet socket, so every byte is ours:
IPv4 options, fragments, IPv6 extension headers, SCTP/DCCP/UDP-Lite, odd TCP flags) and plain UDP
from several source addresses on its veth; namespace B counts them in prerouting (where fragments
are still fragments) with one nft rule per label value, logs every one and drops it (so B answers
nothing and no neighbour discovery slips in). The ground truth is nft's own parsing: each rule
matches a label value with nft's expression for it (`ip saddr . th dport`, `icmp type`, `tcp flags
==`, ...), and the packets and bytes nflogd exports for that value must equal the rule's counter.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import struct
from collections.abc import Callable, Iterable

import pytest
from conftest import RunningDaemon, Scrape, promtool_check
from netns import SYSTEM_PYTHON, Netns, veth_pair
from nflog_support import mac_of, open_in, read_n

from nflogd import nflog
from nflogd.labels import PROTO_NAMES, TCP_FLAG_NAMES

PACKETS, BYTES = "nflog_packets_total", "nflog_bytes_total"
A4 = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.1.7", "10.9.0.1"]
A6 = ["fd00::2", "fd00::3", "fd00::5", "fd00:0:0:1::9", "2001:db8::77"]
B4, B6 = "10.0.0.1", "fd00::1"
NETWORKS = [("lab", ["10.0.0.0/16", "fd00::/48"]), ("lab-inner", ["10.0.1.0/24", "fd00:0:0:1::/64"]),
            ("doc6", ["2001:db8::/32"])]
ALL = ["group", "saddr", "daddr", "sport", "dport", "proto", "icmp_type", "tcp_flags", "src_net",
       "dst_net", "ct_state"]


# --- packets -------------------------------------------------------------------------------

def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, options: bytes = b"",
         frag: int = 0, ident: int = 7) -> bytes:
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), ident, frag, 64,
                      proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]  # the kernel checks this one
    return hdr + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0)


def udp(sport: int, dport: int, data: bytes = b"x" * 20) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def ports_only(sport: int, dport: int, rest: int = 12) -> bytes:  # SCTP, DCCP: ports first
    return struct.pack("!HH", sport, dport) + b"\0" * rest


def icmp(type_: int, code: int = 0) -> bytes:
    return struct.pack("!BBHI", type_, code, 0, 0) + b"p" * 16


# IPv6 extension headers: hop-by-hop and destination options padded with PadN (the kernel parses
# hop-by-hop before prerouting and drops bad options), a fragment header.
def opts(nh: int, body_len: int = 6) -> bytes:
    hlen = (2 + body_len) // 8 - 1
    return bytes([nh, hlen, 1, body_len - 2]) + b"\0" * (body_len - 2)


def frag6(nh: int, offset: int, more: bool, ident: int = 99) -> bytes:
    return struct.pack("!BBHI", nh, 0, (offset << 3) | int(more), ident)


def traffic() -> list[tuple[bytes, int]]:
    """(IP packet, how many times): every kind the labels must tell apart."""
    out: list[tuple[bytes, int]] = []

    def add(pkt: bytes, n: int = 1) -> None:
        out.append((pkt, n))

    for i, src in enumerate(A4[:3]):  # several sources, several ports, counts differ
        add(ipv4(src, B4, 6, tcp(40000 + i, 22, 0x02)), 3 + i)
        add(ipv4(src, B4, 6, tcp(40000 + i, 80, 0x02)), 1 + 2 * i)
        add(ipv4(src, B4, 17, udp(5353, 53)), 2 + i)
    for flags in (0x12, 0x04, 0x11, 0x00, 0xff, 0x18):
        add(ipv4(A4[1], B4, 6, tcp(443, 50000, flags)), 2)
    add(ipv4(A4[2], B4, 132, ports_only(7000, 9999)), 3)   # SCTP
    add(ipv4(A4[2], B4, 33, ports_only(7001, 5001)), 2)    # DCCP
    add(ipv4(A4[2], B4, 136, udp(7002, 5002)), 4)          # UDP-Lite
    add(ipv4(A4[2], B4, 47, b"\0" * 24), 2)                # GRE: no ports
    for t, n in ((8, 5), (3, 2), (13, 1), (42, 3), (0, 1)):
        add(ipv4(A4[0], B4, 1, icmp(t)), n)
    # IPv4 options (12 bytes of NOP): the ports after them.
    add(ipv4(A4[4], B4, 6, tcp(1234, 8443, 0x02), options=b"\x01" * 12), 4)
    # A UDP datagram in three fragments from its own source: only the first has ports.
    body = udp(6000, 6001, b"f" * 60)
    add(ipv4(A4[3], B4, 17, body[:24], frag=0x2000 | 0, ident=55), 2)
    add(ipv4(A4[3], B4, 17, body[24:48], frag=0x2000 | 3, ident=55), 2)
    add(ipv4(A4[3], B4, 17, body[48:], frag=6, ident=55), 2)
    add(ipv4(A4[5], "10.0.1.1", 17, udp(1, 2)), 1)  # outside both named networks as source

    for i, src in enumerate(A6[:2]):
        add(ipv6(src, B6, 6, tcp(41000 + i, 22, 0x02)), 2 + i)
        add(ipv6(src, B6, 17, udp(5353, 53)), 1 + i)
    for t, n in ((128, 4), (135, 2), (1, 1), (200, 2)):
        add(ipv6(A6[0], B6, 58, icmp(t)), n)
    add(ipv6(A6[1], B6, 6, tcp(443, 51000, 0x12)), 2)
    # Extension headers: hop-by-hop -> destination options -> UDP; -> TCP; a long dstopts.
    add(ipv6(A6[3], B6, 0, opts(60) + opts(17, 14) + udp(5000, 7777)), 3)
    add(ipv6(A6[3], B6, 60, opts(6) + tcp(5001, 7778, 0x02)), 2)
    add(ipv6(A6[4], B6, 60, opts(17, 30) + udp(5002, 7779)), 1)
    # Fragments: the first (offset 0, more) carries the UDP header, the later one none.
    body = udp(6000, 6002, b"g" * 40)
    add(ipv6(A6[2], B6, 44, frag6(17, 0, True) + body[:24]), 2)
    add(ipv6(A6[2], B6, 44, frag6(17, 3, False) + body[24:]), 3)
    add(ipv6(A6[2], B6, 0, opts(44) + frag6(17, 3, False) + body[24:]), 1)
    return out


SENDER = r"""
import socket, sys, json
dev, frames = sys.argv[1], json.load(open(sys.argv[2]))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
for frame, n in frames:
    b = bytes.fromhex(frame)
    for _ in range(n):
        s.send(b)
"""


# --- nft rules: one per label value, with nft's own expression for it ------------------------

PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}
L4_WITH_PORTS = "meta l4proto { 6, 17, 33, 132, 136 }"
# Measured on kernel 6.18 with nft 1.0.6: `th dport` (and `udp dport`) also match a non-first
# fragment, reading its data as ports. A later fragment has no ports (nflogd says ""), so the
# rules for ports keep to packets that are not later fragments, one alternative per case.
NOT_LATER_FRAGMENT = ["meta nfproto ipv4 ip frag-off & 0x1fff == 0",
                      "meta nfproto ipv6 exthdr frag missing",
                      "meta nfproto ipv6 frag frag-off 0"]


def family_of(addr: str) -> str:
    return "ip6" if ":" in addr else "ip"


def network_expr(side: str, name: str) -> str:
    """Longest match: inside one of the name's prefixes, outside every longer prefix within it."""
    def nets(n: str) -> list:
        return [ipaddress.ip_network(c) for nm, cs in NETWORKS if nm == n for c in cs]
    mine = nets(name)
    others = [o for nm, _ in NETWORKS if nm != name for o in nets(nm)]
    alts = []
    for net in mine:
        fam = "ip6" if net.version == 6 else "ip"
        inner = [o for o in others if o.version == net.version and o.subnet_of(net) and o != net]
        alts.append(f"{fam} {side} {net}" + "".join(f" {fam} {side} != {o}" for o in inner))
    assert len(alts) <= 2
    return alts  # type: ignore[return-value]


def exprs(label: str, value: str, context: dict[str, str]) -> list[str]:
    """nft expressions matching packets whose label has value (alternatives: one rule each)."""
    if label in ("saddr", "daddr"):
        return [f"{family_of(value)} {label} {value}"]
    if label in ("sport", "dport"):
        return [f"{alt} {L4_WITH_PORTS} th {label} {value}" for alt in NOT_LATER_FRAGMENT]
    if label == "proto":
        return [f"meta l4proto {PROTO_NUMBERS.get(value, value)}"]
    if label == "icmp_type":
        return [f"{context['proto']} type {value}"]
    if label == "tcp_flags":
        bits = 0 if value == "0x0" else sum(1 << TCP_FLAG_NAMES.index(f) for f in value.split(","))
        return [f"tcp flags == {bits:#x}"]
    if label in ("src_net", "dst_net"):
        return network_expr("saddr" if label == "src_net" else "daddr", value)  # type: ignore
    raise AssertionError(label)


PROJECTIONS = [("saddr", "dport", "proto"), ("saddr",), ("daddr",), ("sport", "proto"),
               ("proto", "icmp_type"), ("tcp_flags",), ("src_net",), ("dst_net",), ("proto",)]


def rules_for(values: Iterable[dict[str, str]]) -> dict[str, tuple[str, dict[str, str]]]:
    """{comment: (nft match, label projection)} for every projection value nflogd exported."""
    rules: dict[str, tuple[str, dict[str, str]]] = {}
    for proj in PROJECTIONS:
        seen = {tuple(v[k] for k in proj) for v in values}
        for tup in sorted(seen):
            if "" in tup:
                continue  # "" has no nft expression; the totals check covers it
            match = dict(zip(proj, tup))
            alternatives = [""]
            for k, v in match.items():
                alternatives = [f"{a} {e}".strip() for a in alternatives for e in exprs(k, v, match)]
            for j, alt in enumerate(alternatives):
                comment = ";".join(f"{k}={v}" for k, v in match.items()) + f"#{j}"
                rules[comment] = (alt, match)
    return rules


def load_rules(ns: Netns, rules: dict[str, tuple[str, dict[str, str]]], groups: str) -> None:
    lines = [f'        {match} counter comment "{c}"' for c, (match, _) in rules.items()]
    has_dport = "\n".join(f'        {alt} {L4_WITH_PORTS} th dport >= 0 counter comment '
                          f'"has-dport#{i}"' for i, alt in enumerate(NOT_LATER_FRAGMENT))
    ns.nft(f"""
    flush ruleset
    table inet t {{
      chain pre {{ type filter hook prerouting priority 0;
        iifname != "vb" accept
        meta nfproto ipv4 ip saddr != {{ {", ".join(A4)} }} accept
        meta nfproto ipv6 ip6 saddr != {{ {", ".join(A6)} }} accept
{has_dport}
{chr(10).join(lines)}
        counter {groups} drop comment "logged"
      }}
    }}""")


def veth6(a: Netns, b: Netns) -> None:
    veth_pair(a, b, "va", "vb", A4[0], B4)
    for addr in A4[1:]:
        a.ip("addr", "add", f"{addr}/16", "dev", "va")
    for addr in A6:
        a.ip("addr", "add", f"{addr}/64", "dev", "va", "nodad")
    b.ip("addr", "add", f"{B6}/64", "dev", "vb", "nodad")
    # Plain sockets in A need B's link address without asking (B answers nothing).
    a.ip("neigh", "replace", B4, "lladdr", mac_of(b, "vb").hex(":"), "dev", "va", "nud", "permanent")
    a.ip("neigh", "replace", B6, "lladdr", mac_of(b, "vb").hex(":"), "dev", "va", "nud", "permanent")


def send_all(a: Netns, b: Netns, tmp_path) -> int:
    """Send the crafted frames and plain UDP from each address; returns how many packets."""
    dst, src = mac_of(b, "vb"), mac_of(a, "va")
    frames = []
    total = 0
    for pkt, n in traffic():
        ethertype = 0x86dd if pkt[0] >> 4 == 6 else 0x0800
        frames.append(((dst + src + struct.pack("!H", ethertype) + pkt).hex(), n))
        total += n
    path = tmp_path / "frames.json"
    path.write_text(json.dumps(frames))
    path.chmod(0o644)
    a.run(SYSTEM_PYTHON, "-c", SENDER, "va", str(path), timeout=60)
    for i, s in enumerate(A4[:3]):  # through the stack, from a bound source address
        a.send_udp(B4, 9000 + i, 2 + i, 40, src=s)
        total += 2 + i
    a.send_udp(B6, 9100, 3, 40, src=A6[1])
    return total + 3


Series = list[tuple[dict[str, str], float, float]]


def exported(s: Scrape, group: str, before: Scrape | None = None) -> Series:
    """(labels, packets, bytes) of a group's series, less what `before` had."""
    out = []
    for labels, v in s.series(PACKETS, group=group):
        p, b = v, s.value(BYTES, **labels)
        if before is not None and (PACKETS, frozenset(labels.items())) in before.samples:
            p -= before.value(PACKETS, **labels)
            b -= before.value(BYTES, **labels)
        if p:
            out.append((labels, p, b))
    return out


def assert_rules_match(series: Series, ns: Netns,
                       rules: dict[str, tuple[str, dict[str, str]]]) -> None:
    counters = ns.counters()
    problems = []
    for comment, (match, proj) in rules.items():
        got_p = sum(v for lb, v, _ in series if all(lb[k] == x for k, x in proj.items()))
        got_b = sum(b for lb, _, b in series if all(lb[k] == x for k, x in proj.items()))
        # Alternatives (a name with a v4 and a v6 prefix) are summed over their rules.
        alts = [c for c in rules if c.split("#")[0] == comment.split("#")[0]]
        want = tuple(sum(counters[c][i] for c in alts) for i in (0, 1))
        if (got_p, got_b) != want:
            problems.append(f"{comment} [{match}]: nflogd {got_p:.0f} packets {got_b:.0f} bytes, "
                            f"nft {want[0]} packets {want[1]} bytes")
    assert not problems, "\n".join(problems)


def test_payload_labels_equal_nft_counters_per_value(make_netns: Callable[[str], Netns],
                                                     start_daemon: Callable[..., RunningDaemon],
                                                     tmp_path) -> None:
    a, b = make_netns("lblA"), make_netns("lblB")
    veth6(a, b)
    networks = "".join(f"  - {{name: {n}, cidr: [{', '.join(cs)}]}}\n" for n, cs in NETWORKS)
    d = start_daemon(b, f"labels: [{', '.join(ALL)}]\nnetworks:\n{networks}"
                        "groups:\n  - group: 1\n    timeout: 0.1\n")
    masked = start_daemon(b, "labels: [group, saddr, daddr, src_net, dst_net, proto]\n"
                             "address_mask: {ipv4: 24, ipv6: 48}\n"
                             f"networks:\n{networks}groups:\n  - group: 2\n    timeout: 0.1\n")
    load_rules(b, {}, "log group 1 log group 2")
    total = send_all(a, b, tmp_path)
    assert b.counters()["logged"][0] == total

    # First pass: the values nflogd exported get a rule each (any value it got wrong then counts
    # 0 in nft); the second pass sends the same packets again, counted by those rules from zero.
    s1 = d.wait_for(lambda s: s.total(PACKETS) >= total)
    rules = rules_for([lb for lb, _, _ in exported(s1, "1")])
    load_rules(b, rules, "log group 1")
    assert send_all(a, b, tmp_path) == total
    s = d.wait_for(lambda s: s.total(PACKETS) >= 2 * total)
    promtool_check(s.text)
    series = exported(s, "1", before=s1)
    c = b.counters()
    assert (sum(p for _, p, _ in series), sum(x for _, _, x in series)) == c["logged"], \
        "every record counted once"
    assert sum(p for lb, p, _ in series if lb["dport"]) == sum(
        c[f"has-dport#{i}"][0] for i in range(len(NOT_LATER_FRAGMENT)))
    assert_rules_match(series, b, rules)
    print(f"{len(rules)} rules, {total} packets")

    # What the kernel cannot say comes out as "": conntrack state (no ct data here), ports of
    # later fragments, ICMP type and TCP flags of other protocols.
    values = [lb for lb, _, _ in series]
    assert {lb["ct_state"] for lb in values} == {""}
    frag_later = [lb for lb in values if lb["saddr"] in (A4[3], A6[2]) and lb["dport"] == ""]
    assert {lb["proto"] for lb in frag_later} == {"udp"} and len(frag_later) == 2, frag_later
    assert all(lb["icmp_type"] == "" for lb in values if lb["proto"] not in ("icmp", "icmpv6"))
    assert all(lb["tcp_flags"] == "" for lb in values if lb["proto"] != "tcp")
    assert {lb["icmp_type"] for lb in values if lb["proto"] == "icmpv6"} == {
        "echo-request", "nd-neighbor-solicit", "destination-unreachable", "200"}
    assert {lb["icmp_type"] for lb in values if lb["proto"] == "icmp"} == {
        "echo-request", "echo-reply", "destination-unreachable", "timestamp-request", "42"}
    assert {lb["tcp_flags"] for lb in values} == {"", "syn", "syn,ack", "rst", "fin,ack", "0x0",
                                                  "fin,syn,rst,psh,ack,urg,ecn,cwr", "psh,ack"}
    assert {lb["src_net"] for lb in values} == {"lab", "lab-inner", "doc6", ""}
    assert any(lb["dport"] == "8443" and lb["saddr"] == A4[4] for lb in values), "IPv4 options"
    assert any(lb["dport"] == "7777" for lb in values), "IPv6 extension headers"

    # The masked daemon saw the first pass (group 2): its addresses are prefixes, networks still
    # matched on the whole address.
    s2 = masked.scrape()
    masked_series = exported(s2, "2")
    assert {(lb["saddr"], lb["src_net"]) for lb, _, _ in masked_series} == {
        ("10.0.0.0/24", "lab"), ("10.0.1.0/24", "lab-inner"), ("10.9.0.0/24", ""),
        ("fd00::/48", "lab"), ("fd00::/48", "lab-inner"), ("2001:db8::/48", "doc6")}
    assert {lb["daddr"] for lb, _, _ in masked_series} == {"10.0.0.0/24", "10.0.1.0/24",
                                                           "fd00::/48"}
    assert (s2.total(PACKETS), s2.total(BYTES)) == (s1.total(PACKETS), s1.total(BYTES))


def test_nflogdata_carries_the_label_fields(make_netns: Callable[[str], Netns], tmp_path) -> None:
    a, b = make_netns("lblA"), make_netns("lblB")
    veth6(a, b)
    load_rules(b, {}, "log group 3")
    h = open_in(b, 3, copyrange=128, rcvbuf=8 << 20)
    try:
        total = send_all(a, b, tmp_path)
        recs = read_n(h, total)
    finally:
        h.close()
    by_src: dict[str, list] = {}
    for r in recs:
        by_src.setdefault(r.saddr, []).append(r)
    assert set(by_src) == set(A4) | set(A6)
    opt = [r for r in by_src[A4[4]]]
    assert {(r.sport, r.dport, r.tcp_flags, r.daddr) for r in opt} == {(1234, 8443, 0x02, B4)}
    icmp4 = sorted({r.icmp_type for r in by_src[A4[0]] if r.l4proto == 1})
    assert icmp4 == [0, 3, 8, 13, 42]
    assert all(r.sport is None and r.tcp_flags is None for r in by_src[A4[0]] if r.l4proto == 1)
    frags = by_src[A4[3]]
    assert sorted((r.dport or 0, r.l4proto) for r in frags) == [(0, 17)] * 4 + [(6001, 17)] * 2
    v6frag = by_src[A6[2]]
    assert sorted((r.dport or 0) for r in v6frag) == [0, 0, 0, 0, 6002, 6002]
    ext = by_src[A6[3]]
    assert sorted((r.l4proto, r.dport) for r in ext) == [(6, 7778)] * 2 + [(17, 7777)] * 3
    assert all(r.ct_state is None for r in recs)
    assert {r.daddr for r in by_src[A6[0]]} == {B6}
    d = dict(recs[0])
    assert {"saddr", "daddr", "sport", "dport", "icmp_type", "tcp_flags", "ct_state"} <= set(d)


def test_ct_state_where_the_kernel_sends_no_conntrack_data(make_netns: Callable[[str], Netns],
                                                           start_daemon: Callable[..., RunningDaemon]
                                                           ) -> None:
    """This kernel (no CONFIG_NETFILTER_NETLINK_GLUE_CT) refuses NFULNL_CFG_F_CONNTRACK: asking
    binds nothing and says why; nflogd says it once, binds without, and exports ct_state ""."""
    ns = make_netns("ct")
    with pytest.raises(nflog.NflogError) as info:
        open_in(ns, 4, conntrack=True)
    assert info.value.errno == errno.EOPNOTSUPP
    assert "cannot attach conntrack data" in str(info.value)
    ns.nft("""
    table inet t {
      chain out { type filter hook output priority 0;
        udp dport 7400 ct state new counter log group 4 comment "new"
      }
    }""")
    d = start_daemon(ns, "labels: [group, ct_state, proto]\ngroups:\n  - group: 4\n"
                         "    timeout: 0.1\n")
    ns.send_udp("127.0.0.1", 7400, 5, 30)
    s = d.wait_for(lambda s: s.total(PACKETS) >= 5)
    assert s.value(PACKETS, group="4", ct_state="", proto="udp") == ns.counters()["new"][0] == 5
    assert s.value(BYTES, group="4", ct_state="", proto="udp") == ns.counters()["new"][1]
    assert s.value("nflogd_group_bound", group="4") == 1
    warnings = [line for line in d.stderr().splitlines() if "conntrack" in line]
    assert len(warnings) == 1 and "ct_state label stays empty" in warnings[0], d.stderr()
