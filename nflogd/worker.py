"""One worker thread per NFLOG group: bind, aggregate in C, survive failures.

The thread spends its life inside ``Nflog.aggregate`` with the GIL released. It owns the group's
Aggregator for its whole life, so the counters keep counting across socket restarts and reloads
(a change of labels re-keys it in place, see relabel()). Between two aggregate() calls it ticks the
Aggregator: the series budget's clock and its once-a-second sweep. Loss seen in sequence gaps
doubles the receive buffer, up to the configured maximum, as ulogd2 does on ENOBUFS.

Failures, and what each costs:
- A failed read of a socket that still works (EIO or ENOMEM from recvfrom, EINVAL from poll, ...)
  keeps the socket: the group stays bound, the kernel keeps queueing into it, and the sequence
  numbers go on, so whatever the kernel had to drop meanwhile is still counted in ``lost``. The
  read is retried at once, then after a short pause that doubles while the failures go on.
- A socket that is gone (DEAD_SOCKET_ERRNOS), or whose every read failed for
  READ_FAILING_REPLACE seconds, is replaced at once; binding again backs off only when it fails
  again. While no socket holds the group, the kernel logs to nobody: those records cannot be
  counted, so the time is shown instead (``unbound_seconds``, ``bound`` False, a log line when
  the socket fails and one when the group is bound again).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

from . import nflog
from .config import GroupConfig
from .labels import KeySpec

log = logging.getLogger("nflogd.worker")

# How long one aggregate() call may wait for data: with LINGER_SECONDS it bounds the heartbeat
# period (stop() closes the handle, which ends either at once).
WAIT_SECONDS = 0.5
# Once records come, how long one aggregate() call goes on folding in C before the loop turns
# (heartbeat, tick, a pending relabel): under a steady flow the kernel hands over a datagram
# about every 10 ms, and a Python turn per datagram cost about a tenth of the CPU per record.
LINGER_SECONDS = 0.25
# Pauses between attempts after the first one failed (binding again, or reading a kept socket):
# short, since every second without reading risks loss and every second unbound is uncounted.
BIND_RETRY_FIRST = 0.1
BIND_RETRY_MAX = 2.0
READ_RETRY_FIRST = 0.001
READ_RETRY_MAX = 0.5
# A socket whose every read has failed for this long is replaced after all: a new one is the only
# hope left, worth the records that go uncounted while it is swapped.
READ_FAILING_REPLACE = 10.0
# Errors after which the socket cannot deliver again: it is replaced. Anything else (EIO, ENOMEM,
# EINVAL, ...) is taken as passing, and the socket kept, so no queued record and no sequence
# number is lost with it.
DEAD_SOCKET_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK, errno.ENOTCONN, errno.ECONNRESET,
                                errno.EPIPE, errno.ESHUTDOWN, errno.ENODEV, errno.ENXIO,
                                errno.ECONNREFUSED})
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
    restarts: int  # sockets replaced after they failed
    receive_errors: int  # failed reads that kept the socket (nothing uncounted)
    unbound_seconds: float  # time the group had no socket since the worker was made
    heartbeat: float  # time.monotonic() of the worker's last loop turn
    error: str | None


class Churn(NamedTuple):
    """Series churn of a group since its worker was made (counters): Aggregator.churn, summed
    over every aggregator the worker has had, so a reload that replaces one resets none."""

    admitted: int
    expired: int
    displaced: int
    remainder_records: int

    def __add__(self, other: tuple[int, ...]) -> Churn:  # type: ignore[override]
        return Churn(*(a + b for a, b in zip(self, other)))


NO_CHURN = Churn(0, 0, 0, 0)


@dataclass(frozen=True)
class WorkerSnapshot:
    """A worker's record counters copied at one instant, with what they are keyed by: all the
    collector needs to render them, so it never reaches into a live worker."""

    group: int
    group_config: GroupConfig
    spec: KeySpec
    # The counters: a frozen C copy (nflog.Counts: CounterRenderer renders it without a Python
    # object per key; .rows() lists them) or, made by hand, rows (key, packets, bytes).
    rows: nflog.Counts | tuple[tuple[tuple[object, ...], int, int], ...]
    overflow: tuple[int, int]  # (packets, bytes) over the series budget


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

    def __init__(self, cfg: GroupConfig, spec: KeySpec, budget: nflog.SeriesBudget,
                 series_ttl: int = 0) -> None:
        super().__init__(name=f"nflog-group-{cfg.group}", daemon=True)
        self.cfg = cfg
        self._budget = budget
        self._series_ttl = series_ttl
        # One tuple, replaced in one assignment, so a reader never pairs a spec with another's
        # aggregator.
        self._current: tuple[KeySpec, nflog.Aggregator] = (spec, self._new_aggregator(spec))
        # Taken by readers of the aggregator's counters and by _swap_aggregator()/release(), which
        # empty an aggregator: a scrape never reads one after it was emptied (the group's sums
        # would go down for one scrape, a reset to Prometheus).
        self._swap_lock = threading.Lock()
        self._churn_before = NO_CHURN  # of the aggregators replaced
        self._lock = threading.Lock()      # guards _nflog, _totals, _error, cfg swaps
        # Not "_handle": threading.Thread uses that name itself since CPython 3.13.
        self._nflog: nflog.Nflog | None = None
        self._totals = _Totals()
        self._last_message_time: float | None = None  # of retired handles
        self._stop_event = threading.Event()
        self._restarts = 0
        self._receive_errors = 0
        self._read_streak = 0  # failed reads in a row, on the kept socket
        self._read_failing_since = 0.0  # monotonic time of the streak's first failure
        self._error: str | None = None
        self._rcvbuf_target = cfg.rcvbuf
        self._next_spec: KeySpec | None = None
        self._conntrack_ok = True  # until the kernel refuses NFULNL_CFG_F_CONNTRACK
        self._heartbeat = time.monotonic()
        self._unbound_total = 0.0
        self._unbound_since: float | None = None  # monotonic time the group lost its socket

    # -- control, from the daemon's thread ----------------------------------------------------
    def bind(self) -> None:
        """Bind the group now (raises nflog.NflogError/ValueError); start() then reads it."""
        with self._lock:
            try:
                self._nflog = self._open()
            except (nflog.NflogError, ValueError):
                self._unbound_since = time.monotonic()
                raise

    def reconfigure(self, cfg: GroupConfig) -> None:
        """Apply new group settings to the bound socket in place: the group stays bound, so
        nothing the kernel is batching is lost, and the counters keep counting."""
        with self._lock:
            old, self.cfg = self.cfg, cfg
            h = self._nflog
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

    def relabel(self, spec: KeySpec) -> None:
        """Count by another key from now on. Other fields alone: in place, atomic in C under the
        table's lock (what the rows counted moves into the group's remainder, so no record is
        ever in no series). Another address_mask or networks: the worker swaps its Aggregator
        between two reads, carrying the old one's counts into the new one's remainder."""
        old_spec, agg = self._current
        if spec == old_spec:
            return
        if (spec.address_mask, spec.networks) == (old_spec.address_mask, old_spec.networks):
            agg.relabel(spec.fields)
            self._current = (spec, agg)
        else:
            self._next_spec = spec

    def set_series_ttl(self, seconds: int) -> None:
        self._series_ttl = seconds
        self.aggregator.set_policy(ttl=seconds)

    def stop(self) -> None:
        self._stop_event.set()
        with self._lock:
            if self._nflog is not None:
                self._nflog.close()

    @property
    def aggregator(self) -> nflog.Aggregator:
        return self._current[1]

    @property
    def spec(self) -> KeySpec:
        return self._current[0]

    @property
    def churn(self) -> Churn:
        with self._swap_lock:
            return self._churn_before + self.aggregator.churn

    def release(self) -> None:
        """After the worker stopped: give its keys back to the shared budget now (not when the
        last reference to its aggregator goes), its counters' totals kept."""
        with self._swap_lock:
            self._empty(self.aggregator)

    def _empty(self, agg: nflog.Aggregator) -> None:
        """With _swap_lock held: keep agg's churn in _churn_before, then give its keys back to
        the shared budget."""
        self._churn_before += agg.churn
        agg.clear()

    def snapshot(self) -> WorkerSnapshot:
        """The record counters now, frozen, with the spec they were counted by."""
        cfg = self.cfg
        with self._swap_lock:
            spec, agg = self._current
            # Counts: rows and remainder copied at one instant (their sum is everything
            # received), with the fields they were keyed by (a relabel in place may have changed
            # them since _current was read: the collector then shows it all in the remainder).
            counts = agg.counts()
        return WorkerSnapshot(group=cfg.group, group_config=cfg, spec=spec, rows=counts,
                              overflow=counts.overflow)

    def stats(self) -> WorkerStats:
        with self._lock:
            h, t = self._nflog, self._totals
            live = h is not None and not h.closed
            rcvbuf = 0
            if h is not None and live:
                try:
                    rcvbuf = h.kernel_rcvbuf  # the metric is the kernel's figure
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
                restarts=self._restarts, receive_errors=self._receive_errors,
                unbound_seconds=self._unbound_seconds(), heartbeat=self._heartbeat,
                error=self._error)

    def _unbound_seconds(self) -> float:
        since = self._unbound_since
        return self._unbound_total + (time.monotonic() - since if since is not None else 0.0)

    def _mark_bound(self) -> float:
        """Stop the unbound clock (lock held); returns how long this stretch lasted."""
        if self._unbound_since is None:
            return 0.0
        stretch = time.monotonic() - self._unbound_since
        self._unbound_total += stretch
        self._unbound_since = None
        return stretch

    # -- the thread ---------------------------------------------------------------------------
    def _open(self) -> nflog.Nflog:
        cfg = self.cfg

        def bind(conntrack: bool) -> nflog.Nflog:
            return nflog.open(cfg.group, timeout=cfg.timeout, qthresh=cfg.qthresh,
                              nlbuf=cfg.nlbuf, rcvbuf=self._rcvbuf_target,
                              enobufs=nflog.ENOBUFS_DISABLE, copymode=nflog.COPY_PACKET,
                              copyrange=cfg.copy_range, seq=True, conntrack=conntrack)

        # The ct_state label asks for conntrack data; a kernel that cannot send it refuses the
        # whole bind (EOPNOTSUPP): say so once, and count without it (ct_state "").
        want_ct = self._conntrack_ok and "ct_state" in self.spec.fields
        try:
            h = bind(want_ct)
        except nflog.NflogError as e:
            if not (want_ct and e.errno == errno.EOPNOTSUPP):
                raise
            self._conntrack_ok = False
            log.warning("group %d: %s; the ct_state label stays empty", cfg.group, reason(e))
            h = bind(False)
        self._error = None
        return h

    def _retire_handle(self) -> None:
        with self._lock:
            if self._nflog is not None:
                self._nflog.close()
                self._totals.absorb(self._nflog)
                self._last_message_time = (self._nflog.last_message_time
                                           or self._last_message_time)
                self._nflog = None
                if self._unbound_since is None and not self._stop_event.is_set():
                    self._unbound_since = time.monotonic()

    def _new_aggregator(self, spec: KeySpec) -> nflog.Aggregator:
        return nflog.Aggregator(spec.fields, max_keys=NO_KEY_LIMIT, budget=self._budget,
                                address_mask=spec.address_mask, networks=spec.networks,
                                ttl=self._series_ttl)

    def _swap_aggregator(self) -> None:
        """Called by the worker thread only, between two aggregate() calls, so no record is
        folded into an aggregator that is already gone."""
        spec, self._next_spec = self._next_spec, None
        if spec is not None and spec != self.spec:
            new = self._new_aggregator(spec)
            with self._swap_lock:
                # Nothing folds into `old` now (this thread is the only folder): what it counted
                # goes on in the new one's remainder and its churn in _churn_before, both before
                # `old` empties, so no scrape sees a sum or a churn counter go down.
                old = self.aggregator
                counts = nflog.Counts(old)  # rows and remainder at one instant
                new.add_remainder(counts.sum[0] + counts.overflow[0],
                                  counts.sum[1] + counts.overflow[1])
                self._current = (spec, new)
                self._empty(old)

    def run(self) -> None:
        bind_retry = 0.0  # the first attempt to bind again is immediate
        while not self._stop_event.is_set():
            self._heartbeat = time.monotonic()
            self._swap_aggregator()
            self.aggregator.tick()
            h = self._nflog
            if h is None or h.closed:
                if h is not None:
                    self._retire_handle()
                if bind_retry:
                    self._stop_event.wait(bind_retry)
                    if self._stop_event.is_set():
                        break
                try:
                    with self._lock:
                        self._nflog = h = self._open()
                        unbound = self._mark_bound()
                except (nflog.NflogError, ValueError) as e:
                    if self._unbound_since is None:
                        self._unbound_since = time.monotonic()
                    first = not bind_retry
                    self._error = reason(e)
                    bind_retry = min(max(bind_retry * 2, BIND_RETRY_FIRST), BIND_RETRY_MAX)
                    # Once per outage at error level, not once per attempt.
                    (log.error if first else log.debug)(
                        "%s; the group is not bound (its records go uncounted); retrying",
                        self._error)
                    continue
                bind_retry = 0.0
                log.info("group %d: bound%s", self.cfg.group,
                         f" again after {unbound:.3f} s unbound" if self._restarts else "")
            try:
                self._drain(h)
            except nflog.NflogClosedError:
                continue  # stop(), or reconfigure(): the loop decides
            except nflog.NflogError as e:
                failing = time.monotonic() - self._read_failing_since if self._read_streak else 0.0
                if e.errno in DEAD_SOCKET_ERRNOS or failing > READ_FAILING_REPLACE:
                    self._restarts += 1
                    self._error = reason(e)
                    why = os.strerror(e.errno) if e.errno else "no errno"
                    if e.errno not in DEAD_SOCKET_ERRNOS:
                        why += f", every read for {failing:.0f} s"
                    log.error("group %d: socket failed (%s: %s): replacing it; records logged "
                              "while the group is unbound go uncounted", self.cfg.group,
                              self._error, why)
                    self._read_streak = 0
                    self._retire_handle()
                else:
                    self._read_failed(e)
        self._retire_handle()

    def _read_failed(self, e: nflog.NflogError) -> None:
        """A failed read of a socket that is kept: count it, pause a little if it repeats."""
        self._receive_errors += 1
        self._read_streak += 1
        if self._read_streak == 1:
            self._read_failing_since = time.monotonic()
            log.warning("group %d: %s (%s); keeping the socket (the group stays bound, "
                        "sequence numbers count any loss) and reading on", self.cfg.group,
                        reason(e), os.strerror(e.errno) if e.errno else "no errno")
            return  # retry at once
        self._stop_event.wait(min(READ_RETRY_FIRST * 2 ** min(self._read_streak, 20),
                                  READ_RETRY_MAX))

    def _drain(self, h: nflog.Nflog) -> None:
        lost_seen = h.lost
        while not self._stop_event.is_set():
            h.aggregate(self.aggregator, timeout=WAIT_SECONDS, linger=LINGER_SECONDS)
            if self._read_streak:
                log.info("group %d: reading again after %d failed reads", self.cfg.group,
                         self._read_streak)
                self._read_streak = 0
            self._heartbeat = time.monotonic()
            self._swap_aggregator()
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
