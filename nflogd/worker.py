"""One worker thread per NFLOG group: bind, aggregate in C, survive failures.

The thread spends its life inside ``Nflog.aggregate`` with the GIL released. It owns the group's
Aggregator for its whole life, so the counters keep counting across socket restarts and reloads
(a change of labels re-keys it in place, see relabel()). Between two aggregate() calls it ticks the
Aggregator: the series budget's clock and its once-a-second sweep. Loss seen in sequence gaps
doubles the receive buffer, up to the configured maximum, as ulogd2 does on ENOBUFS.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from . import nflog
from .config import GroupConfig

log = logging.getLogger("nflogd.worker")

# How long one aggregate() call may wait: bounds the heartbeat period and reaction to stop().
WAIT_SECONDS = 0.5
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# The shared SeriesBudget (max_series over all groups) is the limit, not a per-group one.
NO_KEY_LIMIT = 2**32 - 2


def reason(e: Exception) -> str:
    """An error's message without OSError's "[Errno N]" prefix (the text already says why)."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


@dataclass(frozen=True)
class WorkerStats:
    """What the collector and the watchdog read about a worker, copied at one instant."""

    group: int
    bound: bool
    received: int
    lost: int
    enobufs: int
    truncated: int
    decode_errors: int
    rcvbuf: int
    last_message_time: float | None
    restarts: int
    heartbeat: float  # time.monotonic() of the worker's last loop turn
    error: str | None


class _Totals:
    """Counters of closed handles, so the exported totals never go backwards on a restart."""

    def __init__(self) -> None:
        self.received = self.lost = self.enobufs = self.truncated = self.decode_errors = 0

    def absorb(self, h: nflog.Nflog) -> None:
        self.received += h.received
        self.lost += h.lost
        self.enobufs += h.drops
        self.truncated += h.truncated
        self.decode_errors += h.decode_errors


class _NoHandle:
    """Zero counters, for a worker that has no socket at the moment."""

    received = lost = drops = truncated = decode_errors = 0
    last_message_time = None


_NO_HANDLE = _NoHandle()


