"""nflogd.nflog against the real kernel: the nflogr API, every record field, threads, errors.

Each test builds its own network namespace(s) with nft rules that log to NFLOG groups and sends
real traffic there; nft rule counters are the ground truth the records are checked against.
Tests fail (never skip) without root, ip, nft or setpriv.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import select
import selectors
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from netns import REPO, SYSTEM_PYTHON, VENV_PYTHON, Netns, unused_uids, veth_pair
from nflog_support import (
    assert_quiet,
    hang_guard,
    mac_of,
    open_in,
    read_n,
    require_root,
    rule_counts,
)

from nflogd import nflog

# Every attribute NflogData has: nflogr 0.2.12's fifteen in its order, then ours.
NFLOGR_ATTRS = ["proto", "hwtype", "nfmark", "timestamp", "timestamp_us", "indev", "physindev",
                "outdev", "physoutdev", "uid", "gid", "hwaddr", "hwhdr", "payload", "prefix"]
OUR_ATTRS = ["indev_index", "outdev_index", "physindev_index", "physoutdev_index", "seq", "hook",
             "family", "group", "l4proto", "length",
             # the payload labels (tests/test_labels_live.py checks their values)
             "saddr", "daddr", "sport", "dport", "icmp_type", "tcp_flags", "ct_state"]
ALL_ATTRS = NFLOGR_ATTRS + OUR_ATTRS

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
HOOK_INPUT, HOOK_OUTPUT = 1, 3
LONG_PREFIX = "p" * nflog.PREFIX_MAX  # the longest prefix nft accepts


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def ifindex(ns: Netns, dev: str) -> int:
    return json.loads(ns.run("ip", "-j", "link", "show", "dev", dev).stdout)[0]["ifindex"]


def as_dict(d: nflog.NflogData) -> dict:
    return {name: getattr(d, name) for name in ALL_ATTRS}


def check_udp4(d: nflog.NflogData, src: str, dst: str, dport: int, size: int) -> None:
    """The record carries exactly the IPv4/UDP datagram that was sent."""
    p = d.payload
    assert isinstance(p, bytes)
    assert d.length == 20 + 8 + size == len(p)
    assert p[0] >> 4 == 4 and p[9] == socket.IPPROTO_UDP
    assert struct.unpack("!H", p[2:4])[0] == d.length
    assert socket.inet_ntoa(p[12:16]) == src and socket.inet_ntoa(p[16:20]) == dst
    assert struct.unpack("!H", p[22:24])[0] == dport
    assert p[28:] == b"x" * size
    assert d.proto == ETH_P_IP and d.family == socket.AF_INET and d.l4proto == socket.IPPROTO_UDP


# ---- every record field ------------------------------------------------------------------------

def test_output_records_on_loopback_carry_uid_gid_mark_prefix_and_payload() -> None:
    u1, u2 = unused_uids(2)
    with Netns("out") as ns:
        ns.nft(f"""
        table inet t {{
          chain out {{ type filter hook output priority 0;
            udp dport 7001 meta mark set 0x2a
            udp dport 7001 counter log prefix "out-marked" group 3 comment "marked"
            udp dport 7002 counter log prefix "out-plain" group 3 comment "plain"
            udp dport 7003 counter log prefix "{LONG_PREFIX}" group 3 comment "long"
            udp dport 7004 counter log group 3 comment "noprefix"
          }}
        }}""")
        with open_in(ns, 3) as h:
            ns.send_udp("127.0.0.1", 7001, 3, 100, uid=u1)
            ns.send_udp("127.0.0.1", 7002, 2, 200, uid=u2)
            ns.send_udp("127.0.0.1", 7003, 1, 10)
            ns.send_udp("127.0.0.1", 7004, 1, 10)
            recs = read_n(h, 7)
            assert_quiet(h)
        counters = ns.counters()

    marked, plain, long_, noprefix = recs[:3], recs[3:5], recs[5], recs[6]
    assert counters["marked"] == (3, 3 * 128) and counters["plain"] == (2, 2 * 228)
    for d, uid, size, dport in [(d, u1, 100, 7001) for d in marked] + \
                               [(d, u2, 200, 7002) for d in plain]:
        check_udp4(d, "127.0.0.1", "127.0.0.1", dport, size)
        assert d.uid == uid and d.gid == uid  # the sender ran as uid:uid
        assert d.outdev == "lo" and d.outdev_index == 1
        assert d.hook == HOOK_OUTPUT and d.group == 3
        # Absent on OUTPUT: None, never 0 and never an exception (no crash, unlike nflogr)...
        for name in ["indev", "indev_index", "physindev", "physindev_index", "physoutdev",
                     "physoutdev_index", "hwaddr", "timestamp", "timestamp_us", "seq"]:
            assert getattr(d, name) is None, name
        # ... but the hardware type and header are 0 and b"" without one, as in nflogr.
        assert d.hwtype == 0 and d.hwhdr == b""
    assert [d.prefix for d in marked] == ["out-marked"] * 3
    assert [d.nfmark for d in marked] == [0x2A] * 3
    assert [d.prefix for d in plain] == ["out-plain"] * 2
    assert [d.nfmark for d in plain] == [0, 0]  # the kernel sends no mark exactly when it is 0
    assert long_.prefix == LONG_PREFIX and len(long_.prefix) == 127
    assert noprefix.prefix == ""  # the kernel sends an empty prefix
    assert long_.uid == 0 and long_.gid == 0  # root is uid 0, not "absent"

    # dict(data) gives every attribute, nflogr's first in its order, with the same values; the
    # repr is nflogr's <NflogData {...}>.
    for d in recs:
        dd = dict(d)
        assert list(dd) == ALL_ATTRS
        assert dd == as_dict(d)
        assert repr(d) == str(d) == f"<NflogData {dd!r}>"
    with pytest.raises(AttributeError):
        recs[0].prefix = "x"  # read-only


def test_input_and_output_records_over_a_veth_pair() -> None:
    with Netns("va") as a, Netns("vb") as b:
        veth_pair(a, b, "va0", "vb0", "10.77.0.1", "10.77.0.2")
        b.nft("""
        table ip t {
          chain in { type filter hook input priority 0;
            iifname "vb0" udp dport 7010 counter log prefix "in-veth" group 4 comment "in"
          }
        }""")
        a.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            oifname "va0" udp dport 7010 counter log prefix "out-veth" group 4 comment "out"
          }
        }""")
        mac_a, mac_b = mac_of(a, "va0"), mac_of(b, "vb0")
        idx_a, idx_b = ifindex(a, "va0"), ifindex(b, "vb0")
        ha, hb = open_in(a, 4), open_in(b, 4)  # the same group number, two namespaces
        t0 = time.time()
        a.send_udp("10.77.0.2", 7010, 4, 60)
        ins, outs = read_n(hb, 4), read_n(ha, 4)
        t1 = time.time()
        assert_quiet(hb)
        assert_quiet(ha)
        assert rule_counts(b, "in") == (4, 4 * 88) and rule_counts(a, "out") == (4, 4 * 88)

        for d in ins:
            check_udp4(d, "10.77.0.1", "10.77.0.2", 7010, 60)
            assert d.prefix == "in-veth" and d.hook == HOOK_INPUT
            # Read here, outside both namespaces: names come from the handle's namespace.
            assert d.indev == "vb0" and d.indev_index == idx_b
            assert d.hwtype == 1  # ARPHRD_ETHER
            assert d.hwaddr == mac_a  # the frame's source
            assert d.hwhdr == mac_b + mac_a + b"\x08\x00"
            assert isinstance(d.timestamp, float) and t0 - 1 <= d.timestamp <= t1 + 1
            assert isinstance(d.timestamp_us, int) and d.timestamp == d.timestamp_us / 1e6
            assert d.nfmark == 0
            for name in ["outdev", "outdev_index", "uid", "gid", "physindev", "physoutdev", "seq"]:
                assert getattr(d, name) is None, name
        for d in outs:
            check_udp4(d, "10.77.0.1", "10.77.0.2", 7010, 60)
            assert d.prefix == "out-veth" and d.hook == HOOK_OUTPUT
            assert d.outdev == "va0" and d.outdev_index == idx_a
            assert d.uid == 0 and d.gid == 0
            for name in ["indev", "hwaddr", "timestamp", "timestamp_us"]:
                assert getattr(d, name) is None, name
            assert d.hwtype == 0 and d.hwhdr == b""
        hb.close()
        ha.close()
        # A record outlives its handle and still names devices in the handle's namespace.
        assert ins[0].indev == "vb0" and outs[0].outdev == "va0"
        # Pickled (e.g. through a multiprocessing queue), a record keeps those names: an index
        # would mean another device, or none, where it is unpickled.
        for d in (ins[0], outs[0]):
            again = pickle.loads(pickle.dumps(d))
            assert dict(again) == dict(d) and repr(again) == repr(d)


