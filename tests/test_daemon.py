"""The real nflogd process against the real kernel, inside private network namespaces.

Each test loads nft rules whose counters are the ground truth (one rule per label set, each with
its own comment, so counters map 1:1 onto series), sends real traffic, scrapes /metrics over HTTP,
parses it with prometheus_client's exposition parser and asserts exact equality. The kernel holds a
partial batch for the group timeout (1 s by default), so every comparison first scrapes until the
totals reach the nft counters (deadline 5 s), then asserts every series exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from typing import Callable, Sequence

import pytest
from conftest import NFLOGD, RunningDaemon, Scrape, promtool_check
from netns import VENV_PYTHON, Netns, unused_uids, veth_pair

PACKETS = "nflog_packets_total"
BYTES = "nflog_bytes_total"
OVER = "__overflow__"


def labels(group: int, prefix: str, *, indev: str = "", outdev: str = "", uid: str = ""
           ) -> dict[str, str]:
    """The default label set (group, prefix, indev, outdev, uid) of a record."""
    return {"group": str(group), "prefix": prefix, "indev": indev, "outdev": outdev, "uid": uid}


def wait_counted(d: RunningDaemon, ns: Netns, groups: Sequence[int], comments: Sequence[str],
                 timeout: float = 5.0) -> tuple[Scrape, dict[str, tuple[int, int]]]:
    """Scrape until the packets of ``groups`` add up to the nft counters of ``comments``.

    Returns that scrape and the counters; the caller then asserts every series exactly.
    """
    counters = ns.counters()
    want = sum(counters[c][0] for c in comments)
    assert want > 0, f"no traffic matched the rules {comments}: {counters}"

    def reached(s: Scrape) -> bool:
        return sum(s.total(PACKETS, group=str(g)) for g in groups) >= want

    return d.wait_for(reached, timeout), counters


def assert_series(s: Scrape, counters: dict[str, tuple[int, int]],
                  expected: dict[str, dict[str, str]]) -> None:
    """Every rule comment's counters equal the packets and bytes of its label set, exactly."""
    for comment, lbls in expected.items():
        packets, nbytes = counters[comment]
        assert (s.value(PACKETS, **lbls), s.value(BYTES, **lbls)) == (packets, nbytes), \
            f"rule {comment!r}: nflogd has other counts than nft for {lbls}"


def bound_groups(ns: Netns) -> set[int]:
    """The NFLOG groups bound in the namespace, from the kernel's own table."""
    text = ns.run("cat", "/proc/net/netfilter/nfnetlink_log").stdout.decode()
    return {int(line.split()[0]) for line in text.splitlines() if line.strip()}


def bound_portids(ns: Netns) -> dict[int, int]:
    """NFLOG group -> netlink portid of the socket that holds it: a re-bind changes the portid."""
    text = ns.run("cat", "/proc/net/netfilter/nfnetlink_log").stdout.decode()
    return {int(f[0]): int(f[1]) for f in (line.split() for line in text.splitlines()) if f}


# --- 1. two groups, two uids, two interfaces --------------------------------------------------

