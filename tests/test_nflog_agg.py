"""The C aggregation path against the real kernel: per-key packets and bytes equal nft counters.

Each nft rule below matches exactly one aggregation key and counts what it logs, so every row of
a snapshot can be compared with one rule counter, exactly.
"""

from __future__ import annotations

import threading
import time

import pytest

from netns import Netns, unused_uids, veth_pair
from nflog_support import aggregate_until, hang_guard, open_in, require_root, rule_counts
from nflogd import nflog

ALL_FIELDS = ("group", "prefix", "indev", "outdev", "physindev", "physoutdev", "uid", "gid",
              "family", "proto", "hook", "mark", "hwproto", "saddr", "daddr", "sport", "dport",
              "icmp_type", "tcp_flags", "src_net", "dst_net", "ct_state")
# The fields of the record's metadata (the rest come from the payload: tests/test_labels_live.py).
META_FIELDS = ALL_FIELDS[:ALL_FIELDS.index("saddr")]


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def ifindex(ns: Netns, dev: str) -> int:
    import json
    return json.loads(ns.run("ip", "-j", "link", "show", "dev", dev).stdout)[0]["ifindex"]


def test_fields_and_constants() -> None:
    assert nflog.FIELDS == ALL_FIELDS
    agg = nflog.Aggregator(["uid", "prefix"], max_keys=10)
    assert agg.fields == ("uid", "prefix") and agg.max_keys == 10 and agg.budget is None
    assert (agg.keys, agg.records, agg.overflow, agg.snapshot()) == (0, 0, (0, 0), [])
    with pytest.raises(ValueError, match="unknown aggregation field 'bogus'"):
        nflog.Aggregator(["bogus"])
    with pytest.raises(ValueError, match="field 'uid' given twice"):
        nflog.Aggregator(["uid", "uid"])
    with pytest.raises(ValueError, match="max_keys"):
        nflog.Aggregator(["uid"], max_keys=-1)
    with pytest.raises(TypeError, match="SeriesBudget"):
        nflog.Aggregator(["uid"], budget=5)
    with pytest.raises(ValueError, match="limit"):
        nflog.SeriesBudget(-1)
    with Netns("aggapi") as ns:
        with open_in(ns, 1) as h:
            assert h.aggregate(agg, timeout=0) == 0
            assert h.aggregate(agg, timeout=0.05) == 0
            with pytest.raises(TypeError):
                h.aggregate(object())
            with pytest.raises(ValueError, match="timeout"):
                h.aggregate(agg, timeout=-1)


def test_snapshot_rows_equal_nft_counters_for_every_key() -> None:
    u1, u2 = unused_uids(2)
    with Netns("agga") as a, Netns("aggb") as b:
        veth_pair(a, b, "va0", "vb0", "10.80.0.1", "10.80.0.2")
        a.nft(f"""
        table ip t {{
          chain out {{ type filter hook output priority 0;
            meta skuid {u1} udp dport 7201 counter log prefix "pa" group 1 comment "k1"
            meta skuid {u2} udp dport 7202 counter log prefix "pb" group 1 comment "k2"
            meta skuid {u1} udp dport 7202 counter log prefix "pb" group 1 comment "k3"
            meta skuid {u2} udp dport 7201 counter log prefix "pa" group 1 comment "k4"
          }}
        }}""")
        lo, va0 = ifindex(a, "lo"), ifindex(a, "va0")
        # copyrange 40: the payload is cut, the bytes must still be whole (IP total length).
        with open_in(a, 1, copyrange=40, qthresh=20, timeout=0.05) as h:
            agg = nflog.Aggregator(META_FIELDS)
            a.send_udp("127.0.0.1", 7201, 7, 100, uid=u1)
            a.send_udp("10.80.0.2", 7202, 11, 300, uid=u2)
            a.send_udp("10.80.0.2", 7202, 13, 50, uid=u1)
            a.send_udp("127.0.0.1", 7201, 17, 1000, uid=u2)
            aggregate_until(h, agg, 48)
            assert h.aggregate(agg, timeout=0.2) == 0  # nothing more
        c = a.counters()

    def key(prefix: bytes, dev: int, uid: int) -> tuple:
        return (1, prefix, None, dev, None, None, uid, uid, 2, 17, 3, 0, 0x0800)

    want = {key(b"pa", lo, u1): c["k1"], key(b"pb", va0, u2): c["k2"],
            key(b"pb", va0, u1): c["k3"], key(b"pa", lo, u2): c["k4"]}
    got = {k: (p, b) for k, p, b in agg.snapshot()}
    assert got == want
    assert [v[0] for v in want.values()] == [7, 11, 13, 17]
    assert c["k4"][1] == 17 * 1028 > 17 * 40  # whole packets counted, not the copied 40 bytes
    assert agg.keys == 4 and agg.records == 48 and agg.overflow == (0, 0)


