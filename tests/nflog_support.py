"""Helpers for the tests of nflogd.nflog (tests/test_nflog*.py) against the real kernel.

Every wait here is bounded: a test that does not get its records fails with what it got, it never
hangs. `hang_guard` covers the calls that block in C (where no Python timer can interrupt them).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import select
import sys
import time
from typing import Iterator

from netns import Netns, require_root, require_tool
from nflogd import nflog

__all__ = ["Netns", "require_root", "require_tool", "open_in", "read_n", "assert_quiet",
           "aggregate_until", "hang_guard", "mac_of", "rule_counts"]


def open_in(ns: Netns, group: int, **kwargs: object) -> nflog.Nflog:
    """Open an NFLOG handle inside ns (the socket stays there when this thread leaves)."""
    with ns.entered():
        return nflog.open(group, **kwargs)  # type: ignore[arg-type]


def read_n(h: nflog.Nflog, n: int, timeout: float = 10.0) -> list[nflog.NflogData]:
    """Exactly n records (fewer within timeout fails), read without ever blocking in C."""
    out: list[nflog.NflogData] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        d = h.next(wait=False)
        if d is not None:
            out.append(d)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {n} records within {timeout} s")
        select.select([h], [], [], min(left, 0.2))
    return out


def assert_quiet(h: nflog.Nflog, wait: float = 0.2) -> None:
    """No further record arrives within `wait` seconds."""
    select.select([h], [], [], wait)
    extra = h.next(wait=False)
    assert extra is None, f"unexpected extra record {extra!r}"


def aggregate_until(h: nflog.Nflog, agg: nflog.Aggregator, records: int,
                    timeout: float = 15.0) -> None:
    """Run h.aggregate(agg) until agg has folded `records` records in all (bounded)."""
    deadline = time.monotonic() + timeout
    while agg.records < records:
        if time.monotonic() > deadline:
            raise AssertionError(f"aggregated {agg.records} of {records} records within {timeout} s")
        h.aggregate(agg, timeout=0.2)


@contextlib.contextmanager
def hang_guard(seconds: float = 60) -> Iterator[None]:
    """Kill the whole run with tracebacks if the block hangs (e.g. blocked in C holding the GIL)."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def mac_of(ns: Netns, dev: str) -> bytes:
    """The MAC address of dev inside ns, as bytes."""
    info = json.loads(ns.run("ip", "-j", "link", "show", "dev", dev).stdout)
    return bytes.fromhex(info[0]["address"].replace(":", ""))


def rule_counts(ns: Netns, *comments: str) -> tuple[int, int]:
    """(packets, bytes) summed over the nft rules with these comments: the ground truth."""
    c = ns.counters()
    missing = [x for x in comments if x not in c]
    assert not missing, f"no counter for rules {missing}; have {sorted(c)}"
    return sum(c[x][0] for x in comments), sum(c[x][1] for x in comments)
