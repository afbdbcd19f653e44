"""The daemon's life: bind the groups, serve, reload on SIGHUP, stop on SIGTERM/SIGINT.

No signal handler runs, ever: SIGHUP, SIGTERM and SIGINT stay blocked in every thread (see
block_signals()) and the main thread takes them synchronously with sigtimedwait() between its
other jobs. A handler would interrupt whatever the main thread holds -- a lock inside
threading.Event.set() was enough to hang the daemon on a second signal -- and a signal arriving
between a flag test and a wait would be noticed only at the next tick. Taken synchronously, a stop
is seen at once, a reload never runs inside a signal handler, and signals that arrive during a
reload or during the shutdown simply wait (and die with the process). The main thread also feeds
the systemd watchdog, and only while every worker's heartbeat advances.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import socket
import time
from typing import Callable, Sequence

from . import nflog
from .collector import Exposition, HealthCollector, RecordCounters, ReloadStatus
from .config import Config, ConfigError, GroupConfig, load_config
from .http import MetricsServer
from .ifnames import InterfaceNames
from .notify import Notifier
from .webconfig import WebConfig, WebConfigError, load_web_config
from .worker import GroupWorker, reason
from .workerset import WorkerSet

log = logging.getLogger("nflogd")

# A worker whose loop has not turned for this long is stuck (a turn takes at most its 0.5 s wait
# plus its 0.25 s linger: worker.WAIT_SECONDS, worker.LINGER_SECONDS).
HEARTBEAT_STALE = 5.0
STATUS_INTERVAL = 5.0
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
RELOAD_SIGNAL = signal.SIGHUP
TAKEN_SIGNALS = STOP_SIGNALS | {RELOAD_SIGNAL}


def block_signals() -> None:
    """Block the signals the daemon takes with sigtimedwait(), in this thread and in every thread
    started from it afterwards (threads inherit the mask). Call before starting any thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, TAKEN_SIGNALS)


def take_signals(timeout: float) -> set[int]:
    """The signals that arrived, waiting up to ``timeout`` seconds for the first one.

    Standard signals do not queue: many SIGHUPs sent during one reload are one pending SIGHUP,
    which is what a reload wants (the file is read once more, after the last change).
    """
    info = signal.sigtimedwait(TAKEN_SIGNALS, max(timeout, 0.0))
    got: set[int] = set()
    while info is not None:
        got.add(info.si_signo)
        info = signal.sigtimedwait(TAKEN_SIGNALS, 0)
    return got


class StartupError(Exception):
    """The daemon cannot start: nothing is bound or the endpoint cannot listen."""


