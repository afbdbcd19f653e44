"""Turn worker snapshots into Prometheus exposition text.

Two parts, both reading copies taken by the workers' aggregators (nothing here runs per packet):
- the record counters ``nflog_packets_total`` / ``nflog_bytes_total``, written in C from the
  snapshots' frozen counts (``nflog.CounterRenderer``) with each key's label string built here once
  and cached, because a scrape of 100k series must take milliseconds;
- nflogd's own health, as a prometheus_client custom collector yielding metric families.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import (
    generate_latest as _openmetrics_untyped,
)

from . import __version__, labels
from .config import Config, classify
from .http.stats import ServerStats
from .ifnames import InterfaceNames
from .nflog import LIBNETFILTER_LOG_VERSION, CounterRenderer
from .worker import GroupWorker, WorkerSnapshot, WorkerStats

# prometheus-client leaves this one unannotated (0.26); typed here once, so strict mypy passes.
generate_openmetrics: Callable[[CollectorRegistry], bytes] = _openmetrics_untyped

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# What Prometheus asks for first; prometheus_client 0.16 (Debian 12) still names version 0.0.1.
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# OpenMetrics names a counter family without the _total its samples carry.
_OM_COUNTER_META = re.compile(rb"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)_total ", re.MULTILINE)
OVERFLOW = labels.OVERFLOW
FAMILIES = ((b"# HELP nflog_packets_total Packets logged by netfilter NFLOG rules.\n"
             b"# TYPE nflog_packets_total counter\n", b"nflog_packets_total"),
            (b"# HELP nflog_bytes_total Bytes of the packets logged (IP total length).\n"
             b"# TYPE nflog_bytes_total counter\n", b"nflog_bytes_total"))


def _no_labels(key: object) -> str:
    """The label callable of a part without rows (never called)."""
    raise AssertionError(f"no rows to name, got {key!r}")


class RecordCounters:
    """Renders the record counters of worker snapshots, merging rows that map to the same labels.

    Label strings come from labels.KeyRenderer, built once per key and cached in C per aggregator
    entry until the config or the interface names change."""

    def __init__(self, ifnames: InterfaceNames) -> None:
        self._ifnames = ifnames
        # Label strings per key, cached in C while the key lives (nflog.CounterRenderer).
        self._renderer = CounterRenderer()

    def context(self, cfg: Config) -> labels.LabelContext:
        actions = cfg.actions
        return labels.LabelContext(ifname=self._ifnames.name,
                                   action=lambda prefix: classify(prefix, actions))

    def renderer(self, cfg: Config, snap: WorkerSnapshot) -> labels.KeyRenderer:
        """The function that turns one key of this snapshot into its label string."""
        return labels.KeyRenderer(cfg.labels, snap.spec.fields, self.context(cfg),
                                  snap.group_config.labels)

    def render(self, cfg: Config, snapshots: Sequence[WorkerSnapshot], tail: bytes = b"",
               families: tuple[tuple[bytes, bytes], tuple[bytes, bytes]] = FAMILIES) -> bytes:
        """The record counters as exposition text (heads from ``families``: the text format's or
        OpenMetrics'), then ``tail``, in one buffer written in C."""
        tag = (id(cfg), self._ifnames.generation)  # names, labels or config changed: rebuild
        wanted = cfg.key_spec
        parts: list[tuple[object, ...]] = []
        for snap in snapshots:
            over = snap.overflow  # taken with the rows, at one instant
            rows = snap.rows
            fields = getattr(rows, "fields", None)
            if snap.spec != wanted or (fields is not None and fields != snap.spec.fields):
                # A reload is between relabelling the aggregators and publishing its config:
                # the rows cannot be named yet, so the group's whole count shows in its
                # remainder series for this scrape (sums stay exact and nothing goes down).
                got: tuple[int, int]
                if fields is not None:
                    got = rows.sum  # type: ignore[union-attr]
                else:  # rows made in Python
                    plain: list[Any] = list(rows)  # type: ignore[arg-type]
                    got = (sum(int(r[1]) for r in plain), sum(int(r[2]) for r in plain))
                over = (over[0] + got[0], over[1] + got[1])
                parts.append(((), _no_labels, labels.overflow_label_string(
                    cfg.labels, snap.group, snap.group_config.labels), over))
                continue
            parts.append((rows, self.renderer(cfg, snap),
                          labels.overflow_label_string(cfg.labels, snap.group,
                                                       snap.group_config.labels),
                          over))
        return self._renderer.render(parts, tag, families, tail)


class ReloadStatus:
    """The outcome of the last configuration (re)load, for the blackbox-style reload metrics."""

    def __init__(self) -> None:
        self.successful = True
        self.success_time = time.time()

    def record(self, ok: bool) -> None:
        if ok:
            self.success_time = time.time()  # before the flag: a scrape never pairs 1 with an old time
        self.successful = ok


class HealthCollector:
    """nflogd's own metrics, per group where it applies; a prometheus_client custom collector."""

    def __init__(self, workers: Callable[[], Sequence[GroupWorker]], config: Callable[[], Config],
                 reload_status: ReloadStatus, overflow_records: Callable[[], int],
                 server_stats: Callable[[], ServerStats | None] = lambda: None) -> None:
        self._workers = workers
        self._server_stats = server_stats
        self._config = config
        self._reload = reload_status
        self._overflow_records = overflow_records

    def collect(self) -> Iterator[Metric]:
        workers = self._workers()
        stats: list[WorkerStats] = [w.stats() for w in workers]

        def per_group(family: CounterMetricFamily | GaugeMetricFamily,
                      value: Callable[[WorkerStats], float | None]) -> Metric:
            for s in stats:
                v = value(s)
                if v is not None:
                    family.add_metric([str(s.group)], v)
            return family

        g = ["group"]
        yield per_group(CounterMetricFamily(
            "nflogd_messages_received", "Records received from the kernel.", labels=g),
            lambda s: s.received)
        yield per_group(CounterMetricFamily(
            "nflogd_messages_lost", "Records lost between the kernel and nflogd, exact from "
            "sequence gaps.", labels=g), lambda s: s.lost)
        yield per_group(CounterMetricFamily(
            "nflogd_enobufs", "ENOBUFS errors seen on the group's socket.", labels=g),
            lambda s: s.enobufs)
        yield per_group(CounterMetricFamily(
            "nflogd_truncated_datagrams", "Datagrams larger than the receive buffer, discarded.",
            labels=g), lambda s: s.truncated)
        yield per_group(CounterMetricFamily(
            "nflogd_decode_errors", "Malformed NFLOG messages skipped.", labels=g),
            lambda s: s.decode_errors)
        yield per_group(CounterMetricFamily(
            "nflogd_worker_restarts", "Sockets replaced after they failed (the group was unbound "
            "meanwhile).", labels=g),
            lambda s: s.restarts)
        yield per_group(CounterMetricFamily(
            "nflogd_receive_errors", "Failed reads that kept the socket bound: retried, any loss "
            "still counted in nflogd_messages_lost_total.", labels=g),
            lambda s: s.receive_errors)
        yield per_group(CounterMetricFamily(
            "nflogd_group_unbound_seconds", "Seconds the group had no socket: records logged "
            "then reached nobody and are not counted anywhere.", labels=g),
            lambda s: s.unbound_seconds)
        yield per_group(GaugeMetricFamily(
            "nflogd_receive_buffer_bytes", "Socket receive buffer of the group as the kernel reports "
            "it (twice the size asked for: the kernel's bookkeeping).", labels=g),
            lambda s: s.rcvbuf if s.bound else None)
        yield per_group(GaugeMetricFamily(
            "nflogd_last_message_timestamp_seconds", "Unix time of the last record received.",
            labels=g), lambda s: s.last_message_time)
        yield per_group(GaugeMetricFamily(
            "nflogd_group_bound", "1 when the group is bound and its worker is reading it.",
            labels=g), lambda s: 1 if s.bound else 0)

        cfg = self._config()
        churn = [(str(w.cfg.group), w.churn) for w in workers]
        budget_used = sum(w.aggregator.keys for w in workers)
        overflow = self._overflow_records()
        yield GaugeMetricFamily("nflogd_series", "Distinct label sets in use.", value=budget_used)
        yield GaugeMetricFamily("nflogd_series_limit", "The max_series limit.", value=cfg.max_series)
        yield CounterMetricFamily("nflogd_series_overflow_records",
                                  "Records counted in the remainder (__overflow__) series on "
                                  "arrival because their label set had no series.", value=overflow)
        for name, index, text in (
                ("admitted", 0, "Series created: label sets given a place in max_series."),
                ("expired", 1, ("Series ended after series_ttl without a record; their counts "
                                "moved into the group's __overflow__ series.")),
                ("displaced", 2, ("Series ended to make room for a heavier label set; their "
                                  "counts moved into the group's __overflow__ series."))):
            family = CounterMetricFamily(f"nflogd_series_{name}", text, labels=["group"])
            for group, c in churn:
                family.add_metric([group], c[index])
            yield family
        yield GaugeMetricFamily("nflogd_config_last_reload_successful",
                                "1 when the last configuration load succeeded.",
                                value=1 if self._reload.successful else 0)
        yield GaugeMetricFamily("nflogd_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last successful configuration load.",
                                value=self._reload.success_time)
        yield from self._http(self._server_stats())
        info = GaugeMetricFamily("nflogd_build_info", "nflogd build information; always 1.",
                                 labels=["version", "python_version", "libnetfilter_log"])
        info.add_metric([__version__, platform.python_version(), LIBNETFILTER_LOG_VERSION], 1)
        yield info


    @staticmethod
    def _http(st: ServerStats | None) -> Iterator[Metric]:
        if st is None:
            return
        requests = CounterMetricFamily("nflogd_http_requests", "HTTP requests answered, by status "
                                       "code.", labels=["code"])
        for code, n in sorted(st.requests.items()):
            requests.add_metric([str(code)], n)
        yield requests
        yield CounterMetricFamily("nflogd_http_connections_rejected",
                                  "Connections refused or evicted at the connection cap.",
                                  value=st.connections_rejected + st.connections_evicted)
        yield CounterMetricFamily("nflogd_http_auth_failures", "Requests with missing or wrong "
                                  "basic-auth credentials.", value=st.auth_failures)
        yield CounterMetricFamily("nflogd_http_tls_handshake_failures", "TLS handshakes that "
                                  "failed or timed out.", value=st.tls_handshake_failures)
        yield CounterMetricFamily("nflogd_tls_certificate_reload_failures", "Changed certificate "
                                  "or key files that did not load (the old ones keep serving).",
                                  value=st.tls_reload_failures)


class Exposition:
    """Everything a scrape returns: the record counters, then the registry's families."""

    def __init__(self, counters: RecordCounters, health: HealthCollector,
                 workers: Callable[[], Sequence[GroupWorker]], config: Callable[[], Config],
                 ifnames: InterfaceNames) -> None:
        self._counters = counters
        self._workers = workers
        self._config = config
        self._ifnames = ifnames
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(health)
        ProcessCollector(registry=self.registry)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The body and content type for a scrape sending `accept`: OpenMetrics 1.0.0 when it
        asks for it (ending in # EOF), Prometheus text 0.0.4 otherwise."""
        self._ifnames.refresh()
        cfg, snapshots = self._config(), [w.snapshot() for w in self._workers()]
        # The registry's families go into the counters' buffer: one copy of a large body, not two.
        if wants_openmetrics(accept):
            return (self._counters.render(cfg, snapshots, generate_openmetrics(self.registry),
                                          FAMILIES_OPENMETRICS), OPENMETRICS_CONTENT_TYPE)
        return self._counters.render(cfg, snapshots, generate_latest(self.registry)), CONTENT_TYPE


def openmetrics_counters(text: bytes) -> bytes:
    """Hand-rendered counter families in OpenMetrics: the family is named without _total (its
    samples keep it); no _created, since a series' creation time is not tracked."""
    return _OM_COUNTER_META.sub(rb"# \1 \2 ", text)


# The record counters' heads in OpenMetrics, derived from the text format's.
FAMILIES_OPENMETRICS = ((openmetrics_counters(FAMILIES[0][0]), FAMILIES[0][1]),
                        (openmetrics_counters(FAMILIES[1][0]), FAMILIES[1][1]))


def wants_openmetrics(accept: str | None) -> bool:
    """True when the Accept header lists application/openmetrics-text with a q above 0."""
    for item in (accept or "").split(","):
        media, *params = item.split(";")
        if media.strip().lower() != "application/openmetrics-text":
            continue
        for p in params:
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    return float(v) > 0
                except ValueError:
                    return False
        return True
    return False
