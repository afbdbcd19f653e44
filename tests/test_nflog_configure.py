"""Nflog.configure(): new batching and copy settings for a bound group, in place, losing nothing.

Closing and re-binding a group destroys its kernel instance with whatever it is batching (up to
`timeout` seconds of records) and leaves a moment in which nothing is logged; configure() keeps
the instance, so the records batched under the old settings arrive, sequence numbers continue,
and the new settings apply from the next record.
"""

from __future__ import annotations

import threading
import time

import pytest

from netns import VENV_PYTHON, Netns
from nflog_support import (aggregate_until, assert_quiet, hang_guard, open_in, read_n,
                           require_root, rule_counts)
from nflogd import nflog

RULES = """
table ip t {
  chain out { type filter hook output priority 0;
    udp dport 7600 counter log prefix "cfg" group 1 comment "cfg"
  }
}"""


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def holder(ns: Netns, group: int) -> int:
    """The netlink portid bound to group in ns."""
    for line in ns.run("cat", "/proc/net/netfilter/nfnetlink_log").stdout.decode().splitlines():
        f = line.split()
        if f and int(f[0]) == group:
            return int(f[1])
    raise AssertionError(f"group {group} is not bound")


def test_configure_keeps_the_batch_and_the_sequence_and_applies_from_the_next_record() -> None:
    with Netns("cfg") as ns:
        ns.nft(RULES)
        # A long timer and a big threshold: the first 20 records stay in the kernel's batch.
        with open_in(ns, 1, timeout=30.0, qthresh=10000, seq=True, copyrange=40) as h:
            portid = holder(ns, 1)
            ns.send_udp("127.0.0.1", 7600, 20, 100)
            assert_quiet(h)  # still batched in the kernel
            h.configure(timeout=0.05, qthresh=1, copyrange=100)
            assert holder(ns, 1) == portid  # the same instance: never unbound
            ns.send_udp("127.0.0.1", 7600, 5, 100)  # the first one flushes the batch (qthresh 1)
            recs = read_n(h, 25, timeout=5)
            assert_quiet(h)
            assert rule_counts(ns, "cfg")[0] == 25
            assert [d.seq for d in recs] == list(range(25)) and h.lost == 0
            # Copied under the settings in force when each record was logged.
            assert [len(d.payload) for d in recs] == [40] * 20 + [100] * 5
            assert all(d.length == 128 for d in recs)

            h.configure(copymode=nflog.COPY_META)  # the copy range is kept for later
            ns.send_udp("127.0.0.1", 7600, 1, 100)
            assert read_n(h, 1)[0].payload is None
            h.configure(copymode=nflog.COPY_PACKET)
            ns.send_udp("127.0.0.1", 7600, 1, 100)
            assert len(read_n(h, 1)[0].payload) == 100


def test_configure_timeout_and_qthresh_change_the_batching() -> None:
    with Netns("cfgb") as ns:
        ns.nft(RULES)
        with open_in(ns, 1, seq=True) as h:  # qthresh 1: a datagram per record
            ns.send_udp("127.0.0.1", 7600, 3, 10)
            read_n(h, 3)
            assert h.datagrams == 3
            h.configure(qthresh=4, timeout=30.0)
            ns.send_udp("127.0.0.1", 7600, 4, 10)
            assert h.queue() == 4  # one batch of exactly qthresh records
            assert h.datagrams == 4
            read_n(h, 4)
            h.configure(qthresh=1000, timeout=0.1)
            ns.send_udp("127.0.0.1", 7600, 10, 10)
            t0 = time.monotonic()
            assert h.queue() == 10  # one batch, sent by the 0.1 s timer, not the threshold
            assert time.monotonic() - t0 < 2
            assert [d.seq for d in read_n(h, 10)] == list(range(7, 17)) and h.lost == 0


