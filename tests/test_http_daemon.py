"""The endpoint of the real daemon: OpenMetrics negotiation (text checked by promtool,
OpenMetrics by prometheus_client's strict parser, counts exact against nft), /-/healthy, /-/ready."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request

from conftest import RunningDaemon, promtool_check
from netns import VENV_PYTHON, Netns
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_families,
)

# What Prometheus 2.x sends first
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
OM_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def get(d: RunningDaemon, path: str, accept: str | None = None) -> tuple[int, str, str]:
    with d.ns.entered():
        req = urllib.request.Request(f"http://127.0.0.1:{d.port}{path}",
                                     headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read().decode()


def _rules(ns: Netns) -> None:
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0;\n"
           'udp dport 5001 counter log prefix "drop a" group 10 comment "a"\n'
           'udp dport 5002 counter log prefix "drop b" group 10 comment "b"\n }\n}\n')


def test_openmetrics_and_text_are_both_valid_and_exact(make_netns, start_daemon) -> None:
    ns = make_netns("om")
    _rules(ns)
    d = start_daemon(ns, "groups:\n  - group: 10\n    timeout: 0.2\n")
    ns.send_udp("127.0.0.1", 5001, 5, 10)
    ns.send_udp("127.0.0.1", 5002, 3, 20)
    counters = ns.counters()
    d.wait_for(lambda s: s.total("nflog_packets_total") >= 8)

    status, ctype, text = get(d, "/metrics")
    assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert "# EOF" not in text
    promtool_check(text)

    status, ctype, om = get(d, "/metrics", PROMETHEUS_ACCEPT)
    assert (status, ctype) == (200, OM_TYPE)
    assert om.endswith("# EOF\n") and om.count("# EOF") == 1
    assert "# TYPE nflog_packets counter\n" in om and "# TYPE nflog_bytes counter\n" in om
    assert "_total counter" not in om  # OpenMetrics names the family without _total
    # promtool 2.42 (Debian 12) parses only the text format ("no help text" for every OpenMetrics
    # counter family): OpenMetrics is checked by prometheus_client's strict parser instead, and
    # by the real Prometheus in test_service_live (which asks for OpenMetrics first).
    families = {f.name: f for f in om_families(om)}  # strict: raises on any error
    assert families["nflog_packets"].type == "counter"
    packets = {s.labels["prefix"]: s.value for s in families["nflog_packets"].samples}
    nbytes = {s.labels["prefix"]: s.value for s in families["nflog_bytes"].samples}
    assert packets == {"drop a": counters["a"][0], "drop b": counters["b"][0]}
    assert nbytes == {"drop a": counters["a"][1], "drop b": counters["b"][1]}
    created = [s for f in families.values() for s in f.samples if s.name.endswith("_created")]
    assert not created  # no counter here has a meaningful creation time
    # a client that refuses OpenMetrics (q=0) gets text
    assert get(d, "/metrics", "application/openmetrics-text;q=0,text/plain")[1].startswith(
        "text/plain")


def test_healthy_and_ready(make_netns, start_daemon) -> None:
    ns = make_netns("rdy")
    holder = ns.popen([VENV_PYTHON, "-c", "from nflogd import nflog; h = nflog.open(7); "
                       "print('bound', flush=True); import time; time.sleep(60)"],
                      stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"bound\n"
        d = start_daemon(ns, "groups:\n  - group: 7\n  - group: 8\n")
        assert get(d, "/-/healthy")[0] == 200
        status, _, body = get(d, "/-/ready")
        assert status == 503 and "groups not bound: 7" in body, body
        landing = get(d, "/")[2]
        assert 'href="/-/healthy"' in landing and 'href="/-/ready"' in landing
    finally:
        holder.kill()
        holder.wait()
    # the group is free now: the worker's retry binds it and the daemon becomes ready
    d.wait_for(lambda s: s.value("nflogd_group_bound", group="7") == 1, timeout=15)
    status, _, body = get(d, "/-/ready")
    assert status == 200, body
