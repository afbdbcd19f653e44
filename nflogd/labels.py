"""Every record label of nflog_packets_total / nflog_bytes_total, in one table.

A label has a name (what users write in ``labels:``), the aggregation field behind it (a name in
``nflog.FIELDS``, i.e. ``agg_field_names`` in csrc/agg_table.c: a test keeps the two equal), a
renderer turning the field's value in an aggregation key into the label value, and what it needs
from the kernel beyond the defaults (the copied payload, or conntrack data). Config validation, the
daemon (which fields to aggregate by), the collector and the C renderer all derive from this table.

Follow one name to find a label everywhere: ``tcp_flags`` is the row here, ``F_TCP_FLAGS`` in
csrc/agg_table.h, ``nfd_record_tcp_flags()`` in csrc/record.c, ``NflogData.tcp_flags``.

This module imports nothing from nflogd, so every other module may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "FAMILY_NAMES",
    "HOOK_NAMES",
    "ICMPV6_TYPE_NAMES",
    "ICMP_TYPE_NAMES",
    "LABELS",
    "LABEL_NAMES",
    "NEEDS_CONNTRACK",
    "NEEDS_PAYLOAD",
    "OVERFLOW",
    "PROTO_NAMES",
    "TCP_FLAG_NAMES",
    "KeyRenderer",
    "KeySpec",
    "Label",
    "LabelContext",
    "escape",
    "fields_for",
    "key_spec",
    "label_string",
    "min_copy_range",
    "needs",
    "overflow_label_string",
    "tcp_flags_text",
]

# Names for the numbers records carry, for labels and logs.
FAMILY_NAMES = {1: "inet", 2: "ipv4", 3: "arp", 5: "netdev", 7: "bridge", 10: "ipv6"}
HOOK_NAMES = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}
PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 33: "dccp", 41: "ipv6", 47: "gre",
               50: "esp", 51: "ah", 58: "icmpv6", 132: "sctp", 136: "udplite"}
# As `nft describe icmp type` / `icmpv6 type` names them (nftables 1.0.6).
ICMP_TYPE_NAMES = {
    0: "echo-reply", 3: "destination-unreachable", 4: "source-quench", 5: "redirect",
    8: "echo-request", 9: "router-advertisement", 10: "router-solicitation",
    11: "time-exceeded", 12: "parameter-problem", 13: "timestamp-request",
    14: "timestamp-reply", 15: "info-request", 16: "info-reply", 17: "address-mask-request",
    18: "address-mask-reply",
}
ICMPV6_TYPE_NAMES = {
    1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded",
    4: "parameter-problem", 128: "echo-request", 129: "echo-reply", 130: "mld-listener-query",
    131: "mld-listener-report", 132: "mld-listener-done", 133: "nd-router-solicit",
    134: "nd-router-advert", 135: "nd-neighbor-solicit", 136: "nd-neighbor-advert",
    137: "nd-redirect", 138: "router-renumbering", 141: "ind-neighbor-solicit",
    142: "ind-neighbor-advert", 143: "mld2-listener-report",
}
# `nft describe tcp flags`, lowest bit first: a set renders as nft lists it, "syn,ack".
TCP_FLAG_NAMES = ("fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr")

# The label value of the series that counts records over the series budget.
OVERFLOW = "__overflow__"

# What a label needs from the kernel beyond the defaults.
NEEDS_PAYLOAD = "payload"      # the packet's headers, in the copy range
NEEDS_CONNTRACK = "conntrack"  # NFULA_CT_INFO (NFULNL_CFG_F_CONNTRACK)


@dataclass(frozen=True)
class LabelContext:
    """What rendering needs besides the key: interface names (of the daemon's namespace, now)
    and the prefix classifier of the `actions:` rules."""

    ifname: Callable[[int | None], str]
    action: Callable[[str], str]


Render = Callable[[object, LabelContext], str]


@dataclass(frozen=True)
class Label:
    """One record label. ``min_copy`` is the copy range (bytes of the packet the kernel copies)
    that holds the value for an IPv6 packet without extension headers; 0 when it needs none."""

    name: str
    field: str
    render: Render
    needs: str | None
    min_copy: int
    doc: str


def _text(raw: object, ctx: LabelContext) -> str:
    return "" if raw is None else str(raw)


def _prefix(raw: object, ctx: LabelContext) -> str:
    return "" if raw is None else raw.decode("utf-8", "backslashreplace")  # type: ignore[attr-defined]


def _action(raw: object, ctx: LabelContext) -> str:
    return ctx.action(_prefix(raw, ctx))


def _dev(raw: object, ctx: LabelContext) -> str:
    return ctx.ifname(raw)  # type: ignore[arg-type]


def _named(names: dict[int, str]) -> Render:
    def render(raw: object, ctx: LabelContext) -> str:
        if raw is None:
            return ""
        assert isinstance(raw, int)
        return names.get(raw, str(raw))
    return render


def _icmp_type(raw: object, ctx: LabelContext) -> str:
    if raw is None:
        return ""
    assert isinstance(raw, tuple)  # (proto, type): the C key's icmp_type
    proto, icmp_type = raw
    names = ICMPV6_TYPE_NAMES if proto == 58 else ICMP_TYPE_NAMES
    return names.get(icmp_type, str(icmp_type))


def tcp_flags_text(flags: int) -> str:
    """A TCP flags byte as nft spells the set: "syn,ack"; "0x0" when no flag is set (as nft)."""
    names = [name for bit, name in enumerate(TCP_FLAG_NAMES) if flags & (1 << bit)]
    return ",".join(names) if names else "0x0"


def _tcp_flags(raw: object, ctx: LabelContext) -> str:
    return "" if raw is None else tcp_flags_text(raw)  # type: ignore[arg-type]


def _label(name: str, render: Render, doc: str, *, field: str | None = None,
           needs: str | None = None, min_copy: int = 0) -> Label:
    return Label(name, field or name, render, needs, min_copy, doc)


_P = NEEDS_PAYLOAD
LABELS: tuple[Label, ...] = (
    _label("group", _text, "NFLOG group number"),
    _label("prefix", _prefix, "the log rule's prefix"),
    _label("action", _action, "the prefix classified by the `actions:` rules", field="prefix"),
    _label("indev", _dev, "input interface name"),
    _label("outdev", _dev, "output interface name"),
    _label("physindev", _dev, "bridge port the packet came in on"),
    _label("physoutdev", _dev, "bridge port the packet goes out of"),
    _label("uid", _text, "uid of the local socket (OUTPUT, established TCP on INPUT)"),
    _label("gid", _text, "gid of the local socket"),
    _label("family", _named(FAMILY_NAMES), "protocol family of the hook: ipv4, ipv6, bridge ..."),
    _label("proto", _named(PROTO_NAMES), "transport protocol: tcp, udp, icmp, icmpv6 ..."),
    _label("hook", _named(HOOK_NAMES), "netfilter hook: prerouting .. postrouting"),
    _label("mark", _text, "packet mark (0 when unmarked)"),
    _label("saddr", _text, "source address, reduced to address_mask (CIDR when cut)",
           needs=_P, min_copy=40),
    _label("daddr", _text, "destination address, reduced to address_mask", needs=_P, min_copy=40),
    _label("sport", _text, "TCP/UDP/UDP-Lite/SCTP/DCCP source port", needs=_P, min_copy=44),
    _label("dport", _text, "TCP/UDP/UDP-Lite/SCTP/DCCP destination port", needs=_P, min_copy=44),
    _label("icmp_type", _icmp_type, "ICMP/ICMPv6 type as nft names it", needs=_P, min_copy=41),
    _label("tcp_flags", _tcp_flags, "TCP flags as nft spells the set: syn,ack", needs=_P,
           min_copy=54),
    _label("src_net", _text, "name of the longest `networks:` entry holding the source",
           needs=_P, min_copy=40),
    _label("dst_net", _text, "name of the longest `networks:` entry holding the destination",
           needs=_P, min_copy=40),
    _label("ct_state", _text, "conntrack state: new, established, related",
           needs=NEEDS_CONNTRACK),
)
_BY_NAME = {label.name: label for label in LABELS}
LABEL_NAMES: tuple[str, ...] = tuple(_BY_NAME)


def fields_for(labels: Iterable[str]) -> tuple[str, ...]:
    """The aggregation fields the labels need, in label order, each once."""
    return tuple(dict.fromkeys(_BY_NAME[name].field for name in labels))


def min_copy_range(labels: Iterable[str]) -> tuple[int, str | None]:
    """The smallest copy range the labels can live with, and the label that needs it."""
    best, who = 0, None
    for name in labels:
        need = _BY_NAME[name].min_copy
        if need > best:
            best, who = need, name
    return best, who


def needs(labels: Iterable[str], what: str) -> bool:
    return any(_BY_NAME[name].needs == what for name in labels)


@dataclass(frozen=True)
class KeySpec:
    """What an Aggregator keys on: fields, the address mask and the named networks it matches.
    Two equal specs count the same way (a reload that keeps the spec keeps the counters)."""

    fields: tuple[str, ...]
    address_mask: tuple[int, int] = (32, 128)
    networks: tuple[tuple[str, str], ...] = ()


def key_spec(labels: Sequence[str], address_mask: tuple[int, int] = (32, 128),
             networks: Iterable[tuple[str, str]] = ()) -> KeySpec:
    """The KeySpec of a label list; the mask and networks only where a label uses them, so
    changing them alone does not reset counters that never depended on them."""
    fields = fields_for(labels)
    uses_addr = "saddr" in fields or "daddr" in fields
    uses_nets = "src_net" in fields or "dst_net" in fields
    return KeySpec(fields, address_mask if uses_addr else (32, 128),
                   tuple(networks) if uses_nets else ())


def escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_string(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs) + "}"


class KeyRenderer:
    """Renders one aggregation key of one group to its label string, ``{group="0",...}``: the
    configured labels in order, then the group's constant labels sorted by name.

    The one function a scrape calls per new key (the collector caches what it returns)."""

    def __init__(self, labels: Sequence[str], fields: Sequence[str], ctx: LabelContext,
                 constant: Iterable[tuple[str, str]] = ()) -> None:
        index = {f: i for i, f in enumerate(fields)}
        self._parts = [(name, index[_BY_NAME[name].field], _BY_NAME[name].render)
                       for name in labels]
        self._ctx = ctx
        self._constant = sorted(constant)

    def __call__(self, key: Sequence[object]) -> str:
        ctx = self._ctx
        pairs = [(name, render(key[i], ctx)) for name, i, render in self._parts]
        return label_string(pairs + self._constant)


def overflow_label_string(labels: Sequence[str], group: int,
                          constant: Iterable[tuple[str, str]] = ()) -> str:
    """The label string of a group's series for records over the series budget: group keeps its
    number, every other record label is __overflow__."""
    pairs = [(name, str(group) if name == "group" else OVERFLOW) for name in labels]
    return label_string(pairs + sorted(constant))