class ReloadError(Exception):
    """A valid configuration that cannot be applied (its listen address is unavailable)."""


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None, web_config_path: str | None,
                 notifier: Notifier | None = None, *,
                 overrides: Callable[[Config], Config] = lambda c: c,
                 sockets: Sequence[socket.socket] = ()) -> None:
        # overrides: the command line's flags, applied again to every config a reload reads;
        # sockets: listening sockets from systemd (the listen addresses are then not used).
        self.overrides = overrides
        self.sockets = tuple(sockets)
        self.cfg = cfg
        self.config_path = config_path
        self.web_config_path = web_config_path
        self.notifier = notifier or Notifier()
        self.ifnames = InterfaceNames()
        self.reload_status = ReloadStatus()
        self.budget = nflog.SeriesBudget(cfg.max_series)
        self.workers = WorkerSet()
        self.server: MetricsServer | None = None
        self.exposition = Exposition(
            RecordCounters(self.ifnames),
            HealthCollector(self.workers.current, lambda: self.cfg, self.reload_status,
                            self.workers.overflow_records,
                            lambda: self.server.stats() if self.server else None),
            self.workers.current, lambda: self.cfg, self.ifnames)

    # -- start --------------------------------------------------------------------------------
    def _new_worker(self, group_cfg: GroupConfig, cfg: Config) -> GroupWorker:
        return GroupWorker(group_cfg, cfg.key_spec, self.budget, cfg.series_ttl)

    def _bind_all(self, cfg: Config) -> list[str]:
        """Create and bind a worker per group; returns the errors of groups that did not bind."""
        errors = []
        for group_cfg in cfg.groups:
            w = self._new_worker(group_cfg, cfg)
            try:
                w.bind()
            except (nflog.NflogError, ValueError) as e:
                errors.append(reason(e))
            self.workers.add(w)
        return errors

    def _web_config(self, cfg: Config) -> WebConfig | None:
        path = self.web_config_path or cfg.web_config_file
        return load_web_config(path) if path else None

    def _make_server(self, cfg: Config, web: WebConfig | None) -> MetricsServer:
        # With systemd's sockets those are the endpoint; the config's addresses are not bound.
        return MetricsServer(() if self.sockets else cfg.listen_addresses, sockets=self.sockets,
                             metrics_path=cfg.metrics_path, render=self.exposition.render,
                             web_config=web, readiness=self.readiness)

    def readiness(self) -> tuple[bool, str]:
        """For /-/ready: every configured group bound (cheap: it runs on the HTTP event loop)."""
        unbound = sorted(w.cfg.group for w in self.workers.current() if not w.stats().bound)
        if unbound:
            return False, "groups not bound: " + ", ".join(map(str, unbound))
        return True, ""

    def start(self) -> None:
        # systemd's watchdog kills with SIGABRT: print every thread's stack to stderr (the journal)
        # first, so the operator sees where the stuck worker hangs; a crash in C alike.
        faulthandler.enable(all_threads=True)
        cfg = self.cfg
        web = self._web_config(cfg)
        errors = self._bind_all(cfg)
        if len(errors) == len(cfg.groups):
            self._stop_workers()
            raise StartupError("no NFLOG group could be bound: " + "; ".join(errors))
        for error in errors:
            log.error("%s; retrying in the background", error)
        self.server = self._make_server(cfg, web)
        try:
            self.server.start()
        except OSError as e:
            self._stop_workers()
            raise StartupError(str(e)) from e  # it names the address already
        for w in self.workers.current():
            w.start()
        bound = sum(1 for w in self.workers.current() if w.stats().bound)
        log.info("nflogd started: %d/%d groups bound, serving %s", bound, len(self.workers),
                 cfg.metrics_path)
        self.notifier.ready(self._status_text())

    # -- run ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until a stop signal; returns after a clean shutdown.

        The signals in TAKEN_SIGNALS must be blocked (block_signals()) in every thread.
        """
        interval = self.notifier.watchdog_interval
        tick = min(interval, STATUS_INTERVAL) if interval else STATUS_INTERVAL
        last_status = time.monotonic()
        last_received = self._received()
        while True:
            got = take_signals(tick)
            if got & STOP_SIGNALS:
                break  # a SIGHUP that came with it is dropped: no reload on the way out
            if RELOAD_SIGNAL in got:
                self.reload()
            if interval and self.workers_alive():
                self.notifier.watchdog()
            now = time.monotonic()
            if now - last_status >= STATUS_INTERVAL:
                received = self._received()
                rate = (received - last_received) / (now - last_status)
                self.notifier.status(self._status_text(rate))
                last_status, last_received = now, received
        self.shutdown()

    def workers_alive(self) -> bool:
        now = time.monotonic()
        return all(now - w.stats().heartbeat < HEARTBEAT_STALE and w.is_alive()
                   for w in self.workers.current())

    def _received(self) -> int:
        return sum(w.stats().received for w in self.workers.current())

    def _status_text(self, rate: float | None = None) -> str:
        stats = [w.stats() for w in self.workers.current()]
        bound = sum(1 for s in stats if s.bound)
        text = f"{bound}/{len(stats)} groups bound, lost {sum(s.lost for s in stats)}"
        if rate is not None:
            text += f", {rate:.0f} records/s"
        return text

    # -- reload -------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Apply the config file again; a bad file changes nothing and says why."""
        self.notifier.reloading()
        log.info("reloading %s", self.config_path or "built-in defaults")
        try:
            cfg = self.overrides(load_config(self.config_path)) if self.config_path else self.cfg
            web = self._web_config(cfg)
            self._apply(cfg, web)
        except (ConfigError, WebConfigError, ReloadError) as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            self.reload_status.record(False)
            self.notifier.ready(f"reload failed: {e}")
            return False
        self.reload_status.record(True)
        self.notifier.ready(self._status_text())
        log.info("reloaded: %d groups", len(self.workers))
        return True

    def _apply(self, cfg: Config, web: WebConfig | None) -> None:
        """Make the running daemon match cfg. The endpoint goes first: if the server refuses the
        web config or the new address cannot listen, this raises and nothing has changed."""
        old = self.cfg
        assert self.server is not None
        if cfg.listen_addresses != old.listen_addresses and not self.sockets:
            server = self._make_server(cfg, web)
            try:
                server.start()  # the old one keeps serving until the new one listens
            except OSError as e:
                raise ReloadError(reason(e)) from e
            self.server.stop()
            self.server = server
        else:
            self.server.reload(web)  # raises WebConfigError, keeping the old web config
            self.server.set_metrics_path(cfg.metrics_path)
        self.budget.limit = cfg.max_series
        spec = cfg.key_spec
        wanted = {g.group: g for g in cfg.groups}
        for group in [g for g in self.workers.groups() if g not in wanted]:
            self.workers.remove(group)
            log.info("group %d: removed", group)
        for group, group_cfg in wanted.items():
            w = self.workers.get(group)
            if w is not None:
                w.reconfigure(group_cfg)  # in place: the group stays bound, nothing is lost
                w.relabel(spec)  # fields only: atomic, the old rows' counts move to the remainder
                w.set_series_ttl(cfg.series_ttl)
                continue
            w = self._new_worker(group_cfg, cfg)
            try:
                w.bind()
            except (nflog.NflogError, ValueError) as e:
                log.error("%s; retrying in the background", reason(e))
            self.workers.add(w)
            w.start()
        self.cfg = cfg

    # -- stop ---------------------------------------------------------------------------------
    def _stop_workers(self) -> None:
        for w in self.workers.current():
            w.stop()
        for w in self.workers.current():
            if w.is_alive():
                w.join(1.0)

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        if self.server is not None:
            self.server.stop()
        self._stop_workers()
        log.info("stopped")