def test_configure_does_not_wait_for_a_reader_blocked_in_aggregate() -> None:
    with Netns("cfgc") as ns, hang_guard(60):
        ns.nft(RULES)
        with open_in(ns, 1, seq=True) as h:
            agg = nflog.Aggregator(["prefix"])
            folded: list[int] = []
            t = threading.Thread(target=lambda: folded.append(h.aggregate(agg, timeout=None)))
            t.start()
            time.sleep(0.3)
            assert t.is_alive()
            t0 = time.monotonic()
            h.configure(qthresh=2, timeout=0.05, copyrange=64)
            # the reader waits with no timeout until the packets below: waiting for it would
            # never end (hang_guard), so any bound proves it; a loose one does not flake
            assert time.monotonic() - t0 < 2.0, "configure() waited for the reader"
            ns.send_udp("127.0.0.1", 7600, 2, 10)
            t.join(5)
            assert not t.is_alive() and folded == [2]
            assert agg.snapshot() == [((b"cfg",), 2, 2 * 38)]


def test_raising_nlbuf_after_a_small_open_still_receives_whole_datagrams() -> None:
    n = 20_000
    with Netns("cfgd") as ns:
        ns.nft(RULES)
        with open_in(ns, 1, nlbuf=nflog.NLBUF_MIN, qthresh=10000, timeout=0.1, rcvbuf=8 << 20,
                     seq=True, copyrange=64) as h:
            h.configure(nlbuf=nflog.NLBUF_MAX)
            agg = nflog.Aggregator(["prefix"])
            errors: list[BaseException] = []

            def reader() -> None:
                try:
                    aggregate_until(h, agg, n, timeout=60)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            t = threading.Thread(target=reader)
            t.start()
            ns.send_udp("127.0.0.1", 7600, n, 100)
            t.join(90)
            assert not errors, errors
            packets, octets = rule_counts(ns, "cfg")
            assert agg.snapshot() == [((b"cfg",), n, octets)] and packets == n
            assert (h.lost, h.truncated, h.decode_errors) == (0, 0, 0)
            # Records here are >= 120 bytes: datagrams averaged more than 128 KiB, i.e. the
            # kernel used the new nlbuf and they arrived whole.
            assert n / h.datagrams * 120 > 131072, h.datagrams


@pytest.mark.parametrize("kwargs, message", [
    ({"nlbuf": 100}, f"nlbuf 100 is out of range {nflog.NLBUF_MIN}..131072"),
    ({"copymode": 7}, "copymode 7 is not one of"),
    ({"copyrange": 70000}, "copyrange 70000 is out of range 0..65531"),
    ({"qthresh": -1}, "qthresh -1 is out of range 0..4294967295"),
    ({"timeout": -1.0}, "timeout must be within"),
])
def test_configure_refuses_what_open_refuses(kwargs: dict, message: str) -> None:
    with Netns("cfge") as ns:
        with open_in(ns, 1) as h:
            with pytest.raises(ValueError) as info:
                h.configure(**kwargs)
            assert message in str(info.value)
            with pytest.raises(TypeError):
                h.configure(qthresh="many")
            with pytest.raises(TypeError):
                h.configure(5)  # keyword-only
            h.configure()  # nothing to change: fine
        with pytest.raises(nflog.NflogClosedError):
            h.configure(qthresh=5)


REFUSED = r"""
import os, sys
from nflogd import nflog
h = nflog.open(1, seq=True)
agg = nflog.Aggregator(["prefix"])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)  # CAP_NET_ADMIN is gone: the kernel refuses configuration
h.configure(qthresh=5)  # sent; the kernel's answer comes back with the data
try:
    if sys.argv[1] == "next":
        print("no error:", h.next(wait=False))
    else:
        print("no error:", h.aggregate(agg, timeout=1.0))
except nflog.NflogError as e:
    print(e.errno, e)
assert h.next(wait=False) is None  # reported once; the handle goes on
print("reading on")
"""


@pytest.mark.parametrize("how", ["next", "aggregate"])
def test_a_refused_configure_is_reported_by_the_next_read(how: str) -> None:
    with Netns("cfgf") as ns:
        proc = ns.run(VENV_PYTHON, "-c", REFUSED, how, check=False, timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    lines = out.splitlines()
    assert lines[0].startswith("1 ") and "refused the settings given to configure()" in lines[0] \
        and "not in effect" in lines[0], out
    assert lines[1] == "reading on"