def test_bridge_records_carry_physical_and_bridge_devices() -> None:
    with Netns("ba") as a, Netns("bb") as b:
        veth_pair(a, b, "va0", "vb0", "10.78.0.1", "10.78.0.2")
        b.ip("addr", "flush", "dev", "vb0")
        b.ip("link", "add", "br0", "type", "bridge")
        b.ip("link", "set", "vb0", "master", "br0")
        b.ip("addr", "add", "10.78.0.2/24", "dev", "br0")
        b.ip("link", "set", "br0", "up")
        b.nft("""
        table bridge t {
          chain in { type filter hook input priority 0;
            udp dport 7020 counter log prefix "br-in" group 5 comment "in"
          }
          chain out { type filter hook output priority 0;
            udp dport 7021 counter log prefix "br-out" group 5 comment "out"
          }
        }""")
        with open_in(b, 5) as h:
            a.send_udp("10.78.0.2", 7020, 2, 30)
            b.send_udp("10.78.0.1", 7021, 2, 40)
            recs = read_n(h, 4)
            assert_quiet(h)
        assert rule_counts(b, "in")[0] == 2 and rule_counts(b, "out")[0] == 2
        # Names are resolved when read: read them while the devices exist.
        ins = [d for d in recs if d.prefix == "br-in"]
        outs = [d for d in recs if d.prefix == "br-out"]
        assert len(ins) == 2 and len(outs) == 2
        for d in ins:
            assert d.family == 7 and d.hook == 1  # NFPROTO_BRIDGE, NF_BR_LOCAL_IN
            assert d.physindev == "vb0" and d.indev == "br0" and d.physoutdev is None
            assert d.proto == ETH_P_IP and d.l4proto == socket.IPPROTO_UDP and d.length == 58
            assert d.hwtype == 1 and d.hwaddr == mac_of(a, "va0")
        for d in outs:
            assert d.family == 7 and d.hook == 3  # NF_BR_LOCAL_OUT
            assert d.physoutdev == "vb0" and d.outdev == "br0" and d.physindev is None
            assert d.length == 68


