"""The daemon's life: bind the groups, serve, reload on SIGHUP, stop on SIGTERM/SIGINT.

Signals only set flags; the main thread does the work between waits, so a reload never runs inside
a signal handler and never races a scrape. The main thread also feeds the systemd watchdog, and only
while every worker's heartbeat advances.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
import time
from typing import Sequence

from . import nflog
from .collector import Exposition, HealthCollector, RecordCounters, ReloadStatus, fields_for
from .config import Config, ConfigError, GroupConfig, load_config
from .httpserver import MetricsServer
from .ifnames import InterfaceNames
from .notify import Notifier
from .webconfig import WebConfig, WebConfigError, load_web_config
from .worker import GroupWorker, reason

log = logging.getLogger("nflogd")

# A worker whose loop has not turned for this long is stuck (its wait is 0.5 s).
HEARTBEAT_STALE = 5.0
STATUS_INTERVAL = 5.0


class StartupError(Exception):
    """The daemon cannot start: nothing is bound or the endpoint cannot listen."""


class ReloadError(Exception):
    """A valid configuration that cannot be applied (its listen address is unavailable)."""


class Daemon:
    def __init__(self, config: Config, config_path: str | None, web_config_path: str | None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.web_config_path = web_config_path
        self.notifier = notifier or Notifier()
        self.ifnames = InterfaceNames()
        self.reload_status = ReloadStatus()
        self.budget = nflog.SeriesBudget(config.max_series)
        self.workers: dict[int, GroupWorker] = {}
        self._retired_overflow = 0
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self.server: MetricsServer | None = None
        self.exposition = Exposition(
            RecordCounters(self.ifnames),
            HealthCollector(self.worker_list, lambda: self.config, self.reload_status,
                            lambda: self._retired_overflow,
                            lambda: self.server.stats() if self.server else None),
            self.worker_list, lambda: self.config, self.ifnames)

    def worker_list(self) -> Sequence[GroupWorker]:
        return list(self.workers.values())

    # -- start --------------------------------------------------------------------------------
    def _new_worker(self, gcfg: GroupConfig, cfg: Config) -> GroupWorker:
        return GroupWorker(gcfg, fields_for(cfg.labels), self.budget, cfg.series_ttl)

    def _bind_all(self, cfg: Config) -> list[str]:
        """Create and bind a worker per group; returns the errors of groups that did not bind."""
        errors = []
        for gcfg in cfg.groups:
            w = self._new_worker(gcfg, cfg)
            try:
                w.bind()
            except (nflog.NflogError, ValueError) as e:
                errors.append(reason(e))
            self.workers[gcfg.group] = w
        return errors

    def _web_config(self, cfg: Config) -> WebConfig | None:
        path = self.web_config_path or cfg.web_config_file
        return load_web_config(path) if path else None

    def _make_server(self, cfg: Config, web: WebConfig | None) -> MetricsServer:
        return MetricsServer(cfg.listen_host, cfg.listen_port, metrics_path=cfg.metrics_path,
                             render=self.exposition.render, web_config=web)

    def start(self) -> None:
        cfg = self.config
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
        for w in self.workers.values():
            w.start()
        bound = sum(1 for w in self.workers.values() if w.stats().bound)
        log.info("nflogd started: %d/%d groups bound, serving %s", bound, len(self.workers),
                 cfg.metrics_path)
        self.notifier.ready(self._status_text())

    # -- run ----------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        # systemd's watchdog kills with SIGABRT: print every thread's stack to stderr (the journal)
        # first, so the operator sees where the stuck worker hangs; a crash in C alike.
        faulthandler.enable(all_threads=True)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self._stop_requested = True
        self._wake.set()

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload_requested = True
        self._wake.set()

    def run(self) -> None:
        """Serve until a stop signal; returns after a clean shutdown."""
        interval = self.notifier.watchdog_interval
        tick = min(interval, STATUS_INTERVAL) if interval else STATUS_INTERVAL
        last_status = time.monotonic()
        last_received = self._received()
        while not self._stop_requested:
            self._wake.wait(tick)
            self._wake.clear()
            if self._reload_requested and not self._stop_requested:
                self._reload_requested = False
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
                   for w in self.workers.values())

    def _received(self) -> int:
        return sum(w.stats().received for w in self.workers.values())

    def _status_text(self, rate: float | None = None) -> str:
        stats = [w.stats() for w in self.workers.values()]
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
            new = load_config(self.config_path) if self.config_path else self.config
            web = self._web_config(new)
            self._apply(new, web)
        except (ConfigError, WebConfigError, ReloadError) as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            self.reload_status.record(False)
            self.notifier.ready(f"reload failed: {e}")
            return False
        self.reload_status.record(True)
        self.notifier.ready(self._status_text())
        log.info("reloaded: %d groups", len(self.workers))
        return True

    def _apply(self, new: Config, web: WebConfig | None) -> None:
        """Make the running daemon match new. The endpoint goes first: if the server refuses the
        web config or the new address cannot listen, this raises and nothing has changed."""
        old = self.config
        assert self.server is not None
        if (new.listen_host, new.listen_port) != (old.listen_host, old.listen_port):
            server = self._make_server(new, web)
            try:
                server.start()  # the old one keeps serving until the new one listens
            except OSError as e:
                raise ReloadError(reason(e)) from e
            self.server.stop()
            self.server = server
        else:
            self.server.reload(web)  # raises WebConfigError, keeping the old web config
            self.server.set_metrics_path(new.metrics_path)
        self.budget.limit = new.max_series
        fields = fields_for(new.labels)
        wanted = {g.group: g for g in new.groups}
        for group in [g for g in self.workers if g not in wanted]:
            self._retire_worker(group)
        for group, gcfg in wanted.items():
            w = self.workers.get(group)
            if w is not None:
                w.reconfigure(gcfg)  # in place: the group stays bound, nothing is lost
                w.relabel(fields)  # atomic: the old rows' counts move into the remainder
                w.set_series_ttl(new.series_ttl)
                continue
            w = self._new_worker(gcfg, new)
            try:
                w.bind()
            except (nflog.NflogError, ValueError) as e:
                log.error("%s; retrying in the background", reason(e))
            self.workers[group] = w
            w.start()
        self.config = new

    def _retire_worker(self, group: int) -> None:
        w = self.workers.pop(group)
        w.stop()
        w.join(2.0)
        self._retired_overflow += w.aggregator.churn[3]  # records that arrived in its remainder
        w.aggregator.clear()  # give its keys back to the shared budget now, not at garbage collection
        log.info("group %d: removed", group)

    # -- stop ---------------------------------------------------------------------------------
    def _stop_workers(self) -> None:
        for w in self.workers.values():
            w.stop()
        for w in self.workers.values():
            if w.is_alive():
                w.join(1.0)

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        if self.server is not None:
            self.server.stop()
        self._stop_workers()
        log.info("stopped")