def test_fields_choose_the_key_and_merge_the_rest() -> None:
    u1, u2 = unused_uids(2)
    with Netns("aggm") as ns:
        ns.nft(f"""
        table ip t {{
          chain out {{ type filter hook output priority 0;
            meta skuid {u1} udp dport 7211 counter log prefix "m" group 1 comment "u1"
            meta skuid {u2} udp dport 7211 counter log prefix "m" group 1 comment "u2"
            meta skuid 0 udp dport 7211 counter log prefix "m" group 1 comment "root"
          }}
        }}""")
        with open_in(ns, 1) as h:
            # Keyed by uid and gid only: the prefix (the same here) and everything else merge.
            agg = nflog.Aggregator(["uid", "gid"])
            ns.send_udp("127.0.0.1", 7211, 5, 10, uid=u1)
            ns.send_udp("127.0.0.1", 7211, 6, 20, uid=u2)
            ns.send_udp("127.0.0.1", 7211, 2, 30)
            aggregate_until(h, agg, 13)
        c = ns.counters()
    assert {k: (p, b) for k, p, b in agg.snapshot()} == \
        {(u1, u1): c["u1"], (u2, u2): c["u2"], (0, 0): c["root"]}
    assert [c[x][0] for x in ("u1", "u2", "root")] == [5, 6, 2]


def rule_counts_from(c: dict, *names: str) -> tuple[int, int]:
    return sum(c[n][0] for n in names), sum(c[n][1] for n in names)


def test_uid_keys_distinguish_root_from_absent() -> None:
    u1, _ = unused_uids(2)
    with Netns("aggu") as a, Netns("aggv") as b:
        veth_pair(a, b, "va0", "vb0", "10.81.0.1", "10.81.0.2")
        b.nft("""
        table ip t {
          chain in { type filter hook input priority 0;
            udp dport 7221 counter log prefix "in" group 1 comment "in"
          }
          chain out { type filter hook output priority 0;
            meta skuid 0 udp dport 7222 counter log prefix "out" group 1 comment "root"
          }
        }""")
        with open_in(b, 1) as h:
            agg = nflog.Aggregator(["prefix", "uid", "indev", "hook"])
            a.send_udp("10.81.0.2", 7221, 3, 10, uid=u1)  # INPUT on b: no uid
            b.send_udp("127.0.0.1", 7222, 4, 10)  # OUTPUT as root: uid 0
            aggregate_until(h, agg, 7)
        c = b.counters()
        vb0 = ifindex(b, "vb0")
    got = {k: (p, n) for k, p, n in agg.snapshot()}
    assert got == {(b"in", None, vb0, 1): c["in"], (b"out", 0, None, 3): c["root"]}