def test_ipv6_records_and_extension_headers() -> None:
    script = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.sendto(b'y'*33, ('::1', 7030))\n"
        "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, bytes([0,0,1,4,0,0,0,0]))\n"
        "s.sendto(b'y'*33, ('::1', 7030))\n"
    )
    with Netns("v6") as ns:
        ns.nft("""
        table ip6 t {
          chain out { type filter hook output priority 0;
            udp dport 7030 counter log prefix "v6" group 6 comment "v6"
          }
        }""")
        with open_in(ns, 6) as h:
            ns.run(SYSTEM_PYTHON, "-c", script)
            plain, hbh = read_n(h, 2)
            assert_quiet(h)
        assert rule_counts(ns, "v6") == (2, (40 + 8 + 33) + (40 + 8 + 8 + 33))
    for d in (plain, hbh):
        assert d.proto == ETH_P_IPV6 and d.family == socket.AF_INET6 and d.hook == HOOK_OUTPUT
        assert d.payload[0] >> 4 == 6 and d.payload[8:40] == socket.inet_pton(
            socket.AF_INET6, "::1") * 2
        assert d.l4proto == socket.IPPROTO_UDP and d.length == len(d.payload)
        assert d.outdev == "lo" and d.uid == 0 and d.payload.endswith(b"y" * 33)
    assert plain.payload[6] == socket.IPPROTO_UDP and plain.length == 81
    assert hbh.payload[6] == 0 and hbh.length == 89  # hop-by-hop header walked to UDP


