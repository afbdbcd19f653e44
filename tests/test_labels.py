"""nflogd.labels, the one table of record labels: the C side agrees with it, values render as the
README says, the config keys of the payload labels (address_mask, networks) are checked with
FILE:LINE:COL, and the collector renders worker snapshots only. No root or kernel needed.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from nflogd import labels, nflog
from nflogd.collector import RecordCounters
from nflogd.config import ConfigError, GroupConfig, load_config
from nflogd.worker import WorkerSnapshot

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_label_field_is_a_c_field_and_every_c_field_has_a_label() -> None:
    # agg_field_names in csrc/agg_table.c, as the module exports it.
    assert set(labels.fields_for(labels.LABEL_NAMES)) == set(nflog.FIELDS) - {"hwproto"}
    for label in labels.LABELS:
        assert label.field in nflog.FIELDS, label
        nflog.Aggregator([label.field])  # C accepts it


def test_every_label_is_in_the_readme_table() -> None:
    text = README.read_text()
    for name in labels.LABEL_NAMES:
        assert re.search(rf"^\| `{name}` \|", text, re.MULTILINE), f"README has no row for {name}"


def ctx() -> labels.LabelContext:
    return labels.LabelContext(ifname=lambda i: f"if{i}" if i else "",
                               action=lambda p: "drop" if "drop" in p else "other")


@pytest.mark.parametrize("name, raw, text", [
    ("icmp_type", (1, 8), "echo-request"), ("icmp_type", (58, 128), "echo-request"),
    ("icmp_type", (58, 135), "nd-neighbor-solicit"), ("icmp_type", (1, 42), "42"),
    ("icmp_type", None, ""), ("tcp_flags", 0x12, "syn,ack"), ("tcp_flags", 0x11, "fin,ack"),
    ("tcp_flags", 0, "0x0"), ("tcp_flags", 0xff, "fin,syn,rst,psh,ack,urg,ecn,cwr"),
    ("tcp_flags", None, ""), ("saddr", "203.0.113.0/24", "203.0.113.0/24"), ("saddr", None, ""),
    ("dport", 443, "443"), ("dport", None, ""), ("proto", 132, "sctp"), ("proto", 250, "250"),
    ("src_net", "office", "office"), ("ct_state", "new", "new"), ("action", b"x drop", "drop"),
    ("indev", 3, "if3"), ("indev", None, ""), ("prefix", b"a\xff", "a\\xff"),
])
def test_values_render(name: str, raw: object, text: str) -> None:
    label = next(lb for lb in labels.LABELS if lb.name == name)
    assert label.render(raw, ctx()) == text


def test_key_renderer_orders_labels_then_constant_labels() -> None:
    r = labels.KeyRenderer(["dport", "saddr", "group"], ("group", "saddr", "dport"), ctx(),
                           [("zone", "b"), ("dc", "a\"")])
    assert r((5, "2001:db8::1", 22)) == \
        '{dport="22",saddr="2001:db8::1",group="5",dc="a\\"",zone="b"}'
    assert labels.overflow_label_string(["group", "saddr"], 5, [("dc", "x")]) == \
        '{group="5",saddr="__overflow__",dc="x"}'


def test_key_spec_carries_mask_and_networks_only_for_labels_that_use_them() -> None:
    nets = [("office", "198.51.100.0/24")]
    assert labels.key_spec(["group", "proto"], (24, 48), nets) == labels.KeySpec(("group", "proto"))
    spec = labels.key_spec(["saddr", "src_net", "action", "prefix"], (24, 48), nets)
    assert spec == labels.KeySpec(("saddr", "src_net", "prefix"), (24, 48), tuple(nets))


# --- config -----------------------------------------------------------------------------

def load(tmp_path: Path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(str(path))


def error(tmp_path: Path, text: str, line: int, column: int, fragment: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:{column}: "), message
    assert fragment in message, message
    return message


def test_networks_and_address_mask_load(tmp_path: Path) -> None:
    c = load(tmp_path, """
        labels: [saddr, src_net, dst_net]
        address_mask: {ipv4: 24, ipv6: 48}
        networks:
          - {name: office, cidr: 198.51.100.0/24}
          - name: lab
            cidr: [10.0.0.0/8, "fd00::/8"]
        """)
    assert c.address_mask == (24, 48)
    assert [(n.name, [str(x) for x in n.networks]) for n in c.networks] == [
        ("office", ["198.51.100.0/24"]), ("lab", ["10.0.0.0/8", "fd00::/8"])]
    assert c.key_spec.networks == (("office", "198.51.100.0/24"), ("lab", "10.0.0.0/8"),
                                   ("lab", "fd00::/8"))
    assert c.key_spec.address_mask == (24, 48)
    assert load(tmp_path, "address_mask: {ipv6: 64}\n").address_mask == (32, 64)


@pytest.mark.parametrize("text, line, column, fragment", [
    ("address_mask: {ipv4: 33}\n", 1, 22, "address_mask.ipv4: 33 is out of range 0-32"),
    ("address_mask: {ipv6: -1}\n", 1, 22, "address_mask.ipv6: -1 is out of range 0-128"),
    ("address_mask: {ipv5: 1}\n", 1, 16, "unknown key 'ipv5'"),
    ("address_mask: 24\n", 1, 15, "expected a mapping"),
    ("networks:\n  - {name: a, cidr: 10.0.0.300/8}\n", 2, 21, "is not a network"),
    ("networks:\n  - {name: a, cidr: 10.0.0.1/8}\n", 2, 21,
     "host bits set; did you mean 10.0.0.0/8?"),
    ("networks:\n  - {name: a, cidr: 10.0.0.1}\n", 2, 21, "has no prefix length"),
    ("networks:\n  - {name: a, cidr: 10.0.0.0/33}\n", 2, 21, "is not a network"),
    ("networks:\n  - {name: a, cidr: 10.0.0.0/8}\n  - {name: a, cidr: 11.0.0.0/8}\n", 3, 12,
     "network 'a' is listed twice (first at line 2)"),
    ("networks:\n  - {name: a, cidr: 10.0.0.0/8}\n  - {name: b, cidr: [11.0.0.0/8, 10.0.0.0/8]}\n",
     3, 34, "10.0.0.0/8 is already network 'a' (line 2)"),
    ("networks:\n  - {name: '', cidr: 10.0.0.0/8}\n", 2, 12, "cannot be a network name"),
    ("networks:\n  - {name: a}\n", 2, 5, "missing required key 'cidr'"),
    ("networks:\n  - {name: a, cidr: []}\n", 2, 21, "empty list"),
    ("labels: [src_net]\n", 1, 9, "need a `networks:` list"),
    ("labels: [tcp_flags]\ngroups:\n  - group: 1\n    copy_range: 40\n", 4, 17,
     "40 bytes cannot hold the label 'tcp_flags', which needs at least 54"),
])
def test_bad_payload_label_settings(tmp_path: Path, text: str, line: int, column: int,
                                    fragment: str) -> None:
    error(tmp_path, text, line, column, fragment)


def test_copy_range_zero_copies_everything(tmp_path: Path) -> None:
    c = load(tmp_path, "labels: [tcp_flags]\ngroups:\n  - group: 1\n    copy_range: 0\n")
    assert c.groups[0].copy_range == 0


# --- the collector renders snapshots -----------------------------------------------------

class Names:
    generation = 0

    def name(self, index: int | None) -> str:
        return {3: "eth0"}.get(index, "") if index else ""


def test_collector_renders_snapshots_merging_rows_with_the_same_labels(tmp_path: Path) -> None:
    cfg = load(tmp_path, "labels: [group, saddr, dport, icmp_type]\nmax_series: 10\n")
    spec = cfg.key_spec
    g = GroupConfig(group=4, labels=(("site", "x"),))
    rows = (((4, "203.0.113.7", 22, None), 3, 300), ((4, "203.0.113.7", None, (1, 8)), 2, 168),
            ((4, "203.0.113.7", None, (58, 128)), 1, 104))
    snap = WorkerSnapshot(group=4, group_config=g, spec=spec, rows=rows, overflow=(5, 500))
    text = RecordCounters(Names()).render(cfg, [snap]).decode()  # type: ignore[arg-type]
    assert 'nflog_packets_total{group="4",saddr="203.0.113.7",dport="22",icmp_type="",site="x"} 3' \
        in text
    # ICMP and ICMPv6 echo-request share a label value: one series.
    assert 'nflog_packets_total{group="4",saddr="203.0.113.7",dport="",' \
        'icmp_type="echo-request",site="x"} 3' in text
    assert 'nflog_bytes_total{group="4",saddr="__overflow__",dport="__overflow__",' \
        'icmp_type="__overflow__",site="x"} 500' in text
    # A snapshot keyed by another spec (a reload in flight): its rows cannot be named under
    # these labels, so the group's whole count shows in its remainder series (nothing lost).
    other = WorkerSnapshot(group=4, group_config=g, spec=labels.KeySpec(("group",)),
                           rows=(((4,), 1, 1),), overflow=(2, 20))
    text = RecordCounters(Names()).render(cfg, [other]).decode()  # type: ignore[arg-type]
    assert text.count("nflog_packets_total{") == 1
    assert 'nflog_packets_total{group="4",saddr="__overflow__",dport="__overflow__",' \
        'icmp_type="__overflow__",site="x"} 3' in text
