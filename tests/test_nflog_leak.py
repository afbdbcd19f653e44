"""No leaks: memory and file descriptors stay flat over many records, handles and snapshots.

Records come in over a veth pair (INPUT), so hwaddr, hwhdr, timestamp and the device names are
all present and built on every read: a per-record leak of any of them (nflogr leaks hwaddr on
every packet) would show here as megabytes. tracemalloc sees every Python-level allocation the
extension makes (NflogData lives in PyObject memory); RSS catches malloc() in C.
"""

from __future__ import annotations

import gc
import os
import select
import threading
import time
import tracemalloc

import pytest

from netns import Netns, veth_pair
from nflog_support import open_in, require_root
from nflogd import nflog

RECORDS = 200_000
WARMUP = 20_000
TRACED = 100_000  # records read under tracemalloc (it slows every allocation); RSS: all of them


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reading_200k_records_as_objects_does_not_grow_memory() -> None:
    with Netns("leaka") as a, Netns("leakb") as b:
        veth_pair(a, b, "va0", "vb0", "10.90.0.1", "10.90.0.2")
        b.nft("""
        table ip t {
          chain in { type filter hook input priority 0;
            udp dport 7400 counter log prefix "leak" group 1 comment "leak"
          }
        }""")
        with open_in(b, 1, qthresh=100, timeout=0.05, rcvbuf=64 << 20, seq=True) as h:
            sender = threading.Thread(target=a.send_udp, args=("10.90.0.2", 7400, RECORDS, 32))
            sender.start()
            n = 0
            sink = 0
            deadline = time.monotonic() + 120
            base_traced = base_rss = traced = 0
            while True:
                d = h.next(wait=False)
                if d is None:
                    if not sender.is_alive() and n + h.lost >= RECORDS:
                        break
                    assert time.monotonic() < deadline, f"read {n} of {RECORDS} records"
                    select.select([h], [], [], 0.2)
                    continue
                n += 1
                # Build every attribute (dict() goes through all of them), names included.
                values = dict(d)
                sink += len(values["hwaddr"]) + len(values["payload"]) + len(values["indev"])
                if n == WARMUP:
                    gc.collect()
                    tracemalloc.start()
                    base_traced = tracemalloc.get_traced_memory()[0]
                    base_rss = rss_bytes()
                elif n == WARMUP + TRACED:
                    del d, values
                    gc.collect()
                    traced = tracemalloc.get_traced_memory()[0] - base_traced
                    tracemalloc.stop()
            sender.join(10)
            gc.collect()
            grown = rss_bytes() - base_rss
            assert n + h.lost == b.counters()["leak"][0] == RECORDS
            assert n > RECORDS // 2, f"only {n} records read ({h.lost} lost)"
            assert sink == n * (6 + 60 + 3)
    print(f"{n} records: +{traced} bytes traced over {TRACED}, RSS +{grown} bytes")
    assert n >= WARMUP + TRACED, f"only {n} records read"
    assert traced < 256 * 1024, f"Python memory grew {traced} bytes over {TRACED} records"
    assert grown < 8 * 1024 * 1024, f"RSS grew {grown} bytes over {n - WARMUP} records"


def test_handles_snapshots_and_failed_opens_leak_neither_memory_nor_fds() -> None:
    with Netns("leakh") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7401 counter log group 2 comment "x"
          }
        }""")
        taken = open_in(ns, 2)
        agg = nflog.Aggregator(nflog.FIELDS)
        ns.send_udp("127.0.0.1", 7401, 50, 10)
        for _ in range(100):
            if agg.records >= 50:
                break
            taken.aggregate(agg, timeout=0.1)
        assert agg.records == 50

        def churn() -> None:
            for i in range(150):
                open_in(ns, 3, nlbuf=131072).close()  # the biggest buffers
                h = open_in(ns, 4)
                del h  # dropped without close()
                with pytest.raises(nflog.NflogError):
                    open_in(ns, 2)  # EPERM: taken
                with pytest.raises(ValueError):
                    open_in(ns, 3, nlbuf=5)
                agg.snapshot()
                nflog.Aggregator(["prefix"], budget=nflog.SeriesBudget(10)).snapshot()

        churn()  # warm-up
        gc.collect()
        fds, rss = fd_count(), rss_bytes()
        tracemalloc.start()
        churn()
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert fd_count() == fds
        grown = rss_bytes() - rss
        taken.close()
    print(f"150 rounds: +{traced} bytes traced, RSS +{grown}")
    assert traced < 64 * 1024
    assert grown < 4 * 1024 * 1024