@pytest.mark.parametrize("copymode, copyrange, want_payload", [
    (nflog.COPY_NONE, 0, None),
    (nflog.COPY_META, 0, None),
    (nflog.COPY_PACKET, 40, 40),
    (nflog.COPY_PACKET, 0, 328),
])
def test_copy_modes(copymode: int, copyrange: int, want_payload: int | None) -> None:
    with Netns("copy") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7040 counter log prefix "copy" group 7 comment "c"
          }
        }""")
        with open_in(ns, 7, copymode=copymode, copyrange=copyrange) as h:
            ns.send_udp("127.0.0.1", 7040, 2, 300)
            recs = read_n(h, 2)
            assert_quiet(h)
        assert rule_counts(ns, "c") == (2, 2 * 328)
    for d in recs:
        assert d.prefix == "copy" and d.outdev == "lo" and d.proto == ETH_P_IP
        if want_payload is None:
            assert d.payload is None and d.length is None and d.l4proto is None
        else:
            assert len(d.payload) == want_payload
            assert d.length == 328  # from the IP header, whatever was copied
            assert d.l4proto == socket.IPPROTO_UDP


# ---- the nflogr API --------------------------------------------------------------------------

RULES_7050 = """
table ip t {
  chain out { type filter hook output priority 0;
    udp dport 7050 counter log prefix "api" group 8 comment "api"
  }
}"""


def test_open_kwargs_queue_next_loop_iteration_and_attributes() -> None:
    with Netns("api") as ns:
        ns.nft(RULES_7050)
        # A long kernel timer and qthresh 3: every batch is exactly 3 records.
        h = open_in(ns, 8, timeout=1.0, qthresh=3, rcvbuf=65536, nlbuf=8192,
                    enobufs=nflog.ENOBUFS_HANDLE, copymode=nflog.COPY_PACKET, copyrange=64,
                    seq=True)
        with h as entered:
            assert entered is h and isinstance(h, nflog.Nflog) and not h.closed
            assert h.getgroup() == 8
            fd = h.getfd()
            assert isinstance(fd, int) and fd == h.fileno()
            assert stat.S_ISSOCK(os.fstat(fd).st_mode)
            assert h.rcvbuf == 65536  # what was asked, as nflogr reads it back
            assert h.kernel_rcvbuf == 2 * 65536  # the kernel doubles what is asked
            assert h.next(wait=False) is None
            assert h.queue(wait=False) == 0
            assert type(h.queued) is int and h.queued == 0
            assert len(h) == 0 and not h  # nflogr: len() is the queue length
            assert h.last_message_time is None

            sel = selectors.DefaultSelector()
            sel.register(h, selectors.EVENT_READ)
            assert sel.select(0.05) == []
            ns.send_udp("127.0.0.1", 7050, 3, 100)
            ready = sel.select(5)
            assert [k.fileobj for k, _ in ready] == [h]
            n = h.queue()
            assert type(n) is int and n == 3
            assert type(h.queued) is int and h.queued == 3 and len(h) == 3 and h
            # Records queued, the socket empty: queue() returns 0 at once, as nflogr, not waiting.
            with hang_guard(30):
                t = time.monotonic()
                assert h.queue() == 0
                assert time.monotonic() - t < 5
            first = h.next()
            assert first.seq == 0 and len(first.payload) == 64 and first.length == 128
            assert h.queued == 2

            seen: list[int] = []
            assert h.loop(lambda d: seen.append(d.seq), 2) is None
            assert seen == [1, 2] and h.queued == 0
            sel.close()

            ns.send_udp("127.0.0.1", 7050, 6, 100)
            it = []
            for d in h:  # iteration blocks like next(); the data is there
                it.append(d.seq)
                if len(it) == 6:
                    break
            assert it == [3, 4, 5, 6, 7, 8]
            assert (h.received, h.lost, h.datagrams, h.truncated, h.decode_errors) == \
                (9, 0, 3, 0, 0)
            assert abs(h.last_message_time - time.time()) < 5

            assert h.drops == 0
            h.drops = 0
            for bad in (3, "0", 2**70, None):
                with pytest.raises(TypeError, match="only be set to 0"):  # as nflogr
                    h.drops = bad
            h.rcvbuf = 262144
            assert h.rcvbuf == 262144 and h.kernel_rcvbuf == 524288
            h.rcvbuf = 0  # a no-op, as in open() and nflogr
            assert h.rcvbuf == 262144
            for bad in (-1, 2**30):
                with pytest.raises(ValueError, match=r"0\.\.1073741823"):
                    h.rcvbuf = bad
            with pytest.raises(TypeError):
                h.rcvbuf = "1"
            assert h.kernel_drops == 0
        assert h.closed and h.getfd() is None
        assert rule_counts(ns, "api")[0] == 9


def test_two_groups_read_concurrently_from_two_threads() -> None:
    with Netns("two") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7061 counter log prefix "g21" group 21 comment "g21"
            udp dport 7062 counter log prefix "g22" group 22 comment "g22"
          }
        }""")
        # Two Python readers against two full-speed senders need a real buffer (as the daemon has).
        opts = dict(qthresh=50, timeout=0.05, rcvbuf=8 << 20, seq=True)
        h21, h22 = open_in(ns, 21, **opts), open_in(ns, 22, **opts)
        got: dict[int, list] = {}
        errors: list[BaseException] = []

        def reader(h: nflog.Nflog, n: int) -> None:
            try:
                got[h.getgroup()] = read_n(h, n, timeout=20)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        readers = [threading.Thread(target=reader, args=(h21, 3000)),
                   threading.Thread(target=reader, args=(h22, 2000))]
        senders = [threading.Thread(target=ns.send_udp, args=("127.0.0.1", 7061, 3000, 20)),
                   threading.Thread(target=ns.send_udp, args=("127.0.0.1", 7062, 2000, 20))]
        for t in readers + senders:
            t.start()
        for t in senders + readers:
            t.join(30)
        assert not errors, errors
        assert_quiet(h21)
        assert_quiet(h22)
        assert h21.lost == h22.lost == 0
        h21.close()
        h22.close()
        assert rule_counts(ns, "g21")[0] == 3000 and rule_counts(ns, "g22")[0] == 2000
    assert {d.group for d in got[21]} == {21} and {d.prefix for d in got[21]} == {"g21"}
    assert {d.group for d in got[22]} == {22} and {d.prefix for d in got[22]} == {"g22"}
    assert len(got[21]) == 3000 and len(got[22]) == 2000


