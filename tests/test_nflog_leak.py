"""No leaks: memory and file descriptors stay flat over many records, handles and snapshots, and
the extension runs clean under valgrind memcheck.

Records come in over a veth pair (INPUT), so hwaddr, hwhdr, timestamp and the device names are
all present and built on every read: a per-record leak of any of them (nflogr leaks hwaddr on
every packet) would show here as megabytes. tracemalloc sees every Python-level allocation the
extension makes (NflogData lives in PyObject memory); RSS catches malloc() in C.
"""

from __future__ import annotations

import gc
import os
import select
import subprocess
import threading
import time
import tracemalloc

import pytest

from netns import REPO, VENV_PYTHON, Netns, veth_pair
from nflog_support import open_in, require_root, require_tool
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


# Runs under valgrind inside namespace b; records arrive over the veth from a.
VALGRIND_WORKLOAD = r'''
import copy, faulthandler, pickle, select, sys, threading, time
from nflogd import nflog

faulthandler.dump_traceback_later(100, exit=True)  # never hang, even blocked in C

def wait_for(h, n):
    got, deadline = [], time.time() + 60
    while len(got) < n:
        d = h.next(wait=False)
        if d is None:
            assert time.time() < deadline, len(got)
            select.select([h], [], [], 0.2)
            continue
        got.append(d)
    return got

h = nflog.open(1, seq=True, qthresh=10, timeout=0.05, copyrange=60)
h2 = nflog.open(2, copymode=nflog.COPY_META, rcvbuf=1 << 20)
budget = nflog.SeriesBudget(5)
agg = nflog.Aggregator(nflog.FIELDS, max_keys=2, budget=budget)
print("ready", flush=True)
recs = wait_for(h, 100)  # group 1 gets 150 records: 100 + 20 + 30
for d in recs:
    dict(d); repr(d)
    assert dict(pickle.loads(pickle.dumps(d))) == dict(d)
copy.copy(recs[0])
msg = recs[0].__reduce__()[1][0]
for bad in (lambda: nflog.NflogData(b"x", (None,) * 4), lambda: nflog.NflogData(msg, (1, 2, 3, 4)),
            lambda: nflog.NflogData(msg[:-1], (None,) * 4), lambda: nflog.NflogData(msg, ())):
    try:
        bad()
    except (ValueError, TypeError):
        pass
    else:
        raise AssertionError("NflogData took a bad message")
h.loop(lambda d: dict(d), 20)
it = iter(h)
for _ in range(25):
    next(it)
while not h:  # len(h): queued records, which close() keeps readable
    select.select([h], [], [], 5)
    h.queue(wait=False)
deadline = time.time() + 60
while agg.records < 200 and time.time() < deadline:  # group 2: 150 + 25 + 25
    h2.aggregate(agg, timeout=0.2)
snap = agg.snapshot()
assert agg.records == 200 and agg.keys == 2 and agg.overflow[0] == 25, (agg.records, snap)
rend = nflog.CounterRenderer()  # the C scrape: new keys, cached keys, merging, a failing callable
fams = ((b"# p\n", b"p"), (b"# b\n", b"b"))
for tag in (1, 1, 2):
    body = rend.render([(agg, lambda k: '{x="%s"}' % k[1], "{x=\"over\"}")], tag, fams, b"t 1\n")
frozen = agg.counts()
assert sorted(frozen.rows()) == sorted(agg.snapshot()) and len(frozen) == 2, frozen.rows()
assert rend.render([(frozen, lambda k: '{x="%s"}' % k[1], "{x=\"over\"}")], 2, fams, b"t 1\n") == body
assert body.count(b"\n") == 2 + 2 * 3 + 1 and rend.labels == 3, body
try:
    rend.render([(agg, lambda k: 1 / 0, None)], 3, fams)
except ZeroDivisionError:
    pass
for bad in (lambda: setattr(h, "drops", 5), lambda: setattr(h, "rcvbuf", -1),
            lambda: nflog.open(1), lambda: nflog.open(3, nlbuf=5),
            lambda: nflog.Aggregator(["nope"])):
    try:
        bad()
    except (ValueError, TypeError, nflog.NflogError):
        pass
h.rcvbuf = 1 << 20
h.rcvbuf = 0
assert h.rcvbuf == 1 << 20 and h.kernel_rcvbuf == 2 << 20
def block():
    try:
        h2.next()
    except nflog.NflogClosedError:
        pass
t = threading.Thread(target=block); t.start(); time.sleep(0.3); h2.close(); t.join()
h.close()
rest = list(h)
assert 1 <= len(rest) <= 5 and h.next(wait=False) is None and h.rcvbuf is None
assert recs[0].indev == "vb0" and len(recs[0].hwaddr) == 6  # records outlive the handle
assert list(h) == [] and nflog.Nflog.__new__(nflog.Nflog).queued == 0
agg.clear(); rend.render([(agg, str, None)], 3, fams); del agg, recs, snap, rend, frozen, rest
assert budget.used == 0
print("done", flush=True)
'''


def test_the_extension_under_valgrind_memcheck(tmp_path) -> None:
    """Every entry point of the Python-facing C (py_nflog.c, py_nflogdata.c, py_aggregator.c) under memcheck:
    no invalid access, no uninitialised byte used or sent, nothing definitely lost."""
    valgrind = require_tool("valgrind")
    script = tmp_path / "workload.py"
    script.write_text(VALGRIND_WORKLOAD)
    with Netns("vga") as a, Netns("vgb") as b:
        veth_pair(a, b, "va0", "vb0", "10.95.0.1", "10.95.0.2")
        b.nft("""
        table ip t {
          chain in { type filter hook input priority 0;
            udp dport 7500 counter log prefix "vg" group 1
            udp dport 7500 counter log prefix "vg-meta" group 2
            udp dport 7501 counter log prefix "vg-meta2" group 2
            udp dport 7502 counter log prefix "vg-meta3" group 2
          }
        }""")
        proc = b.popen([valgrind, "--error-exitcode=3", "--leak-check=full",
                        "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
                        "--track-origins=yes", VENV_PYTHON, str(script)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                       env={"PYTHONMALLOC": "malloc", "PATH": os.environ["PATH"]})
        try:
            assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()[-3000:]
            a.send_udp("10.95.0.2", 7500, 150, 40)
            a.send_udp("10.95.0.2", 7501, 25, 40)
            a.send_udp("10.95.0.2", 7502, 25, 40)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = err.decode(errors="replace")
    assert proc.returncode == 0 and out.endswith(b"done\n"), report[-6000:]
    assert "ERROR SUMMARY: 0 errors" in report and "definitely lost: 0 bytes" in report, \
        report[-6000:]
