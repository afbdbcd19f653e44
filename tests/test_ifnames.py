"""The interface-name cache under churn: thousands of interfaces come and go, memory does not stay.

The kernel gives every new interface a new index, so a cache that remembers every index it ever
saw grows for good (5000 interfaces churned: +0.9 MB that never came back). Only names that a
series used outlive their interface, and at most KEEP_DELETED of those.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from conftest import RunningDaemon
from netns import Netns

from nflogd.ifnames import InterfaceNames


GROUP = 7  # interface group of the churned ones: deleted in one go (one by one takes 20 ms each)


def add(ns: Netns, count: int, tag: str) -> None:
    """Create `count` ifb interfaces (no module to load, unlike dummy) in one ip -batch run."""
    ns.run("ip", "-batch", "-", input="".join(
        f"link add {tag}{i} type ifb\nlink set dev {tag}{i} group {GROUP}\n"
        for i in range(count)), timeout=120)


def delete(ns: Netns) -> None:
    ns.run("ip", "link", "del", "group", str(GROUP))


def live_indexes(ns: Netns) -> dict[int, str]:
    with ns.entered():
        return dict(socket.if_nameindex())


def test_deleted_interfaces_are_forgotten_unless_a_series_named_them(make_netns) -> None:
    ns = make_netns("ifn")
    names = InterfaceNames(keep_deleted=100)
    with ns.entered():
        names.refresh()
    base = len(names)  # lo
    add(ns, 300, "d")
    with ns.entered():
        names.refresh()
    assert len(names) == base + 300
    live = live_indexes(ns)
    used = sorted(i for i, n in live.items() if n.startswith("d"))[:150]  # series named these
    for i in used:
        assert names.name(i) == live[i]
    delete(ns)
    with ns.entered():
        assert names.refresh()  # the 50 dropped beyond keep_deleted change what series show
    assert len(names) == base + 100, "only 100 of the deleted names a series used are kept"
    kept = [i for i in used if not names.name(i).startswith("ifindex:")]
    assert kept == used[50:], "the longest-deleted are forgotten first"
    assert all(names.name(i) == live[i] for i in kept)


def test_5000_interfaces_churned_leave_nothing_behind(make_netns) -> None:
    ns = make_netns("ifn5k")
    names = InterfaceNames()
    with ns.entered():
        names.refresh()
    base = len(names)
    for round_ in range(2):
        add(ns, 5000, f"c{round_}x")
        with ns.entered():
            names.refresh()
        assert len(names) == base + 5000
        delete(ns)
        with ns.entered():
            names.refresh()
        assert len(names) == base, f"round {round_}: {len(names) - base} names of deleted " \
                                   "interfaces stayed, though no series named them"


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))


def test_daemon_memory_stays_flat_while_interfaces_churn(make_netns, start_daemon) -> None:
    """Three rounds of 3000 interfaces, scraped while they exist: the daemon's RSS after the third
    round is within 400 KiB of the first (a cache of every index grew 0.9 MB per 5000)."""
    ns = make_netns("ifnd")
    d: RunningDaemon = start_daemon(ns, "groups:\n  - group: 60\n")
    rss = []
    for round_ in range(3):
        add(ns, 3000, f"r{round_}x")
        d.scrape()
        d.scrape()
        delete(ns)
        d.scrape()
        time.sleep(0.1)
        d.scrape()
        rss.append(_rss_kib(d.proc.pid))
    print(f"\nRSS after each round (KiB): {rss}")
    assert rss[2] - rss[0] < 400, f"RSS grew {rss[2] - rss[0]} KiB over two rounds: {rss}"