# ---- the GIL ---------------------------------------------------------------------------------

def _gil_progress(blocking_call, start_waker) -> tuple[float, int, object]:
    """Run blocking_call() in a thread while a CPU-bound Python thread counts. start_waker() is
    called just before; it must end the block about 1.5 s later from outside this process (so
    nothing here needs the GIL for it). Returns the counter's rate with the main thread idle, its
    progress during 1 s of the block, and the call's result."""
    count = [0]
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(1000):
                n += 1
            count[0] = n

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.2)
    c0, t0 = count[0], time.monotonic()
    time.sleep(0.5)
    rate = (count[0] - c0) / (time.monotonic() - t0)

    result: list = []
    waker = start_waker()
    blocker = threading.Thread(target=lambda: result.append(blocking_call()))
    blocker.start()
    time.sleep(0.2)  # blocker is now waiting in C
    c1 = count[0]
    time.sleep(1.0)
    progress = count[0] - c1
    still_blocked = blocker.is_alive()
    blocker.join(10)
    stop.set()
    t.join(10)
    waker.wait(10)
    assert still_blocked, "the blocking call returned before the waking packet was sent"
    assert not blocker.is_alive()
    return rate, progress, result[0]


@pytest.mark.parametrize("how", ["next", "aggregate"])
def test_a_blocked_reader_does_not_hold_the_gil(how: str) -> None:
    with Netns("gil") as ns, hang_guard(60):
        ns.nft(RULES_7050)
        with open_in(ns, 8) as h:
            def waker() -> subprocess.Popen:
                return ns.popen([SYSTEM_PYTHON, "-c",
                                 "import socket,time; time.sleep(1.5); "
                                 "socket.socket(socket.AF_INET,socket.SOCK_DGRAM)"
                                 ".sendto(b'x',('127.0.0.1',7050))"])
            if how == "next":
                rate, progress, res = _gil_progress(h.next, waker)
                assert isinstance(res, nflog.NflogData) and res.prefix == "api"
            else:
                agg = nflog.Aggregator(["prefix"])
                rate, progress, res = _gil_progress(lambda: h.aggregate(agg, timeout=None),
                                                    waker)
                assert res == 1 and agg.snapshot() == [((b"api",), 1, 29)]
    # Holding the GIL would leave the counter where it was; released, it runs at full speed.
    print(f"counter: {rate:.0f}/s alone, +{progress} during 1 s blocked in {how}()")
    assert progress > 200_000 and progress > 0.25 * rate


# ---- close() and errors from reads ------------------------------------------------------------

