"""The running group workers, by group: changed by the daemon's main thread, read by scrapes.

A scrape runs on the HTTP thread while a reload adds and removes workers. Every change and every
read goes through one lock, so a scrape never iterates a dict that a reload is changing (that
raised "dictionary changed size during iteration" and answered 500), and a removed group's
remainder records move to the retired total in the same step that removes the group, so
nflogd_series_overflow_records_total never dips.
"""

from __future__ import annotations

import threading

from .worker import LINGER_SECONDS, WAIT_SECONDS, GroupWorker

# How long a removal waits for the worker's loop to notice stop(): two of its longest turns.
STOP_WAIT_SECONDS = 2 * (WAIT_SECONDS + LINGER_SECONDS)


class WorkerSet:
    def __init__(self) -> None:
        self._workers: dict[int, GroupWorker] = {}
        self._retired_overflow = 0  # remainder records of the groups removed since start
        self._lock = threading.Lock()

    def add(self, w: GroupWorker) -> None:
        """Add the worker of a group that has none."""
        with self._lock:
            assert w.cfg.group not in self._workers, w.cfg.group
            self._workers[w.cfg.group] = w

    def remove(self, group: int) -> None:
        """Stop and remove the group's worker; its aggregator's keys go back to the shared budget
        now, not when the last reference goes."""
        w = self.get(group)
        assert w is not None, group
        w.stop()
        if w.is_alive():
            w.join(STOP_WAIT_SECONDS)
        with self._lock:
            self._retired_overflow += w.churn.remainder_records
            del self._workers[group]
        w.release()

    def get(self, group: int) -> GroupWorker | None:
        with self._lock:
            return self._workers.get(group)

    def groups(self) -> list[int]:
        with self._lock:
            return list(self._workers)

    def current(self) -> list[GroupWorker]:
        """The workers now, a copy: safe to iterate while a reload changes the set."""
        with self._lock:
            return list(self._workers.values())

    def overflow_records(self) -> int:
        """Records counted in a remainder on arrival, in all groups since start (a counter)."""
        with self._lock:
            return self._retired_overflow + sum(w.churn.remainder_records
                                                for w in self._workers.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._workers)