def test_max_keys_sends_new_keys_to_overflow() -> None:
    with Netns("aggo") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7231 counter log prefix "p1" group 1 comment "p1"
            udp dport 7232 counter log prefix "p2" group 1 comment "p2"
            udp dport 7233 counter log prefix "p3" group 1 comment "p3"
            udp dport 7234 counter log prefix "p4" group 1 comment "p4"
          }
        }""")
        with open_in(ns, 1) as h:
            agg = nflog.Aggregator(["prefix"], max_keys=2)
            for port, n, size in [(7231, 3, 10), (7232, 5, 20), (7233, 7, 30), (7234, 9, 40),
                                  (7231, 2, 50)]:
                ns.send_udp("127.0.0.1", port, n, size)
            aggregate_until(h, agg, 26)
        c = ns.counters()
    rows = {k[0]: (p, b) for k, p, b in agg.snapshot()}
    # The first two keys seen got rows (and keep counting); the others went to overflow.
    assert rows == {b"p1": c["p1"], b"p2": c["p2"]}
    assert agg.keys == 2 and agg.overflow == rule_counts_from(c, "p3", "p4")
    assert sum(p for p, _ in rows.values()) + agg.overflow[0] == 26 == agg.records
    assert sum(b for _, b in rows.values()) + agg.overflow[1] == sum(v[1] for v in c.values())


def test_a_shared_budget_caps_keys_across_aggregators_and_clear_returns_them() -> None:
    with Netns("aggb") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7241 counter log prefix "a1" group 1 comment "a1"
            udp dport 7242 counter log prefix "a2" group 1 comment "a2"
            udp dport 7243 counter log prefix "b1" group 2 comment "b1"
            udp dport 7244 counter log prefix "b2" group 2 comment "b2"
          }
        }""")
        budget = nflog.SeriesBudget(3)
        h1, h2 = open_in(ns, 1), open_in(ns, 2)
        agg1 = nflog.Aggregator(["prefix"], budget=budget)
        agg2 = nflog.Aggregator(["prefix", "group"], budget=budget)
        assert agg1.budget is budget and budget.limit == 3 and budget.used == 0
        ns.send_udp("127.0.0.1", 7241, 2, 10)
        ns.send_udp("127.0.0.1", 7242, 3, 10)
        aggregate_until(h1, agg1, 5)
        ns.send_udp("127.0.0.1", 7243, 4, 10)
        ns.send_udp("127.0.0.1", 7244, 5, 10)
        aggregate_until(h2, agg2, 9)
        c = ns.counters()
        assert budget.used == 3 and agg1.keys + agg2.keys == 3
        assert {k[0]: (p, b) for k, p, b in agg1.snapshot()} == {b"a1": c["a1"], b"a2": c["a2"]}
        assert agg2.snapshot() == [((b"b1", 2), *c["b1"])] and agg2.overflow == c["b2"]

        agg1.clear()  # forgets its keys and counters, and gives the keys back
        assert budget.used == 1
        assert (agg1.keys, agg1.records, agg1.overflow, agg1.snapshot()) == (0, 0, (0, 0), [])
        ns.send_udp("127.0.0.1", 7244, 1, 10)
        aggregate_until(h2, agg2, 10)
        assert budget.used == 2 and dict((k, p) for k, p, _ in agg2.snapshot()) == \
            {(b"b1", 2): 4, (b"b2", 2): 1}
        budget.limit = 1  # lowering keeps existing keys, refuses new ones
        ns.send_udp("127.0.0.1", 7241, 1, 10)
        aggregate_until(h1, agg1, 1)
        assert agg1.keys == 0 and agg1.overflow[0] == 1 and budget.used == 2
        h1.close()
        h2.close()
        del agg2
        assert budget.used == 0  # a dropped aggregator returns its keys