def test_records_queued_before_close_stay_readable_then_reads_end() -> None:
    with Netns("closed") as ns:
        ns.nft(RULES_7050)
        h = open_in(ns, 8, qthresh=3, timeout=1.0)
        ns.send_udp("127.0.0.1", 7050, 6, 10)
        assert h.queue() == 3
        assert select.select([h], [], [], 5)[0] and h.queue(wait=False) == 3 and len(h) == 6
        h.close()
        # As nflogr documents: what was buffered is still read after close(), by every reader.
        assert h.closed and h.queued == 6 and len(h) == 6
        assert h.next(wait=False).prefix == "api" and h.next().prefix == "api"
        seen: list[str | None] = []
        assert h.loop(lambda d: seen.append(d.prefix), 2) is None and seen == ["api"] * 2
        assert [d.prefix for d in h] == ["api"] * 2  # then iteration ends, cleanly
        assert len(h) == 0 and not h
        h2 = open_in(ns, 8, qthresh=3, timeout=1.0)
        ns.send_udp("127.0.0.1", 7050, 3, 10)
        assert h2.queue() == 3
        h2.close()
        assert h2.loop(lambda d: seen.append(d.prefix)) is None and seen == ["api"] * 5

        # Drained: wait=False says "nothing" and reads that would wait raise NflogClosedError;
        # nflogr's "no value" answers where it has them (queue() 0, rcvbuf None, getfd() None).
        assert h.next(wait=False) is None
        assert h.queue() == 0 and h.queue(wait=False) == 0
        assert h.rcvbuf is None and h.getfd() is None and h.getgroup() == 8
        agg = nflog.Aggregator(["prefix"])
        for call in [lambda: h.next(), lambda: h.aggregate(agg),
                     lambda: h.aggregate(agg, timeout=0), lambda: h.kernel_rcvbuf,
                     lambda: setattr(h, "rcvbuf", 1 << 20)]:
            with pytest.raises(nflog.NflogClosedError) as info:
                call()
            assert isinstance(info.value, nflog.NflogError)
            assert info.value.errno == errno.ECANCELED and "closed" in str(info.value)
        with pytest.raises(ValueError, match="closed"):  # as a closed file's fileno()
            h.fileno()
        assert list(h) == []
        assert h.loop(lambda d: pytest.fail("called after close")) is None
        h.close()  # twice is harmless
        # The group is free again: closing unbound it. Dropping a handle unbinds it too.
        h3 = open_in(ns, 8)
        del h3
        open_in(ns, 8).close()


@pytest.mark.parametrize("how", ["next", "aggregate", "iterate", "loop"])
def test_close_from_another_thread_wakes_a_blocked_reader(how: str) -> None:
    with Netns("wake") as ns, hang_guard(60):
        h = open_in(ns, 8)
        outcome: list = []

        def blocked() -> None:
            try:
                if how == "next":
                    h.next()
                elif how == "aggregate":
                    h.aggregate(nflog.Aggregator(["group"]), timeout=None)
                elif how == "iterate":
                    for _ in h:
                        pass
                else:
                    h.loop(lambda d: None)
                outcome.append(("returned", time.monotonic()))
            except BaseException as e:  # noqa: BLE001 - checked below
                outcome.append((e, time.monotonic()))

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not outcome
        t0 = time.monotonic()
        h.close()
        t.join(5)
        assert not t.is_alive()
        what, when = outcome[0]
        assert when - t0 < 1.0, f"woke after {when - t0:.2f} s"
    if how in ("next", "aggregate"):
        assert isinstance(what, nflog.NflogClosedError), what
    else:
        assert what == "returned"  # iteration and loop() end when the handle closes


def test_loop_propagates_the_callback_exception_and_keeps_the_rest() -> None:
    class Boom(Exception):
        pass

    with Netns("loop") as ns:
        ns.nft(RULES_7050)
        with open_in(ns, 8, seq=True) as h:
            ns.send_udp("127.0.0.1", 7050, 4, 10)
            seen: list[int] = []

            def fn(d: nflog.NflogData) -> None:
                seen.append(d.seq)
                if len(seen) == 2:
                    raise Boom("stop here")

            with pytest.raises(Boom, match="stop here"):
                h.loop(fn)
            assert seen == [0, 1]
            # Nothing was lost or skipped: the next record is the third.
            assert [d.seq for d in read_n(h, 2)] == [2, 3]
            with pytest.raises(TypeError):
                h.loop(42)


