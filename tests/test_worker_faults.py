"""Socket faults injected into the real daemon's worker thread with strace, under a flood.

A failed read of a working socket (EIO/ENOMEM from recvfrom, EINVAL/EINTR from poll) must keep the
group bound, so the kernel's sequence numbers still account for every record: nft's counter minus
what nflogd exported equals nflogd_messages_lost_total, exactly. A socket that must be replaced
(EBADF) is replaced at once, and the time the group was unbound -- whose records nobody can count
-- shows in nflogd_group_unbound_seconds_total, nflogd_group_bound and the log.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import RunningDaemon, Scrape
from netns import Netns
from stall import Strace, worker_tid

GROUP = 40
PORT = 7240
FLOOD = 60_000

CONFIG = f"""\
groups:
  - group: {GROUP}
    timeout: 0.05
    nlbuf: 16384
    rcvbuf: 262144
    rcvbuf_max: 262144
"""
RULES = f"""
table ip t {{
  chain out {{ type filter hook output priority 0;
    udp dport {PORT} counter log prefix "flood" group {GROUP} comment "flood"
  }}
}}"""


def flood(ns: Netns, count: int) -> threading.Thread:
    t = threading.Thread(target=ns.send_udp, args=("127.0.0.1", PORT, count, 40))
    t.start()
    return t


def exported(s: Scrape) -> int:
    return int(s.total("nflog_packets_total", group=str(GROUP)))


def lost(s: Scrape) -> int:
    return int(s.value("nflogd_messages_lost_total", group=str(GROUP)))


def health(s: Scrape, name: str) -> float:
    return s.value(name, group=str(GROUP))


def accounted(d: RunningDaemon, ns: Netns, timeout: float = 15.0, uncounted: int = 0
              ) -> tuple[Scrape, int]:
    """Send a few markers (a gap shows only when a later record arrives), then scrape until
    exported + lost reaches the nft counter (less the ``uncounted`` logged while the group was
    unbound); returns that scrape and the counter."""
    for _ in range(3):
        ns.send_udp("127.0.0.1", PORT, 5, 40)
        time.sleep(0.2)
    want = ns.counters()["flood"][0]
    return d.wait_for(lambda s: exported(s) + lost(s) >= want - uncounted, timeout), want


def settled(d: RunningDaemon, ns: Netns) -> tuple[Scrape, int]:
    """After records went uncounted (the group was unbound): send markers, wait until what nflogd
    accounts for stops moving, and return that scrape and the nft counter then."""
    ns.send_udp("127.0.0.1", PORT, 5, 40)
    last, same = -1, 0
    while same < 3:
        time.sleep(0.2)
        s = d.scrape()
        now = exported(s) + lost(s)
        same = same + 1 if now == last else 0
        last = now
    return s, ns.counters()["flood"][0]


def group_socket(ns: Netns) -> int:
    """The inode of the socket that holds GROUP: a replaced socket has another one (its netlink
    portid, the process id, is the same)."""
    text = ns.run("cat", "/proc/net/netfilter/nfnetlink_log").stdout.decode()
    portid = next(int(f[1]) for f in (line.split() for line in text.splitlines()) if f
                  and int(f[0]) == GROUP)
    rows = ns.run("cat", "/proc/net/netlink").stdout.decode().splitlines()[1:]
    # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; Eth 12 is NETLINK_NETFILTER
    return next(int(f[9]) for f in (row.split() for row in rows)
                if f[1] == "12" and int(f[2]) == portid)


@pytest.mark.parametrize("inject", [
    "recvfrom:error=EIO:when=40+80",
    "recvfrom:error=ENOMEM:when=10+25",
    "poll:error=EINVAL:when=20+30",
    "poll:error=EINTR:when=5+7",
], ids=["recvfrom-EIO", "recvfrom-ENOMEM", "poll-EINVAL", "poll-EINTR"])
def test_transient_errors_keep_the_group_bound_and_every_record_counted(
        make_netns, start_daemon, inject: str) -> None:
    ns = make_netns("fault")
    ns.nft(RULES)
    d = start_daemon(ns, CONFIG)
    before = group_socket(ns)
    st = Strace(worker_tid(d.proc.pid, GROUP), inject)
    try:
        flood(ns, FLOOD).join(120)
        time.sleep(0.5)  # the tail of the flood is read under the faults too
    finally:
        st.stop()
    s, counter = accounted(d, ns)
    print(f"\n{inject}: nft {counter}, exported {exported(s)}, lost {lost(s)}")
    assert counter - exported(s) == lost(s), "records vanished without being counted as lost"
    if not inject.startswith("poll:error=EINTR"):  # EINTR is a retry inside the C read loop
        assert health(s, "nflogd_receive_errors_total") > 0, \
            "no fault was injected: the test proves nothing"
    assert health(s, "nflogd_worker_restarts_total") == 0
    assert health(s, "nflogd_group_unbound_seconds_total") == 0
    assert health(s, "nflogd_group_bound") == 1
    assert group_socket(ns) == before, "the socket was replaced: the group was unbound meanwhile"
    assert "Traceback" not in d.stderr()


def test_dead_socket_is_replaced_at_once_and_the_unbound_time_shows(
        make_netns, start_daemon) -> None:
    """EBADF from recvfrom: the socket is replaced; the first socket() calls fail too (EMFILE), so
    binding backs off -- 0.1 + 0.2 + 0.4 s -- and binds within ~1 s of the fault clearing."""
    ns = make_netns("dead")
    ns.nft(RULES)
    d = start_daemon(ns, CONFIG)
    before = group_socket(ns)
    st = Strace(worker_tid(d.proc.pid, GROUP), "recvfrom:error=EBADF:when=3",
                "socket:error=EMFILE:when=1..3")
    try:
        deadline = time.monotonic() + 10
        while "bound again after" not in d.stderr() and time.monotonic() < deadline:
            ns.send_udp("127.0.0.1", PORT, 20, 40)  # datagrams to read, so recvfrom is called
            time.sleep(0.05)
    finally:
        st.stop()
    err = d.stderr()
    assert "socket failed" in err and "bound again after" in err, err
    s = d.scrape()
    unbound = health(s, "nflogd_group_unbound_seconds_total")
    print(f"\nunbound for {unbound:.3f} s")
    assert 0.5 < unbound < 1.5, "the back-off is 0.1, 0.2, 0.4 s after three failed socket()s"
    assert health(s, "nflogd_worker_restarts_total") == 1
    assert health(s, "nflogd_group_bound") == 1
    assert group_socket(ns) != before
    # Bound again, counting is exact again: a new batch is accounted for to the record.
    s0, c0 = settled(d, ns)
    base = exported(s0) + lost(s0)
    flood(ns, 20_000).join(120)
    s1, c1 = accounted(d, ns, uncounted=c0 - base)
    assert c1 - c0 == exported(s1) + lost(s1) - base
    # What was logged while unbound is the one thing not counted, and the scrape says how long.
    assert exported(s1) + lost(s1) <= c1


def test_a_socket_whose_every_read_fails_is_replaced_after_10_s(make_netns, start_daemon) -> None:
    """EIO from every recvfrom: the socket is kept and retried (with a growing pause) for 10 s, then
    replaced, as the last thing left to try; once reads work again, counting is exact again."""
    ns = make_netns("alleio")
    ns.nft(RULES)
    d = start_daemon(ns, CONFIG)
    st = Strace(worker_tid(d.proc.pid, GROUP), "recvfrom:error=EIO")
    start = time.monotonic()
    try:
        while "every read for" not in d.stderr() and time.monotonic() < start + 25:
            ns.send_udp("127.0.0.1", PORT, 5, 40)
            time.sleep(0.2)
        replaced_after = time.monotonic() - start
    finally:
        st.stop()
    err = d.stderr()
    assert "every read for" in err and "replacing it" in err, err
    print(f"\nreplaced {replaced_after:.1f} s after every read began to fail")
    assert 10 <= replaced_after < 16
    s0, c0 = settled(d, ns)
    assert health(s0, "nflogd_worker_restarts_total") >= 1
    assert health(s0, "nflogd_group_bound") == 1
    base = exported(s0) + lost(s0)
    flood(ns, 10_000).join(120)
    s1, c1 = accounted(d, ns, uncounted=c0 - base)
    assert c1 - c0 == exported(s1) + lost(s1) - base