def test_large_batches_are_counted_exactly_without_loss() -> None:
    n = 50_000
    with Netns("aggbig") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7251 counter log prefix "big" group 1 comment "big"
          }
        }""")
        with open_in(ns, 1, nlbuf=131072, qthresh=10000, timeout=0.1, rcvbuf=8 << 20,
                     seq=True, copyrange=64) as h:
            agg = nflog.Aggregator(["prefix", "proto", "outdev"])
            snapshots: list = []
            errors: list[BaseException] = []

            def reader() -> None:
                try:
                    aggregate_until(h, agg, n, timeout=60)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            def scraper() -> None:  # snapshots taken while folding must be consistent
                while t.is_alive():
                    snapshots.append(agg.snapshot())

            t = threading.Thread(target=reader)
            t.start()
            s = threading.Thread(target=scraper)
            s.start()
            ns.send_udp("127.0.0.1", 7251, n, 100)
            t.join(90)
            s.join(10)
            assert not errors, errors
            assert h.aggregate(agg, timeout=0.3) == 0
            packets, octets = rule_counts(ns, "big")
            assert packets == n
            assert agg.snapshot() == [((b"big", 17, 1), n, octets)]
            assert octets == n * 128
            assert (h.received, h.lost, h.truncated, h.decode_errors, h.drops, h.kernel_drops) \
                == (n, 0, 0, 0, 0, 0)
            # Batched: each datagram carried many records (the kernel fills up to ~256 KiB).
            print(f"{n} records in {h.datagrams} datagrams")
            assert h.datagrams <= n // 50, h.datagrams
            # Each record's message is >= 120 bytes here (headers, six attributes, 64 bytes of
            # payload), so datagrams averaged more than 128 KiB: the ~256 KiB ones the kernel
            # sends at nlbuf 131072 arrived whole (truncated == 0 above).
            assert n / h.datagrams * 120 > 131072
    # Counters only grow between snapshots.
    seen = [rows[0][1] for rows in snapshots if rows]
    assert seen == sorted(seen)


def test_linger_folds_a_steady_flow_in_one_call_and_close_ends_it() -> None:
    """aggregate(linger=L) goes on folding what comes for L seconds after the first data (the
    daemon's worker turns a few times a second under a flood, not once a datagram); a
    snapshot sees the records as they come, not when the call returns; close() ends it at once,
    and what was folded stays folded."""
    with Netns("agglinger") as ns, hang_guard(60):
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7252 counter log prefix "linger" group 1 comment "linger"
          }
        }""")
        with open_in(ns, 1, qthresh=1, timeout=0.01) as h:
            agg = nflog.Aggregator(["prefix"])
            with pytest.raises(ValueError, match="linger"):
                h.aggregate(agg, timeout=0, linger=-1)
            assert h.aggregate(agg, timeout=0.05, linger=5) == 0  # no data: the timeout rules
            seen_during: list[int] = []

            def sender() -> None:  # 10 packets, one every 0.1 s
                for _ in range(10):
                    ns.send_udp("127.0.0.1", 7252, 1)
                    time.sleep(0.1)
                    seen_during.append(agg.records)

            s = threading.Thread(target=sender)
            t0 = time.monotonic()
            s.start()
            folded = h.aggregate(agg, timeout=5, linger=0.6)
            took = time.monotonic() - t0
            s.join(10)
            assert took >= 0.6, took  # it waited for more, it did not return at the first
            assert 2 <= folded <= 10 and agg.records == folded
            assert seen_during[0] >= 1  # counted while the call was still lingering
            aggregate_until(h, agg, 10)
            assert agg.snapshot() == [((b"linger",), *rule_counts(ns, "linger"))]

            closer = threading.Timer(0.3, h.close)
            ns.send_udp("127.0.0.1", 7252, 1)
            t0 = time.monotonic()
            closer.start()
            with pytest.raises(nflog.NflogClosedError):
                h.aggregate(agg, timeout=5, linger=30)
            assert time.monotonic() - t0 < 10  # not the 30 s linger
            closer.join()
            assert agg.records == 11 == rule_counts(ns, "linger")[0]


def test_one_aggregator_fed_from_two_threads_is_exact() -> None:
    with Netns("agg2t") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7261 counter log prefix "x" group 1 comment "g1"
            udp dport 7262 counter log prefix "x" group 2 comment "g2"
          }
        }""")
        h1 = open_in(ns, 1, qthresh=100, timeout=0.05, rcvbuf=4 << 20)
        h2 = open_in(ns, 2, qthresh=100, timeout=0.05, rcvbuf=4 << 20)
        agg = nflog.Aggregator(["prefix"])
        stop = threading.Event()

        def pump(h: nflog.Nflog) -> None:
            while not stop.is_set():
                h.aggregate(agg, timeout=0.05)

        threads = [threading.Thread(target=pump, args=(h,)) for h in (h1, h2)]
        for t in threads:
            t.start()
        senders = [threading.Thread(target=ns.send_udp, args=("127.0.0.1", p, 20_000, 10))
                   for p in (7261, 7262)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(60)
        packets, octets = rule_counts(ns, "g1", "g2")
        try:
            for _ in range(200):
                if agg.records >= packets:
                    break
                threading.Event().wait(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert agg.snapshot() == [((b"x",), packets, octets)] and packets == 40_000
        assert h1.lost == h2.lost == 0
        h1.close()
        h2.close()


@pytest.mark.parametrize("copymode, copyrange, whole", [
    (nflog.COPY_PACKET, 20, True),   # just the IPv4 header: enough for the length
    (nflog.COPY_META, 0, False),     # no payload: packets counted, 0 bytes (documented)
])
def test_bytes_need_the_ip_header_copied(copymode: int, copyrange: int, whole: bool) -> None:
    with Netns("aggcopy") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7271 counter log prefix "c" group 1 comment "c"
          }
        }""")
        with open_in(ns, 1, copymode=copymode, copyrange=copyrange) as h:
            agg = nflog.Aggregator(["prefix", "proto"])
            ns.send_udp("127.0.0.1", 7271, 5, 700)
            aggregate_until(h, agg, 5)
        packets, octets = rule_counts(ns, "c")
    assert packets == 5 and octets == 5 * 728
    assert agg.snapshot() == [((b"c", 17 if whole else None), 5, octets if whole else 0)]