# ---- configuration and permission errors ------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"group": -1}, "group -1 is out of range 0..65535"),
    ({"group": 65536}, "group 65536 is out of range 0..65535"),
    ({"nlbuf": 100}, f"nlbuf 100 is out of range {nflog.NLBUF_MIN}..131072"),
    ({"nlbuf": 131073}, f"nlbuf 131073 is out of range {nflog.NLBUF_MIN}..131072"),
    ({"copymode": 3}, "copymode 3 is not one of COPY_NONE (0), COPY_META (1), COPY_PACKET (2)"),
    ({"copymode": -1}, "copymode -1 is not one of"),
    ({"copyrange": 65532}, "copyrange 65532 is out of range 0..65531"),
    ({"copyrange": -1}, "copyrange -1 is out of range 0..65531"),
    ({"qthresh": -1}, "qthresh -1 is out of range 0..4294967295"),
    ({"qthresh": 2**32}, "qthresh 4294967296 is out of range 0..4294967295"),
    ({"timeout": -0.5}, "timeout must be within 0..42949672.95 seconds"),
    ({"rcvbuf": -1}, "rcvbuf -1 is out of range 0..1073741823"),
    ({"rcvbuf": 2**30}, "rcvbuf 1073741824 is out of range 0..1073741823"),
    ({"enobufs": 3}, "enobufs 3 is not one of ENOBUFS_RAISE, ENOBUFS_HANDLE, ENOBUFS_DISABLE"),
])
def test_out_of_range_configuration_raises_valueerror_naming_the_range(kwargs: dict,
                                                                     message: str) -> None:
    args = {"group": 1, **kwargs}
    group = args.pop("group")
    with Netns("cfg") as ns:
        with pytest.raises(ValueError) as info:
            open_in(ns, group, **args)
        assert message in str(info.value)
        # Refused before binding anything.
        assert ns.run("cat", "/proc/net/netfilter/nfnetlink_log").stdout == b""


def test_the_extremes_of_every_range_are_accepted() -> None:
    with Netns("ext") as ns:
        for kwargs in [dict(nlbuf=nflog.NLBUF_MIN), dict(nlbuf=nflog.NLBUF_MAX),
                       dict(copyrange=nflog.COPY_RANGE_MAX), dict(qthresh=2**32 - 1),
                       dict(qthresh=0), dict(rcvbuf=2**30 - 1),
                       dict(timeout=655.35), dict(copymode=nflog.COPY_NONE)]:
            open_in(ns, 65535, **kwargs).close()
        open_in(ns, 0).close()


HOLDER = """
import sys
from nflogd import nflog
h = nflog.open(int(sys.argv[1]))
print("bound", flush=True)
sys.stdin.read()
"""


def _bound_groups(ns: Netns) -> dict[int, int]:
    """{group: portid} from the namespace's /proc/net/netfilter/nfnetlink_log."""
    out = ns.run("cat", "/proc/net/netfilter/nfnetlink_log").stdout.decode()
    return {int(f[0]): int(f[1]) for f in (line.split() for line in out.splitlines()) if f}


def test_a_group_taken_by_another_process_gives_eperm_and_says_where_to_look() -> None:
    with Netns("taken") as ns, Netns("other") as other:
        holder = ns.popen([VENV_PYTHON, "-c", HOLDER, "9"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, cwd=REPO)
        try:
            assert holder.stdout.readline() == b"bound\n"
            portid = _bound_groups(ns)[9]
            with pytest.raises(PermissionError) as info:  # as nflogr raises it
                open_in(ns, 9)
            e = info.value
            assert type(e) is nflog.NflogPermissionError and e.errno == errno.EPERM
            assert isinstance(e, nflog.NflogError)
            msg = str(e)
            assert "NFLOG group 9 is taken by another process" in msg
            assert f"portid {portid}" in msg
            assert "/proc/net/netfilter/nfnetlink_log" in msg
            # Instances are per namespace: the same group is free elsewhere.
            open_in(other, 9).close()
        finally:
            holder.stdin.close()
            holder.wait(10)
        open_in(ns, 9).close()  # released when the holder exited


def test_without_cap_net_admin_the_error_says_root_or_cap_net_admin_is_needed() -> None:
    # /root is mode 700: another uid needs a world-readable copy of the built package.
    with tempfile.TemporaryDirectory() as tmp, Netns("nocap") as ns:
        os.chmod(tmp, 0o755)
        shutil.copytree(REPO / "nflogd", Path(tmp) / "nflogd",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for root, dirs, files in os.walk(tmp):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o755)
        script = ("import json\nfrom nflogd import nflog\n"
                  "try:\n    nflog.open(9)\n    print(json.dumps('opened'))\n"
                  "except PermissionError as e:\n"
                  "    assert isinstance(e, nflog.NflogError)\n"
                  "    print(json.dumps([e.errno, str(e)]))\n")
        argv = ns.argv(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "--inh-caps=-all", "--bounding-set=-all", SYSTEM_PYTHON, "-c", script])
        proc = subprocess.run(argv, capture_output=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "PYTHONPATH": tmp})
        assert proc.returncode == 0, proc.stderr.decode()
        result = json.loads(proc.stdout)
    assert result[0] == errno.EPERM, result
    assert "binding NFLOG group 9 needs root or CAP_NET_ADMIN" in result[1]


