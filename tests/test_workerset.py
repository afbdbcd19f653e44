"""The daemon's set of group workers, read by a scrape that never stops while reloads add and
remove groups (in-process: the race is between two threads of one interpreter)."""

from __future__ import annotations

import sys
import threading

from nflogd import nflog
from nflogd.config import GroupConfig, default_config
from nflogd.worker import GroupWorker
from nflogd.workerset import WorkerSet

RELOADS = 20000


def test_scrapes_never_fail_while_reloads_add_and_remove_groups() -> None:
    """A scrape iterated the workers' dict while a reload added a group to it: "dictionary
    changed size during iteration", answered as a 500. Every read is now of a copy made under
    the set's lock."""
    budget = nflog.SeriesBudget(100)
    spec = default_config().key_spec
    workers = WorkerSet()
    failures: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def scrape_all_the_time() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                workers.overflow_records()
                for w in workers.current():
                    w.churn
            except Exception as e:  # noqa: BLE001 -- reported by the assertion below
                failures.append(e)
                return
            reads += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch at almost every bytecode: each window gets its chances
    scraper = threading.Thread(target=scrape_all_the_time)
    scraper.start()
    try:
        for i in range(RELOADS):
            workers.add(GroupWorker(GroupConfig(group=i), spec, budget))
            if len(workers) > 4:
                workers.remove(workers.groups()[0])
    finally:
        stop.set()
        scraper.join()
        sys.setswitchinterval(interval)
    assert not failures, f"a scrape failed: {failures[0]!r}"
    assert reads > 0
    assert workers.groups() == list(range(RELOADS - 4, RELOADS))
    assert budget.used == 0