def test_two_groups_two_uids_two_interfaces_match_nft_counters(make_netns, start_daemon) -> None:
    ns, peer_b, peer_c = make_netns("d"), make_netns("pb"), make_netns("pc")
    veth_pair(ns, peer_b, "vb", "vpeer", "10.1.0.1", "10.1.0.2")
    veth_pair(ns, peer_c, "vc", "vpeer", "10.2.0.1", "10.2.0.2")
    uids = unused_uids(2)
    dst = {"vb": "10.1.0.2", "vc": "10.2.0.2"}
    prefix = {10: "drop out: ", 11: "accept out: "}
    # OUTPUT: one rule per (group, uid, interface); INPUT: one per interface into group 11.
    rules, expected, traffic = [], {}, []
    i = 0
    for group in (10, 11):
        for uid in uids:
            for dev in ("vb", "vc"):
                comment = f"out-{group}-{uid}-{dev}"
                rules.append(f'meta skuid {uid} oifname "{dev}" udp dport {5000 + group} counter '
                             f'log prefix "{prefix[group]}" group {group} comment "{comment}"')
                expected[comment] = labels(group, prefix[group], outdev=dev, uid=str(uid))
                traffic.append((ns, dst[dev], 5000 + group, 3 + 2 * i, 40 + 17 * i, uid))
                i += 1
    in_rules = []
    for dev, peer, addr in (("vb", peer_b, "10.1.0.1"), ("vc", peer_c, "10.2.0.1")):
        comment = f"in-11-{dev}"
        in_rules.append(f'iifname "{dev}" udp dport 6000 counter log prefix "accept in: " '
                        f'group 11 comment "{comment}"')
        expected[comment] = labels(11, "accept in: ", indev=dev)
        traffic.append((peer, addr, 6000, 4 + i, 300 + i, None))
        i += 1
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0;\n"
           + "\n".join(rules) + "\n }\n chain in {\n type filter hook input priority 0;\n"
           + "\n".join(in_rules) + "\n }\n}\n")

    d = start_daemon(ns, "groups:\n  - group: 10\n  - group: 11\n")
    for where, addr, port, count, size, uid in traffic:
        where.send_udp(addr, port, count, size, uid=uid)

    s, counters = wait_counted(d, ns, [10, 11], list(expected))
    assert_series(s, counters, expected)
    # Nothing else: exactly one series per rule, no stray label sets.
    assert len(s.series(PACKETS)) == len(expected) == len(s.series(BYTES))
    for group in (10, 11):
        mine = [c for c, lb in expected.items() if lb["group"] == str(group)]
        assert s.value("nflogd_messages_received_total", group=str(group)) == \
            sum(counters[c][0] for c in mine)
        assert s.value("nflogd_messages_lost_total", group=str(group)) == 0
        assert s.value("nflogd_group_bound", group=str(group)) == 1
        assert s.value("nflogd_last_message_timestamp_seconds", group=str(group)) > time.time() - 60
    assert s.total("nflogd_messages_received_total") == sum(p for p, _ in counters.values())
    assert s.value("nflogd_series") == len(expected)
    assert s.value("nflogd_config_last_reload_successful") == 1
    assert s.types[PACKETS[:-len("_total")]] == "counter"
    # The scrape as a whole passes promtool's exposition checks and lint.
    promtool_check(s.text)
    # Conventions: no _created series, no `up`; the landing page answers.
    assert not [k for k in s.samples if k[0].endswith("_created") or k[0] == "up"]
    built_against = subprocess.run(["pkg-config", "--modversion", "libnetfilter_log"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    (info_labels, info_value), = s.series("nflogd_build_info")
    assert info_value == 1 and info_labels["libnetfilter_log"] == built_against
    status, _, body = d.get("/")
    assert status == 200 and "/metrics" in body


# --- 2. SIGHUP adds and removes groups --------------------------------------------------------

def _lo_rules(ns: Netns, groups: Sequence[int]) -> None:
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0;\n"
           + "\n".join(f'udp dport {5000 + g} counter log prefix "g{g}" group {g} comment "g{g}"'
                       for g in groups) + "\n }\n}\n")


def _lo_labels(g: int) -> dict[str, str]:
    return labels(g, f"g{g}", outdev="lo", uid="0")


def test_sighup_adds_and_removes_groups_and_keeps_counting(make_netns, start_daemon) -> None:
    ns = make_netns("hup")
    _lo_rules(ns, (10, 11, 12))
    d = start_daemon(ns, "groups:\n  - group: 10\n  - group: 11\n    timeout: 0.2\n")
    ns.send_udp("127.0.0.1", 5010, 7, 10)
    ns.send_udp("127.0.0.1", 5011, 5, 20)
    s, counters = wait_counted(d, ns, [10, 11], ["g10", "g11"])
    assert_series(s, counters, {"g10": _lo_labels(10), "g11": _lo_labels(11)})
    loaded_at = s.value("nflogd_config_last_reload_success_timestamp_seconds")

    time.sleep(0.05)  # the reload timestamp must visibly move
    # 11 removed, 12 added, 10 reconfigured (its socket is re-bound): 10 keeps its counts.
    d.write_config("groups:\n  - group: 10\n    timeout: 0.3\n  - group: 12\n    timeout: 0.2\n")
    d.send(signal.SIGHUP)
    s = d.wait_for(lambda s: bool(s.series("nflogd_group_bound", group="12"))
                   and s.value("nflogd_group_bound", group="12") == 1
                   and s.value("nflogd_config_last_reload_success_timestamp_seconds") > loaded_at)
    assert s.value("nflogd_group_bound", group="12") == 1
    assert s.value("nflogd_config_last_reload_successful") == 1
    assert s.value("nflogd_config_last_reload_success_timestamp_seconds") > loaded_at

    # The added group counts; the kept group keeps its counts; the removed one is gone.
    ns.send_udp("127.0.0.1", 5010, 4, 30)
    ns.send_udp("127.0.0.1", 5011, 6, 30)  # nobody reads group 11 any more
    ns.send_udp("127.0.0.1", 5012, 9, 40)
    s, counters = wait_counted(d, ns, [10, 12], ["g10", "g12"])
    assert counters["g10"][0] == 11  # cumulative: 7 before the reload + 4 after
    assert_series(s, counters, {"g10": _lo_labels(10), "g12": _lo_labels(12)})
    for name in (PACKETS, BYTES, "nflogd_messages_received_total", "nflogd_group_bound",
                 "nflogd_messages_lost_total"):
        assert s.series(name, group="11") == [], f"{name} still has group 11 after its removal"
    assert s.value("nflogd_messages_received_total", group="10") == counters["g10"][0]
    assert s.value("nflogd_messages_received_total", group="12") == counters["g12"][0]
    assert s.value("nflogd_config_last_reload_successful") == 1
    assert bound_groups(ns) == {10, 12}  # 11 really unbound


def test_reload_changing_socket_settings_loses_no_records(make_netns, start_daemon) -> None:
    ns = make_netns("rebind")
    _lo_rules(ns, (10,))
    d = start_daemon(ns, "groups:\n  - group: 10\n    timeout: 5.0\n")
    loaded_at = d.scrape().value("nflogd_config_last_reload_success_timestamp_seconds")
    ns.send_udp("127.0.0.1", 5010, 20, 10)  # the kernel holds these for up to 5 s
    d.write_config("groups:\n  - group: 10\n    timeout: 0.2\n")
    d.send(signal.SIGHUP)
    d.wait_for(lambda s: s.value("nflogd_config_last_reload_success_timestamp_seconds") > loaded_at
               and s.value("nflogd_group_bound", group="10") == 1)
    # A marker after the reload: once it is counted, everything sent before it was delivered
    # (or lost for good).
    ns.send_udp("127.0.0.1", 5010, 1, 10)
    s = d.wait_for(lambda s: s.total(PACKETS) >= 1)
    time.sleep(0.3)
    s = d.scrape()
    counters = ns.counters()
    counted = s.total(PACKETS, group="10")
    lost = s.value("nflogd_messages_lost_total", group="10")
    assert counted == counters["g10"][0], (
        f"nft logged {counters['g10'][0]} records, nflogd counted {counted}; "
        f"nflogd_messages_lost_total says {lost}")


def test_reload_changing_labels_keeps_the_group_bound(make_netns, start_daemon) -> None:
    """New labels change the series, but the group is not re-bound: records the kernel was still
    batching at the reload are counted under the new labels, none lost; what was counted before
    the relabel is in the group's remainder series."""
    ns = make_netns("relabel")
    _lo_rules(ns, (10,))
    d = start_daemon(ns, "groups:\n  - group: 10\n    timeout: 0.2\n")
    ns.send_udp("127.0.0.1", 5010, 3, 10)
    wait_counted(d, ns, [10], ["g10"])
    portid_before = bound_portids(ns)
    d.write_config("labels: [group, proto]\ngroups:\n  - group: 10\n    timeout: 5.0\n")
    d.send(signal.SIGHUP)
    d.wait_for(lambda s: s.series(PACKETS) == [] or "proto" in s.series(PACKETS)[0][0])
    ns.send_udp("127.0.0.1", 5010, 4, 10)  # held by the kernel for up to 5 s ...
    d.write_config("labels: [group, proto]\ngroups:\n  - group: 10\n    timeout: 0.2\n")
    d.send(signal.SIGHUP)  # ... and not lost when the timeout changes again
    s = d.wait_for(lambda s: s.total(PACKETS, group="10") >= 7)
    time.sleep(0.5)
    s = d.scrape()
    assert bound_portids(ns) == portid_before, "the group was re-bound"
    assert sorted(s.series(PACKETS, group="10"), key=lambda r: r[1]) == [
        ({"group": "10", "proto": "__overflow__"}, 3), ({"group": "10", "proto": "udp"}, 4)]
    assert ns.counters()["g10"][0] == 7
    assert s.value("nflogd_messages_lost_total", group="10") == 0


def test_reload_moves_the_endpoint_or_refuses_a_busy_address(make_netns, start_daemon) -> None:
    ns = make_netns("endpoint")
    _lo_rules(ns, (10,))
    d = start_daemon(ns, "groups:\n  - group: 10\n    timeout: 0.2\n")
    ns.send_udp("127.0.0.1", 5010, 3, 10)
    wait_counted(d, ns, [10], ["g10"])

    # Same address, another path: served there from now on, the old path is gone.
    d.write_config("metrics_path: /nflog\ngroups:\n  - group: 10\n    timeout: 0.2\n")
    d.send(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while d.get("/nflog")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    status, _, body = d.get("/nflog")
    assert status == 200 and Scrape(body).total(PACKETS, group="10") == 3
    assert d.get("/metrics")[0] == 404
    assert "/nflog" in d.get("/")[2]  # the landing page links the new path

    # A listen address another socket holds: the reload fails, nothing changes, old port serves.
    holder = ns.popen([VENV_PYTHON, "-c", "import socket,time; s=socket.socket(); "
                       "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                       "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
                       "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        busy = int(holder.stdout.readline())
        d.write_config(f'listen: "127.0.0.1:{busy}"\nmetrics_path: /other\n'
                       "groups:\n  - group: 10\n    timeout: 0.2\n  - group: 11\n")
        d.send(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, _, body = d.get("/nflog")
            if Scrape(body).value("nflogd_config_last_reload_successful") == 0:
                break
            time.sleep(0.05)
        s = Scrape(body)
        assert s.value("nflogd_config_last_reload_successful") == 0
        assert s.series("nflogd_group_bound", group="11") == []  # the new groups were not applied
        errors = [line for line in d.stderr().splitlines() if "reload refused" in line]
        assert errors and f"127.0.0.1:{busy}" in errors[-1], d.stderr()
    finally:
        holder.kill()
        holder.wait()

    # A free port: the daemon moves there and the old one stops answering.
    new_port = ns.free_port()
    d.write_config(f'listen: "127.0.0.1:{new_port}"\ngroups:\n  - group: 10\n    timeout: 0.2\n')
    d.send(signal.SIGHUP)
    old_port, d.port = d.port, new_port
    s = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            s = d.scrape()
            if s.value("nflogd_config_last_reload_successful") == 1:
                break
        except OSError:
            pass  # the new port listens once the reload got there
        time.sleep(0.05)
    assert s is not None and s.value("nflogd_config_last_reload_successful") == 1
    assert s.total(PACKETS, group="10") == 3
    with ns.entered():
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{old_port}/metrics", timeout=2)


# --- 3. a bad config on reload ----------------------------------------------------------------

def test_bad_config_on_reload_keeps_the_old_one(make_netns, start_daemon) -> None:
    ns = make_netns("bad")
    _lo_rules(ns, (10,))
    d = start_daemon(ns, "groups:\n  - group: 10\n    timeout: 0.2\n")
    ns.send_udp("127.0.0.1", 5010, 5, 10)
    s, counters = wait_counted(d, ns, [10], ["g10"])
    assert_series(s, counters, {"g10": _lo_labels(10)})
    loaded_at = s.value("nflogd_config_last_reload_success_timestamp_seconds")

    text = d.write_config("groups:\n  - group: 10\n    timeout: 0.2\n    qtresh: 5\n"
                          "  - group: 11\n")
    typo_line = text.splitlines().index("    qtresh: 5") + 1
    d.send(signal.SIGHUP)
    s = d.wait_for(lambda s: s.value("nflogd_config_last_reload_successful") == 0)
    assert s.value("nflogd_config_last_reload_successful") == 0
    assert s.value("nflogd_config_last_reload_success_timestamp_seconds") == loaded_at
    assert s.series("nflogd_group_bound", group="11") == []  # nothing of the new file applied

    # The log says what and where, on one line.
    errors = [line for line in d.stderr().splitlines() if "qtresh" in line]
    assert len(errors) == 1, d.stderr()
    assert f"{d.config_path}:{typo_line}:" in errors[0], errors[0]
    assert "unknown key" in errors[0] and "level=error" in errors[0], errors[0]

    # Still counting on the old config.
    ns.send_udp("127.0.0.1", 5010, 6, 50)
    s, counters = wait_counted(d, ns, [10], ["g10"])
    assert counters["g10"][0] == 11
    assert_series(s, counters, {"g10": _lo_labels(10)})
    assert s.value("nflogd_group_bound", group="10") == 1

    # Fixing the file and reloading again succeeds.
    d.write_config("groups:\n  - group: 10\n    timeout: 0.2\n")
    d.send(signal.SIGHUP)
    s = d.wait_for(lambda s: s.value("nflogd_config_last_reload_successful") == 1
                   and s.value("nflogd_config_last_reload_success_timestamp_seconds") > loaded_at)
    assert s.value("nflogd_config_last_reload_successful") == 1
    assert s.value("nflogd_config_last_reload_success_timestamp_seconds") > loaded_at


# --- 4. max_series overflow -------------------------------------------------------------------

def _p_rules(ns: Netns, ks: Sequence[int], group: Callable[[int], int] = lambda k: 10) -> None:
    """One rule per k: UDP to port 6000 + k, logged with prefix "p<k>" to group(k), counted."""
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0;\n"
           + "\n".join(f'udp dport {6000 + k} counter log prefix "p{k}" group {group(k)} '
                       f'comment "p{k}"' for k in ks) + "\n }\n}\n")


def assert_never_dips(name: str, seen: Sequence[float]) -> None:
    """A counter read at each scrape never went down (a dip is a reset to Prometheus)."""
    dips = [(i, a, b) for i, (a, b) in enumerate(zip(seen, seen[1:])) if b < a]
    assert not dips, f"{name}: {len(dips)} of {len(seen)} scrapes went down: {dips[:5]}"


def test_max_series_overflow_counts_everything(make_netns, start_daemon) -> None:
    ns = make_netns("ovf")
    _p_rules(ns, range(1, 6))
    d = start_daemon(ns, "max_series: 2\ngroups:\n  - group: 10\n    timeout: 0.2\n")
    # p1 and p2 first, so they are the two label sets that fit.
    ns.send_udp("127.0.0.1", 6001, 3, 11)
    ns.send_udp("127.0.0.1", 6002, 4, 22)
    wait_counted(d, ns, [10], ["p1", "p2"])
    for k in (3, 4, 5):
        ns.send_udp("127.0.0.1", 6000 + k, k + 2, 10 * k)
    ns.send_udp("127.0.0.1", 6001, 2, 11)  # an admitted label set keeps counting in its series
    comments = [f"p{k}" for k in range(1, 6)]
    s, counters = wait_counted(d, ns, [10], comments)

    assert_series(s, counters, {"p1": _lo_p(1), "p2": _lo_p(2)})
    overflow = {"group": "10", "prefix": OVER, "indev": OVER, "outdev": OVER, "uid": OVER}
    beyond = [counters[f"p{k}"] for k in (3, 4, 5)]
    assert s.value(PACKETS, **overflow) == sum(p for p, _ in beyond)
    assert s.value(BYTES, **overflow) == sum(b for _, b in beyond)
    assert len(s.series(PACKETS)) == 3 and len(s.series(BYTES)) == 3  # 2 normal + overflow
    assert s.value("nflogd_series_overflow_records_total") == sum(p for p, _ in beyond)
    assert s.value("nflogd_series") == 2
    assert s.value("nflogd_series_limit") == 2
    assert s.total(PACKETS) == sum(counters[c][0] for c in comments)
    assert s.total(BYTES) == sum(counters[c][1] for c in comments)
    assert s.value("nflogd_messages_received_total", group="10") == s.total(PACKETS)
    promtool_check(s.text)


def _lo_p(k: int) -> dict[str, str]:
    return labels(10, f"p{k}", outdev="lo", uid="0")


def test_removed_group_gives_its_series_back_to_max_series(make_netns, start_daemon) -> None:
    ns = make_netns("budget")
    _p_rules(ns, range(4), lambda k: 10 + k // 2)
    d = start_daemon(ns, "max_series: 2\ngroups:\n  - {group: 10, timeout: 0.2}\n")
    ns.send_udp("127.0.0.1", 6000, 3, 10)
    ns.send_udp("127.0.0.1", 6001, 4, 10)
    s, _ = wait_counted(d, ns, [10], ["p0", "p1"])
    assert s.value("nflogd_series") == 2
    d.write_config("max_series: 2\ngroups:\n  - {group: 11, timeout: 0.2}\n")
    d.send(signal.SIGHUP)
    d.wait_for(lambda s: bool(s.series("nflogd_group_bound", group="11")))
    ns.send_udp("127.0.0.1", 6002, 5, 10)
    ns.send_udp("127.0.0.1", 6003, 6, 10)
    s, counters = wait_counted(d, ns, [11], ["p2", "p3"])
    # Group 10's two label sets left with it: group 11's two fit, nothing overflows.
    assert_series(s, counters, {f"p{k}": labels(11, f"p{k}", outdev="lo", uid="0")
                                for k in (2, 3)})
    assert s.series(PACKETS, prefix=OVER) == []
    assert s.value("nflogd_series") == 2
    assert s.value("nflogd_series_overflow_records_total") == 0


def test_overflow_total_never_dips_while_groups_are_removed(make_netns, start_daemon) -> None:
    """A scrape while a reload removes a group sees that group's remainder records in the group
    or in the total of removed groups, never in neither: a counter that dips is a reset to
    Prometheus, and rate() would show a burst that never was."""
    ns = make_netns("dip")
    _p_rules(ns, range(3))
    both = "max_series: 1\ngroups:\n  - {group: 10, timeout: 0.1}\n  - {group: 11, timeout: 0.1}\n"
    d = start_daemon(ns, both, switch_interval=1e-6)
    seen: list[float] = []
    stop = threading.Event()

    def scrape_all_the_time() -> None:
        while not stop.is_set():
            seen.append(d.scrape().value("nflogd_series_overflow_records_total"))

    scraper = threading.Thread(target=scrape_all_the_time)
    scraper.start()
    try:
        overflow = 0.0
        for _ in range(8):
            d.write_config(both)
            d.send(signal.SIGHUP)
            d.wait_for(lambda s: bool(s.series("nflogd_group_bound", group="10"))
                       and s.value("nflogd_group_bound", group="10") == 1)
            for k in range(3):  # one label set fits max_series, the others overflow
                ns.send_udp("127.0.0.1", 6000 + k, 2, 10)
            s = d.wait_for(lambda s: s.value("nflogd_series_overflow_records_total")
                           >= overflow + 4)
            overflow = s.value("nflogd_series_overflow_records_total")
            d.write_config("max_series: 1\ngroups:\n  - {group: 11, timeout: 0.1}\n")
            d.send(signal.SIGHUP)
            d.wait_for(lambda s: not s.series("nflogd_group_bound", group="10"))
    finally:
        stop.set()
        scraper.join()
    assert_never_dips("nflogd_series_overflow_records_total", seen)
    assert d.scrape().value("nflogd_series_overflow_records_total") == overflow


def test_series_counters_never_reset_when_a_reload_replaces_the_aggregator(
        make_netns, start_daemon) -> None:
    """Another address_mask makes the worker replace its aggregator. The churn counters
    (nflogd_series_admitted_total, the overflow records) are counters: they carry on from what
    the old one counted, where they once started again from 0 (a dip, read as a reset)."""
    ns = make_netns("swap")
    _p_rules(ns, range(3))
    config = ("max_series: 1\nlabels: [group, prefix, saddr]\naddress_mask: {{ipv4: {}}}\n"
              "groups:\n  - {{group: 10, timeout: 0.1}}\n")
    d = start_daemon(ns, config.format(32))
    for k in range(3):  # p0 takes the one series, p1 and p2 overflow
        ns.send_udp("127.0.0.1", 6000 + k, 2, 10)
    before = d.wait_for(lambda s: s.value("nflogd_series_overflow_records_total") == 4)
    assert before.value("nflogd_series_admitted_total", group="10") == 1
    d.write_config(config.format(24))
    d.send(signal.SIGHUP)
    # The worker replaces its aggregator at its next turn; until then p1 still overflows in the
    # old one. The new one starts empty: p1 gets the series the old one gave back.
    sent, deadline = 0, time.monotonic() + 10
    while not (s := d.scrape()).series(PACKETS, saddr="127.0.0.0/24"):
        assert time.monotonic() < deadline, "no series under the new address_mask"
        ns.send_udp("127.0.0.1", 6001, 1, 10)
        sent += 1
        time.sleep(0.2)
    s = d.wait_for(lambda s: s.total(PACKETS) == sum(p for p, _ in ns.counters().values()))
    [(series, in_new)] = s.series(PACKETS, saddr="127.0.0.0/24")
    assert series == {"group": "10", "prefix": "p1", "saddr": "127.0.0.0/24"}
    assert s.value("nflogd_series_admitted_total", group="10") == 2
    assert s.value("nflogd_series_overflow_records_total") == 4 + sent - in_new
    assert ns.counters()["p1"][0] == 2 + sent


def test_reload_storm_of_new_tables_and_groups_keeps_every_counter_monotone(
        make_netns, start_daemon) -> None:
    """Reloads in quick succession, each replacing the aggregators (another address_mask and
    networks) and adding or removing a group, records all along, a scrape without pause, the
    daemon's threads switching every 10 us: no scrape fails, no counter of a group that stays
    goes down, and what group 10 exported equals its nft counters at the end."""
    ns = make_netns("storm")
    _p_rules(ns, range(4), lambda k: 10 + k % 2)
    configs = [("max_series: 2\nlabels: [group, prefix, saddr, dport]\n"
                f"address_mask: {{ipv4: {mask}}}\nnetworks: [{{name: lo, cidr: 127.0.0.0/{mask}}}]\n"
                "groups:\n  - {group: 10, timeout: 0.05}\n"
                + ("  - {group: 11, timeout: 0.05}\n" if both else ""))
               for mask in (32, 24, 16) for both in (True, False)]
    d = start_daemon(ns, configs[0], switch_interval=1e-5)
    counters: dict[str, list[float]] = {}
    failed: list[AssertionError] = []
    stop = threading.Event()

    def scrape_all_the_time() -> None:
        while not stop.is_set():
            try:
                s = d.scrape()  # asserts a 200
            except AssertionError as e:
                failed.append(e)
                return
            for name, value in (
                    ("overflow records", s.value("nflogd_series_overflow_records_total")),
                    ("group 10 packets", s.total(PACKETS, group="10")),
                    ("group 10 admitted", s.value("nflogd_series_admitted_total", group="10")),
                    ("group 10 received", s.value("nflogd_messages_received_total", group="10"))):
                counters.setdefault(name, []).append(value)

    scraper = threading.Thread(target=scrape_all_the_time)
    scraper.start()
    try:
        for i in range(30):
            d.write_config(configs[i % len(configs)])
            d.send(signal.SIGHUP)
            for k in range(4):
                ns.send_udp("127.0.0.1", 6000 + k, 1, 10)
            time.sleep(0.05)
        nft = ns.counters()
        s = d.wait_for(lambda s: s.total(PACKETS, group="10") == nft["p0"][0] + nft["p2"][0])
    finally:
        stop.set()
        scraper.join()
    assert not failed, failed[0]
    for name, seen in counters.items():
        assert_never_dips(name, seen)
    assert s.total(BYTES, group="10") == nft["p0"][1] + nft["p2"][1]
    assert s.value("nflogd_messages_lost_total", group="10") == 0


# --- 5. interfaces renamed, deleted, re-created -----------------------------------------------

def test_renamed_deleted_recreated_interface(make_netns, start_daemon) -> None:
    ns, peer = make_netns("ren"), make_netns("renp")
    veth_pair(ns, peer, "vA", "vpeer", "10.3.0.1", "10.3.0.2")
    # The rule does not name the interface: it must keep matching across renames.
    ns.nft('table inet t {\n chain out {\n type filter hook output priority 0;\n'
           'ip daddr 10.3.0.2 udp dport 5000 counter log prefix "out" group 10 comment "out"\n'
           ' }\n}\n')
    d = start_daemon(ns, "groups:\n  - group: 10\n    timeout: 0.2\n")
    ns.send_udp("10.3.0.2", 5000, 5, 10)
    s, counters = wait_counted(d, ns, [10], ["out"])
    assert_series(s, counters, {"out": labels(10, "out", outdev="vA", uid="0")})

    ns.ip("link", "set", "vA", "down")
    ns.ip("link", "set", "vA", "name", "vB")
    ns.ip("link", "set", "vB", "up")
    ns.send_udp("10.3.0.2", 5000, 6, 20)
    s, counters = wait_counted(d, ns, [10], ["out"])
    # The same ifindex, so the same series, now under the new name; the old name is gone.
    assert counters["out"][0] == 11
    assert_series(s, counters, {"out": labels(10, "out", outdev="vB", uid="0")})
    assert s.series(PACKETS, outdev="vA") == []

    # Deleted: the series keeps the last name, and the scrape still works.
    ns.ip("link", "del", "vB")
    s = d.scrape()
    assert_series(s, counters, {"out": labels(10, "out", outdev="vB", uid="0")})
    # Re-created under the same name (a new ifindex): still one series per label set.
    veth_pair(ns, peer, "vB", "vpeer2", "10.3.0.1", "10.3.0.2")
    ns.send_udp("10.3.0.2", 5000, 7, 30)
    s, counters = wait_counted(d, ns, [10], ["out"])
    assert counters["out"][0] == 18
    assert_series(s, counters, {"out": labels(10, "out", outdev="vB", uid="0")})
    assert len(s.series(PACKETS)) == 1
    # And renaming the new one splits them: the deleted interface keeps "vB".
    ns.ip("link", "set", "vB", "down")
    ns.ip("link", "set", "vB", "name", "vC")
    ns.ip("link", "set", "vC", "up")
    s = d.scrape()
    assert s.value(PACKETS, **labels(10, "out", outdev="vB", uid="0")) == 11
    assert s.value(PACKETS, **labels(10, "out", outdev="vC", uid="0")) == 7
    promtool_check(s.text)


# --- 6. a group taken by another process ------------------------------------------------------

def _hold_group(ns: Netns, group: int) -> subprocess.Popen:
    script = (f"from nflogd import nflog; h = nflog.open({group}); print('bound', flush=True); "
              "import time; time.sleep(60)")
    holder = ns.popen([VENV_PYTHON, "-c", script], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"bound\n", "holder failed"
    return holder


def test_group_taken_at_start(make_netns, start_daemon) -> None:
    ns = make_netns("taken")
    holder = _hold_group(ns, 7)
    try:
        # Only that group: a clear error naming it, exit 1.
        d = start_daemon(ns, "groups:\n  - group: 7\n", wait=False)
        rc = d.proc.wait(10)
        err = d.stderr()
        assert rc == 1, err
        lines = [line for line in err.splitlines() if "no NFLOG group could be bound" in line]
        assert len(lines) == 1, err
        assert re.search(r"\bgroup 7\b", lines[0]) and "taken" in lines[0], lines[0]
        assert "/proc/net/netfilter/nfnetlink_log" in lines[0], lines[0]

        # With a free group too: it starts, and says which one is bound.
        _lo_rules(ns, (7, 8))
        d = start_daemon(ns, "groups:\n  - group: 7\n    timeout: 0.2\n"
                             "  - group: 8\n    timeout: 0.2\n")
        s = d.scrape()
        assert s.value("nflogd_group_bound", group="7") == 0
        assert s.value("nflogd_group_bound", group="8") == 1
        assert re.search(r"group 7\b.*taken", d.stderr()), d.stderr()
        ns.send_udp("127.0.0.1", 5008, 3, 10)
        s, counters = wait_counted(d, ns, [8], ["g8"])
        assert_series(s, counters, {"g8": _lo_labels(8)})
    finally:
        holder.kill()
        holder.wait()
    # Once the other process lets go, the retry (with backoff) binds it.
    s = d.wait_for(lambda s: s.value("nflogd_group_bound", group="7") == 1, timeout=10)
    assert s.value("nflogd_group_bound", group="7") == 1, d.stderr()
    ns.send_udp("127.0.0.1", 5007, 4, 10)
    s, counters = wait_counted(d, ns, [7], ["g7"])
    assert_series(s, counters, {"g7": _lo_labels(7)})


# --- 7. SIGTERM / SIGINT ----------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_within_2_seconds(make_netns, start_daemon, sig) -> None:
    ns = make_netns("stop")
    _lo_rules(ns, (10, 11))
    d = start_daemon(ns, "groups:\n  - group: 10\n  - group: 11\n")
    ns.send_udp("127.0.0.1", 5010, 50, 10)
    ns.send_udp("127.0.0.1", 5011, 50, 10)
    d.scrape()
    assert bound_groups(ns) == {10, 11}
    rc, seconds = d.stop(sig)
    print(f"\n{signal.Signals(sig).name}: exit {rc} after {seconds:.3f} s")
    assert rc == 0, d.stderr()
    assert seconds < 2.0, f"took {seconds:.2f} s"
    assert bound_groups(ns) == set()  # both groups unbound
    assert "Traceback" not in d.stderr(), d.stderr()


# --- 8 (start-up side). a bad config starts nothing ---------------------------------------------

def test_bad_config_at_start_exits_2_and_binds_nothing(make_netns, start_daemon) -> None:
    ns = make_netns("badstart")
    d = start_daemon(ns, "groups:\n  - group: 10\n  - group: 10\n", wait=False)
    rc = d.proc.wait(10)
    err = d.stderr().strip()
    assert rc == 2, err
    # Line 1 is the listen address the fixture adds; the second "group: 10" is on line 4.
    assert len(err.splitlines()) == 1 and err.startswith(f"nflogd: {d.config_path}:4:"), err
    assert "listed twice" in err, err
    assert bound_groups(ns) == set()


# --- 9. odd bytes in prefixes and interface names ---------------------------------------------

ODD_PREFIXES = {
    # rule comment: the prefix bytes the kernel gets
    "quote-backslash-newline": b'nl\nx"q\\z',
    "utf8-punctuation": "caf\u00e9 {}=,'#".encode(),
    "backslash-x-text": b"lit\\x41",
    "non-utf8": b"x\xff\xfez",
}


def test_odd_bytes_in_prefix_and_interface_name(make_netns, start_daemon) -> None:
    ns, peer = make_netns("odd"), make_netns("oddp")
    veth_pair(ns, peer, "vodd", "vpeer", "10.4.0.1", "10.4.0.2")
    odd_dev = os.fsdecode(b'v\xff"\\q{')  # Linux allows any bytes but '/', ':' and spaces
    ns.ip("link", "set", "vodd", "down")
    ns.ip("link", "set", "vodd", "name", odd_dev)
    ns.ip("link", "set", odd_dev, "up")

    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0;\n }\n}\n")
    for k, (comment, prefix) in enumerate(ODD_PREFIXES.items()):
        try:
            text = prefix.decode("utf-8")
        except UnicodeDecodeError:
            # nft's text syntax passes raw bytes through (no escapes, so no quote or backslash).
            assert b'"' not in prefix and b"\\" not in prefix
            ns.run("nft", "-f", "-", input=b"add rule inet t out udp dport %d counter log prefix "
                   b'"%s" group 10 comment "%s"\n' % (7000 + k, prefix, comment.encode()))
            continue
        # nft's JSON input takes quotes, backslashes and newlines in a prefix.
        ns.run("nft", "-j", "-f", "-", input=json.dumps({"nftables": [{"add": {"rule": {
            "family": "inet", "table": "t", "chain": "out", "comment": comment,
            "expr": [{"match": {"op": "==", "right": 7000 + k,
                                "left": {"payload": {"protocol": "udp", "field": "dport"}}}},
                     {"counter": None}, {"log": {"prefix": text, "group": 10}}]}}}]}))
    ns.nft('add rule inet t out ip daddr 10.4.0.2 udp dport 7100 counter log prefix "dev" '
           'group 10 comment "dev"\n')
    d = start_daemon(ns, "groups:\n  - group: 10\n    timeout: 0.2\n")
    for k in range(len(ODD_PREFIXES)):
        ns.send_udp("127.0.0.1", 7000 + k, 2 + k, 10 + k)
    ns.send_udp("10.4.0.2", 7100, 3, 10)

    s, counters = wait_counted(d, ns, [10], [*ODD_PREFIXES, "dev"])
    # Non-UTF-8 bytes become \xNN; everything else comes back exactly as the rule wrote it.
    expected = {c: labels(10, p.decode("utf-8", "backslashreplace"), outdev="lo", uid="0")
                for c, p in ODD_PREFIXES.items()}
    expected["dev"] = labels(10, "dev", outdev='v\\xff"\\q{', uid="0")
    assert expected["quote-backslash-newline"]["prefix"] == 'nl\nx"q\\z'
    assert expected["non-utf8"]["prefix"] == "x\\xff\\xfez"
    assert_series(s, counters, expected)
    assert len(s.series(PACKETS)) == len(expected)
    promtool_check(s.text)


# --- 10. no config file at all ----------------------------------------------------------------

def test_no_config_file_runs_on_builtin_defaults(make_netns, start_daemon) -> None:
    ns = make_netns("defaults")
    _lo_rules(ns, (0,))
    # Hide a host's /etc/nflogd (if any) in the private mount namespace `ip netns exec` makes,
    # so the built-in defaults are what runs; then nflogd with no arguments at all.
    argv = ["sh", "-c", "if [ -d /etc/nflogd ]; then mount -t tmpfs none /etc/nflogd || exit 99;"
            f' fi; exec "{NFLOGD}"']
    d = start_daemon(ns, None, argv=argv, port=10040)
    ns.send_udp("127.0.0.1", 5000, 6, 10)
    s, counters = wait_counted(d, ns, [0], ["g0"])
    assert_series(s, counters, {"g0": _lo_labels(0)})
    assert s.value("nflogd_group_bound", group="0") == 1
    assert s.value("nflogd_series_limit") == 10000
    assert [lb["group"] for lb, _ in s.series("nflogd_group_bound")] == ["0"]
    # ":10040" is every address: IPv6 too, when the namespace has it.
    out = ns.run("ss", "-Hltn", "sport = :10040").stdout.decode()
    assert re.search(r"(\*|\[::\]|0\.0\.0\.0):10040", out), out