def test_a_handle_never_opened_or_opened_twice_is_safe() -> None:
    # Made without __init__ (or after a failed one): every method answers, nothing crashes.
    h = nflog.Nflog.__new__(nflog.Nflog)
    assert h.queued == 0 and h.closed and h.getfd() is None and list(h) == []
    assert (h.received, h.lost, h.drops) == (0, 0, 0)
    with pytest.raises(nflog.NflogClosedError):
        h.next()
    with pytest.raises(nflog.NflogClosedError):
        h.configure(timeout=1.0)
    h.close()
    assert h.__exit__(None, None, None) is False
    with Netns("reinit") as ns:
        with pytest.raises(ValueError), ns.entered():
            h.__init__(1, nlbuf=5)
        with ns.entered():
            h.__init__(1)  # a failed __init__ may be retried
        assert not h.closed and h.getgroup() == 1
        with pytest.raises(RuntimeError, match="already called"), ns.entered():
            h.__init__(2)
        h.close()


@pytest.mark.parametrize("how", ["next", "iterate", "aggregate"])
def test_a_signal_handler_runs_and_its_exception_ends_a_blocked_read(how: str) -> None:
    import signal

    class Alarm(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Alarm()

    with Netns("sig") as ns, hang_guard(60):
        h = open_in(ns, 8)
        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            t0 = time.monotonic()
            with pytest.raises(Alarm):  # Ctrl-C (KeyboardInterrupt) takes the same path
                if how == "next":
                    h.next()
                elif how == "iterate":
                    for _ in h:
                        pass
                else:
                    h.aggregate(nflog.Aggregator(["group"]), timeout=None)
            assert time.monotonic() - t0 < 2
            # A handler that returns normally: the read goes on and gets its record.
            ticks: list[int] = []
            signal.signal(signal.SIGALRM, lambda s, f: ticks.append(s))
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            ns.nft(RULES_7050)
            sender = ns.popen([SYSTEM_PYTHON, "-c", "import socket,time; time.sleep(0.6); "
                               "socket.socket(socket.AF_INET,socket.SOCK_DGRAM)"
                               ".sendto(b'x',('127.0.0.1',7050))"])
            d = h.next()
            sender.wait(10)
            assert ticks == [signal.SIGALRM] and d.prefix == "api"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            h.close()


def test_opens_from_many_threads_at_once_all_bind_and_no_family_logger_changes() -> None:
    """libnetfilter_log's nflog_open races across threads (a static); ours keeps no shared state.
    And opening never sends PF_BIND/PF_UNBIND: the namespace's per-family loggers stay as they were."""
    with Netns("threads") as ns:
        loggers = ns.run("cat", "/proc/net/netfilter/nf_log").stdout
        barrier = threading.Barrier(8)
        handles: list[nflog.Nflog] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def opener(i: int) -> None:
            try:
                with ns.entered():  # per thread: setns moves only the calling thread
                    barrier.wait(10)
                    mine = [nflog.open(100 + 10 * i + k) for k in range(10)]
                with lock:
                    handles.extend(mine)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=opener, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        bound = _bound_groups(ns)
        assert sorted(bound) == list(range(100, 180)) and len(set(bound.values())) == 80
        assert sorted(h.getgroup() for h in handles) == list(range(100, 180))
        for h in handles:
            h.close()
        assert _bound_groups(ns) == {}
        assert ns.run("cat", "/proc/net/netfilter/nf_log").stdout == loggers
