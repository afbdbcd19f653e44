"""The series budget against the real kernel and the real daemon: expiry, displacement under a
random flood, relabelling during a flood, memory over a long flood.

The many-valued label is `mark`, set by nft from `numgen inc` (a new value for every packet, like
a random-source scan) until nflogd has address labels; a steady source gets a fixed mark. Every
scrape is checked: no series ever decreases while it exists, the remainder (`__overflow__`)
never decreases, the group's sum never exceeds the nft counter, and once the kernel has delivered
everything the sum equals the nft counter exactly.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

import pytest
from conftest import RunningDaemon, Scrape, promtool_check
from netns import SYSTEM_PYTHON, Netns, require_root
from nflog_support import aggregate_until, open_in

from nflogd import nflog

PACKETS = "nflog_packets_total"
BYTES = "nflog_bytes_total"
OVER = "__overflow__"

# One Python process sends `n` datagrams to port A (stopping early after `seconds`, if given)
# and one to port B after every `every` to A: the steady source is 1/(every+1) of the records.
_SENDER = (
    "import socket,sys,time\n"
    "n,every,pa,pb=map(int,sys.argv[1:5])\n"
    "end=time.monotonic()+float(sys.argv[5]) if len(sys.argv)>5 else None\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "for i in range(n):\n"
    "    s.sendto(b'x'*20,('127.0.0.1',pa))\n"
    "    if every and i%every==every-1: s.sendto(b'y'*20,('127.0.0.1',pb))\n"
    "    if end and i%1000==0 and time.monotonic()>end: break\n"
)


def send_mix(ns: Netns, flood: int, every: int, flood_port: int = 6001,
             steady_port: int = 6000) -> None:
    assert 0 < flood <= 1_000_000, "bounded load only"
    ns.run(SYSTEM_PYTHON, "-c", _SENDER, str(flood), str(every), str(flood_port),
           str(steady_port), timeout=120)


def flood_rules(ns: Netns, group: int = 10) -> None:
    # marks: the steady source 4000000000; the flood a new value per packet, from 1.
    ns.nft(f"""
        table inet t {{
          chain out {{
            type filter hook output priority 0;
            udp dport 6000 meta mark set 4000000000 counter log group {group} comment "steady"
            udp dport 6001 meta mark set numgen inc mod 1000000000 offset 1 \
                counter log group {group} comment "flood"
            udp dport 6002 meta mark set 1 counter log group {group} comment "m1"
            udp dport 6003 meta mark set 2 counter log group {group} comment "m2"
            udp dport 6004 meta mark set 3 counter log group {group} comment "m3"
            udp dport 6005 meta mark set 4000000000 counter log group {group + 1} comment "steady11"
          }}
        }}
        """)


GROUP10_RULES = ("steady", "flood", "m1", "m2", "m3")


def nft_total(ns: Netns, rules: tuple[str, ...] = GROUP10_RULES) -> tuple[int, int]:
    c = ns.counters()
    return sum(c[r][0] for r in rules), sum(c[r][1] for r in rules)


class Monotone:
    """Checks every scrape: a series present in two scrapes in a row never decreases; the group's
    sum never decreases and never exceeds what nft logged before the scrape ended."""

    def __init__(self, group: str = "10", rules: tuple[str, ...] = GROUP10_RULES) -> None:
        self.group = group
        self.rules = rules
        self.last: dict[frozenset, float] = {}
        self.last_sum = 0.0
        self.scrapes = 0

    def check(self, d: RunningDaemon, ns: Netns) -> tuple[Scrape, float, int]:
        s = d.scrape()
        logged, _ = nft_total(ns, self.rules)  # after the scrape: an upper bound of what it could contain
        now = {}
        for metric in (PACKETS, BYTES):
            for labels, v in s.series(metric, group=self.group):
                key = frozenset({**labels, "__name__": metric}.items())
                now[key] = v
                prev = self.last.get(key)
                assert prev is None or v >= prev, f"{metric}{labels} went down: {prev} -> {v}"
        total = s.total(PACKETS, group=self.group)
        assert self.last_sum <= total <= logged, (self.last_sum, total, logged)
        self.last, self.last_sum = now, total
        self.scrapes += 1
        return s, total, logged

    def settle(self, d: RunningDaemon, ns: Netns, timeout: float = 10.0) -> Scrape:
        """Scrape (checking each) until the sum equals the nft counter; assert it does, exactly,
        packets and bytes (bytes: the IP total length nft counts too)."""
        want = nft_total(ns, self.rules)
        deadline = time.monotonic() + timeout
        while True:
            s, total, _ = self.check(d, ns)
            lost = s.value("nflogd_messages_lost_total", group=self.group)
            if total + lost >= want[0] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert lost == 0, f"the kernel lost {lost} records: the test's flood is too fast here"
        assert (total, s.total(BYTES, group=self.group)) == want, \
            f"nflogd counted {total} packets, {s.total(BYTES, group=self.group)} bytes; nft {want}"
        return s


def mark_value(s: Scrape, mark: str) -> float:
    return s.total(PACKETS, group="10", mark=mark)


def test_idle_series_expire_into_the_remainder_and_the_sum_stays_exact(make_netns,
                                                                       start_daemon) -> None:
    ns = make_netns("ttl")
    flood_rules(ns)
    d = start_daemon(ns, "labels: [group, mark]\nseries_ttl: 3s\n"
                         "groups:\n  - {group: 10, timeout: 0.1}\n")
    mono = Monotone()
    for port, n in ((6002, 5), (6003, 7), (6004, 9)):
        ns.send_udp("127.0.0.1", port, n, 20)
    start = time.monotonic()  # their last records were logged before this
    s = mono.settle(d, ns)
    s0_reload = s.value("nflogd_config_last_reload_success_timestamp_seconds")
    assert [mark_value(s, m) for m in ("1", "2", "3")] == [5, 7, 9]
    assert mark_value(s, OVER) == 0
    # mark 1 stays busy; 2 and 3 fall silent: gone more than 3 s later, within 2.5 s after that
    # (whole-second clock, a sweep a second, the worker's 0.5 s wait), plus slack for scraping.
    gone_at = None
    while time.monotonic() - start < 12:
        ns.send_udp("127.0.0.1", 6002, 1, 20)
        s = mono.settle(d, ns)
        if mark_value(s, "2") == 0 and mark_value(s, "3") == 0:
            gone_at = time.monotonic() - start
            break
        time.sleep(0.3)
    assert gone_at is not None, "idle series did not expire"
    assert 3.0 < gone_at <= 7.0, f"expired after {gone_at:.1f} s for a ttl of 3 s"
    assert mark_value(s, OVER) == 16, "their counts are in the remainder"
    assert s.value("nflogd_series_expired_total", group="10") == 2
    assert mark_value(s, "1") == ns.counters()["m1"][0], "the busy series stays whole"
    # A returning label set starts from its return; what came before stays in the remainder.
    ns.send_udp("127.0.0.1", 6003, 4, 20)
    s = mono.settle(d, ns)
    assert mark_value(s, "2") == 4 and mark_value(s, OVER) == 16
    assert s.value("nflogd_series_admitted_total", group="10") == 4
    # A reload to series_ttl 0 applies to the series that exist: none expires any more.
    d.write_config("labels: [group, mark]\nseries_ttl: 0\ngroups:\n  - {group: 10, timeout: 0.1}\n")
    d.send(signal.SIGHUP)
    d.wait_for(lambda s: s.value("nflogd_config_last_reload_success_timestamp_seconds")
               > s0_reload)
    time.sleep(5)
    s = mono.settle(d, ns)
    assert mark_value(s, "2") == 4 and s.value("nflogd_series_expired_total", group="10") == 2
    print(f"expired after {gone_at:.1f} s (ttl 3 s), {mono.scrapes} scrapes checked")


@pytest.mark.parametrize("steady_group", [10, 11])
def test_a_steady_source_gets_its_series_under_a_random_flood(make_netns, start_daemon,
                                                              steady_group: int) -> None:
    """max_series 50; a flood of new marks (one packet each) into group 10 fills it at once; a
    steady source of 2 % of the records starts right after, in group 10 or in group 11 (which
    shares max_series and has no series of its own to give up). Once the flood's series are
    20 s old (the minimum residency), the steady source displaces one: README promises 30 s."""
    ns = make_netns("displace")
    flood_rules(ns)
    d = start_daemon(ns, "labels: [group, mark]\nmax_series: 50\n"
                         "groups:\n  - {group: 10, timeout: 0.1}\n  - {group: 11, timeout: 0.1}\n")
    steady_rule, steady_port = ("steady", 6000) if steady_group == 10 else ("steady11", 6005)
    monos = [Monotone()] + ([Monotone("11", ("steady11",))] if steady_group == 11 else [])
    send_mix(ns, 4900, 0)  # the flood fills the budget first
    s = monos[0].settle(d, ns)
    assert s.value("nflogd_series") == 50
    start = time.monotonic()
    admitted_at = None
    base: tuple[float, int] | None = None
    flood_sent = 4900
    rounds_after = 0
    while time.monotonic() - start < 60 and rounds_after < 5:
        send_mix(ns, 4900, 49, steady_port=steady_port)  # 4900 flood + 100 steady
        flood_sent += 4900
        for mono in monos:
            s = mono.settle(d, ns)
        steady = s.total(PACKETS, group=str(steady_group), mark="4000000000")
        nft_steady = ns.counters()[steady_rule][0]
        assert steady <= nft_steady
        if steady and admitted_at is None:
            admitted_at = time.monotonic() - start
            base = (steady, nft_steady)
        elif admitted_at is not None:
            assert base is not None
            # From its admission on, its series counts every one of its records.
            assert steady - base[0] == nft_steady - base[1], (steady, nft_steady, base)
            rounds_after += 1
        assert s.value("nflogd_series") <= 50
    assert admitted_at is not None, f"the steady source got no series in 60 s ({flood_sent} " \
        "flood records)"
    assert admitted_at <= 45, f"admitted after {admitted_at:.1f} s"
    displaced = s.value("nflogd_series_displaced_total", group="10")  # the flood's group
    admitted = s.total("nflogd_series_admitted_total")
    # The flood itself never displaces: its label sets are not heavier than the sketch's noise.
    assert 1 <= displaced <= 3, displaced
    assert s.value("nflogd_series_displaced_total", group="11") == 0
    assert admitted == 50 + displaced and s.value("nflogd_series") == 50
    assert s.value("nflogd_series_overflow_records_total") > 0.9 * flood_sent - 50
    promtool_check(s.text)
    print(f"steady source in group {steady_group} admitted after {admitted_at:.1f} s; "
          f"{flood_sent} flood records, {displaced:.0f} displaced, "
          f"{sum(m.scrapes for m in monos)} scrapes checked")


LABEL_SETS = ("[group, mark]", "[group, proto]", "[group, hook]", "[group, family]",
              "[group, outdev]", "[group, uid]", "[group, prefix]", "[group, indev]")


def reload_through_during_a_flood(ns: Netns, start_daemon, configs: Sequence[str]) -> Scrape:
    """Start on configs[0], reload to each next one while a flood runs, checking every scrape
    (no series and no sum goes down); at the end the sum equals the nft counter exactly."""
    flood_rules(ns)
    d = start_daemon(ns, configs[0])
    mono = Monotone()
    sender = ns.popen([SYSTEM_PYTHON, "-c", _SENDER, "3000000", "9", "6001", "6002", "10"])
    try:
        for text in configs[1:]:
            time.sleep(0.3)
            d.write_config(text)
            d.send(signal.SIGHUP)
            for _ in range(4):
                mono.check(d, ns)
                time.sleep(0.05)
            assert sender.poll() is None, "the flood ended before the reloads did: make it longer"
    finally:
        sender.wait(120)
    s = mono.settle(d, ns)
    assert s.value("nflogd_config_last_reload_successful") == 1
    print(f"{len(configs) - 1} reloads during {nft_total(ns)[0]} records, "
          f"{mono.scrapes} scrapes checked")
    return s


def test_relabelling_during_a_flood_loses_nothing(make_netns, start_daemon) -> None:
    """Issue 9.5: a reload that changes labels while records pour in. Every record is in exactly
    one exported series at every scrape; at the end the sum equals the nft counter exactly."""
    s = reload_through_during_a_flood(make_netns("relabelflood"), start_daemon, [
        f"labels: {labels}\nmax_series: 500\ngroups:\n  - {{group: 10, timeout: 0.1}}\n"
        for labels in LABEL_SETS])
    assert {tuple(sorted(labels)) for labels, _ in s.series(PACKETS)} == {("group", "indev")}


def test_reloads_changing_address_mask_and_networks_during_a_flood_lose_nothing(
        make_netns, start_daemon) -> None:
    """The same fields keyed another way (another address_mask, other networks) need a new
    aggregator: what the old one counted goes on in the new one's remainder, so every scrape's
    sum only grows and the final sum is the nft counter exactly."""
    nets = ("networks:\n  - {name: lo, cidr: 127.0.0.0/8}\n",
            "networks:\n  - {name: host, cidr: 127.0.0.1/32}\n")
    base = ("labels: [group, saddr, src_net]\nmax_series: 500\n"
            "groups:\n  - {group: 10, timeout: 0.1}\n")
    s = reload_through_during_a_flood(make_netns("maskflood"), start_daemon, [
        base + f"address_mask: {{ipv4: {mask}}}\n{nets[n]}"
        for mask, n in ((32, 0), (24, 0), (24, 1), (8, 1), (16, 0))])
    assert ("127.0.0.0/16", "lo") in {(lb["saddr"], lb["src_net"]) for lb, _ in s.series(PACKETS)}


def test_a_storm_of_relabelling_reloads_during_a_flood_loses_nothing(make_netns,
                                                                    start_daemon) -> None:
    """120 reloads, 20 a second, cycling through label sets (one with the same fields reordered,
    one whose overflow series is the row series itself) while a flood runs: the final sum is
    exactly the nft counter."""
    ns = make_netns("relabelstorm")
    flood_rules(ns)
    sets = ("[group, mark]", "[group, proto]", "[group, mark, proto]", "[group]", "[mark, group]")
    d = start_daemon(ns, f"labels: {sets[0]}\nmax_series: 300\nseries_ttl: 1\n"
                         "groups:\n  - {group: 10, timeout: 0.1}\n")
    mono = Monotone()
    sender = ns.popen([SYSTEM_PYTHON, "-c", _SENDER, "3000000", "7", "6001", "6002", "12"])
    reloads = 0
    try:
        while sender.poll() is None and reloads < 120:
            d.write_config(f"labels: {sets[reloads % len(sets)]}\nmax_series: 300\n"
                           "series_ttl: 1\ngroups:\n  - {group: 10, timeout: 0.1}\n")
            d.send(signal.SIGHUP)
            reloads += 1
            time.sleep(0.05)
            if reloads % 5 == 0:
                d.scrape()  # label sets come back here, so only the final sum is checked
    finally:
        sender.wait(120)
    assert reloads == 120, "the flood ended before the reloads did: make it longer"
    mono.settle(d, ns)
    print(f"{reloads} reloads during {nft_total(ns)[0]} records: sum exact")


def rss_kib(d: RunningDaemon) -> int:
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


ROUNDS = int(os.environ.get("NFLOGD_TEST_MEM_ROUNDS", "24"))


def test_memory_stays_flat_over_a_long_random_flood(make_netns, start_daemon) -> None:
    ns = make_netns("memflood")
    flood_rules(ns)
    d = start_daemon(ns, "labels: [group, mark]\nmax_series: 2000\nseries_ttl: 2\n"
                         "groups:\n  - {group: 10, timeout: 0.1}\n")
    mono = Monotone()
    rss = []
    start = time.monotonic()
    for i in range(ROUNDS):
        send_mix(ns, 50000, 0)
        s = mono.settle(d, ns)
        rss.append(rss_kib(d))
        assert s.value("nflogd_series") <= 2000
    elapsed = time.monotonic() - start
    expired = s.value("nflogd_series_expired_total", group="10")
    admitted = s.value("nflogd_series_admitted_total", group="10")
    displaced = s.value("nflogd_series_displaced_total", group="10")
    assert admitted - expired - displaced == s.value("nflogd_series")
    assert expired >= 2000, "the flood's first series expired"
    # Churn: after the first fill, at most 10 series a second fill the places expiry frees, and
    # at most 10 a second displace (the flood's none).
    assert admitted <= 2000 + 10 * (elapsed + 1), (admitted, elapsed)
    assert displaced == 0
    growth = max(rss[8:]) - rss[7]  # after the label cache has filled once
    assert growth < 3 * 1024, f"RSS grew {growth} KiB over the flood: {rss}"
    print(f"{nft_total(ns)[0]} records in {elapsed:.0f} s: RSS {rss[7]} -> {rss[-1]} KiB "
          f"(max {max(rss)}; {rss}), {admitted:.0f} admitted, {expired:.0f} expired, "
          f"{displaced:.0f} displaced")


# --- the Python face, with records from the real kernel -------------------------------------------

def test_relabel_is_atomic_and_moves_every_count_into_the_remainder(make_netns) -> None:
    require_root()
    ns = make_netns("aggrelabel")
    flood_rules(ns)
    agg = nflog.Aggregator(["group", "mark"], max_keys=100)
    with open_in(ns, 10, copyrange=64) as h:
        for port, n in ((6002, 3), (6003, 4)):
            ns.send_udp("127.0.0.1", port, n, 20)
        aggregate_until(h, agg, 7)
        assert sorted(agg.read()[1]) == [((10, 1), 3, 144), ((10, 2), 4, 192)]
        agg.relabel(["group", "proto"])
        assert agg.read() == (("group", "proto"), [], (7, 336)) and agg.fields == ("group", "proto")
        assert agg.keys == 0 and agg.churn[:3] == (2, 0, 0)
        ns.send_udp("127.0.0.1", 6002, 2, 20)
        aggregate_until(h, agg, 9)
        assert agg.read() == (("group", "proto"), [((10, 17), 2, 96)], (7, 336))
        with pytest.raises(ValueError, match="unknown aggregation field"):
            agg.relabel(["bogus"])
        assert agg.fields == ("group", "proto")
        agg.relabel(["proto", "group"])  # the same fields reordered: the rows stay
        assert agg.read() == (("proto", "group"), [((17, 10), 2, 96)], (7, 336))


def test_expiry_with_a_test_clock(make_netns) -> None:
    require_root()
    ns = make_netns("aggttl")
    flood_rules(ns)
    agg = nflog.Aggregator(["mark"], ttl=5)
    assert agg.policy == {"ttl": 5, "min_residency": 20, "admit_rate": 10, "decay": 10}
    with open_in(ns, 10, copyrange=64) as h:
        agg.tick(now=100)  # from now on the test's clock; aggregate() leaves it alone
        ns.send_udp("127.0.0.1", 6002, 3, 20)
        ns.send_udp("127.0.0.1", 6003, 1, 20)
        aggregate_until(h, agg, 4)
        agg.tick(now=104)
        ns.send_udp("127.0.0.1", 6002, 1, 20)
        aggregate_until(h, agg, 5)
        agg.tick(now=105)
        agg.tick(now=106)  # mark 2: idle 6 s > 5; mark 1: 2 s
        assert agg.read()[1:] == ([((1,), 4, 192)], (1, 48))
        assert agg.churn == (2, 1, 0, 0) and agg.keys == 1
        agg.tick(now=50)  # never backwards
        agg.set_policy(ttl=0)
        agg.tick(now=1000)
        assert agg.keys == 1, "ttl 0: never"
    with pytest.raises(ValueError, match="ttl"):
        nflog.Aggregator(["mark"], ttl=-1)
    with pytest.raises(ValueError, match="now"):
        agg.tick(now=-1)
    with pytest.raises(ValueError, match="admit_rate"):
        agg.set_policy(admit_rate=-3)