class GroupWorker(threading.Thread):
    """Reads one group into its Aggregator until stop() is called."""

    def __init__(self, cfg: GroupConfig, fields: tuple[str, ...],
                 budget: nflog.SeriesBudget, series_ttl: int = 0) -> None:
        super().__init__(name=f"nflog-group-{cfg.group}", daemon=True)
        self.cfg = cfg
        self.aggregator = nflog.Aggregator(fields, max_keys=NO_KEY_LIMIT, budget=budget,
                                           ttl=series_ttl)
        self._lock = threading.Lock()      # guards _handle, _totals, _error, cfg swaps
        self._handle: nflog.Nflog | None = None
        self._totals = _Totals()
        self._last_message_time: float | None = None  # of retired handles
        self._stop_event = threading.Event()
        self._restarts = 0
        self._error: str | None = None
        self._rcvbuf_target = cfg.rcvbuf
        self._heartbeat = time.monotonic()
        # For testing the watchdog only: this group's worker stops beating once running.
        self._stall = os.environ.get("NFLOGD_TEST_STALL_GROUP") == str(cfg.group)

    # -- control, from the daemon's thread ----------------------------------------------------
    def bind(self) -> None:
        """Bind the group now (raises nflog.NflogError/ValueError); start() then reads it."""
        with self._lock:
            self._handle = self._open()

    def reconfigure(self, cfg: GroupConfig) -> None:
        """Apply new group settings to the bound socket in place: the group stays bound, so
        nothing the kernel is batching is lost, and the counters keep counting."""
        with self._lock:
            old, self.cfg = self.cfg, cfg
            h = self._handle
            if h is None or h.closed:
                return  # the next bind uses the new settings
            try:
                if (cfg.qthresh, cfg.timeout, cfg.nlbuf, cfg.copy_range) != (
                        old.qthresh, old.timeout, old.nlbuf, old.copy_range):
                    h.configure(timeout=cfg.timeout, qthresh=cfg.qthresh, nlbuf=cfg.nlbuf,
                                copyrange=cfg.copy_range)
                if (cfg.rcvbuf, cfg.rcvbuf_max) != (old.rcvbuf, old.rcvbuf_max):
                    self._rcvbuf_target = min(max(cfg.rcvbuf, self._rcvbuf_target), cfg.rcvbuf_max)
                    h.rcvbuf = self._rcvbuf_target
            except nflog.NflogError as e:
                log.error("group %d: cannot apply the new settings in place (%s); re-binding",
                          cfg.group, reason(e))
                h.close()  # wakes aggregate(); the loop binds again with the new settings

    def relabel(self, fields: tuple[str, ...]) -> None:
        """Count by other fields from now on. Atomic in C, under the table's lock: what the rows
        counted moves into the group's remainder, so no record is ever in no series."""
        if fields != self.aggregator.fields:
            self.aggregator.relabel(fields)

    def set_series_ttl(self, seconds: int) -> None:
        self.aggregator.set_policy(ttl=seconds)

    def stop(self) -> None:
        self._stop_event.set()
        with self._lock:
            if self._handle is not None:
                self._handle.close()

    def stats(self) -> WorkerStats:
        with self._lock:
            h, t = self._handle, self._totals
            live = h is not None and not h.closed
            rcvbuf = 0
            if live:
                try:
                    rcvbuf = h.rcvbuf
                except nflog.NflogError:
                    live = False
            # A closed handle still counts until _retire_handle() moves its counters into the
            # totals (under this lock): the exported counters never dip.
            cur = h if h is not None else _NO_HANDLE
            return WorkerStats(
                group=self.cfg.group, bound=live,
                received=t.received + cur.received, lost=t.lost + cur.lost,
                enobufs=t.enobufs + cur.drops, truncated=t.truncated + cur.truncated,
                decode_errors=t.decode_errors + cur.decode_errors, rcvbuf=rcvbuf,
                last_message_time=cur.last_message_time or self._last_message_time,
                restarts=self._restarts, heartbeat=self._heartbeat, error=self._error)

    # -- the thread ---------------------------------------------------------------------------
    def _open(self) -> nflog.Nflog:
        c = self.cfg
        h = nflog.open(c.group, timeout=c.timeout, qthresh=c.qthresh, nlbuf=c.nlbuf,
                       rcvbuf=self._rcvbuf_target, enobufs=nflog.ENOBUFS_DISABLE,
                       copymode=nflog.COPY_PACKET, copyrange=c.copy_range, seq=True)
        self._error = None
        return h

    def _retire_handle(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._totals.absorb(self._handle)
                self._last_message_time = (self._handle.last_message_time
                                           or self._last_message_time)
                self._handle = None

    def run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop_event.is_set():
            self._heartbeat = time.monotonic()
            self.aggregator.tick()
            h = self._handle
            if h is None or h.closed:
                if h is not None:
                    self._retire_handle()
                try:
                    with self._lock:
                        self._handle = h = self._open()
                    backoff = BACKOFF_FIRST
                    log.info("group %d: bound", self.cfg.group)
                except (nflog.NflogError, ValueError) as e:
                    self._error = reason(e)
                    log.error("%s; retrying in %.0f s", self._error, backoff)
                    self._stop_event.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
            try:
                self._drain(h)
            except nflog.NflogClosedError:
                continue  # stop(), or reconfigure(): the loop decides
            except nflog.NflogError as e:
                self._restarts += 1
                self._error = reason(e)
                log.error("group %d: socket failed: %s; restarting in %.0f s", self.cfg.group,
                          self._error, backoff)
                self._retire_handle()
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        self._retire_handle()

    def _drain(self, h: nflog.Nflog) -> None:
        lost_seen = h.lost
        while not self._stop_event.is_set():
            if self._stall:
                self._stop_event.wait()  # simulated hang: no heartbeat
                return
            h.aggregate(self.aggregator, timeout=WAIT_SECONDS)
            self._heartbeat = time.monotonic()
            self.aggregator.tick()  # the budget's clock and sweep: once a call, not per record
            if h.lost != lost_seen:
                lost_seen = h.lost
                self._grow_rcvbuf(h)

    def _grow_rcvbuf(self, h: nflog.Nflog) -> None:
        limit = self.cfg.rcvbuf_max
        if self._rcvbuf_target >= limit:
            return
        self._rcvbuf_target = min(self._rcvbuf_target * 2, limit)
        try:
            h.rcvbuf = self._rcvbuf_target
            log.warning("group %d: %d records lost so far; receive buffer raised to %d bytes",
                        self.cfg.group, h.lost, self._rcvbuf_target)
        except nflog.NflogError as e:
            log.warning("group %d: cannot raise the receive buffer: %s", self.cfg.group, e)
