"""The shipped service files, checked by the real tools: systemd-analyze, promtool, nft, iptables-restore.

A missing tool fails the test (never skips): a check that silently did not run is worse than none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from netns import Netns, require_root, unused_uids

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "nflogd.service"
INSTALL = REPO / "systemd" / "install.sh"
CONFIG = REPO / "config"
EXPOSURE_MAX = 1.5

# Every metric name in SPEC.md that rules and dashboards may use; `up` is Prometheus's own.
SPEC_METRICS = {
    "nflog_packets_total", "nflog_bytes_total",
    "nflogd_messages_received_total", "nflogd_messages_lost_total", "nflogd_enobufs_total",
    "nflogd_truncated_datagrams_total", "nflogd_decode_errors_total", "nflogd_receive_buffer_bytes",
    "nflogd_last_message_timestamp_seconds", "nflogd_group_bound", "nflogd_worker_restarts_total",
    "nflogd_receive_errors_total", "nflogd_group_unbound_seconds_total",
    "nflogd_series", "nflogd_series_limit", "nflogd_series_overflow_records_total",
    "nflogd_series_admitted_total", "nflogd_series_expired_total", "nflogd_series_displaced_total",
    "nflogd_config_last_reload_successful", "nflogd_config_last_reload_success_timestamp_seconds",
    "nflogd_build_info",
}
_METRIC_RE = re.compile(r"(?<![\w:])((?:nflogd?|process)_[a-z0-9_]+|up)(?![\w:])")


def tool(name: str, package: str) -> str:
    """The path of a command-line tool, or a failure that names the Debian package to install."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed: install the Debian package `{package}` (make test does)")
    return path


def run(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def unknown_metrics(expr: str) -> set[str]:
    # Names inside label matchers' strings (e.g. a prefix regex) are not metric names: drop strings.
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return {m for m in _METRIC_RE.findall(bare)
            if m not in SPEC_METRICS and m != "up" and not m.startswith("process_")}


def unit_settings(section: str = "Service") -> list[tuple[str, str]]:
    """(key, value) of every active line in one section of the unit, in order (keys may repeat)."""
    found, current = [], None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


# --- systemd ------------------------------------------------------------------------------------
def test_unit_verifies_clean() -> None:
    """`systemd-analyze verify` with no output at all.

    verify checks that ExecStart's binary exists; it is not installed on a build machine, so run in a
    private mount namespace with a tmpfs on /opt holding a stand-in: the host's /opt is not touched.
    """
    require_root()
    analyze = tool("systemd-analyze", "systemd")
    unshare = tool("unshare", "util-linux")
    script = textwrap.dedent("""\
        mount -t tmpfs -o mode=0755 nflogd-verify /opt
        mkdir -p /opt/nflogd/venv/bin
        printf '#!/bin/sh\\nexit 0\\n' > /opt/nflogd/venv/bin/nflogd
        chmod 0755 /opt/nflogd/venv/bin/nflogd
        exec "$0" verify "$1"
        """)
    proc = run([unshare, "--mount", "--propagation", "private", "sh", "-ec", script, analyze, str(UNIT)])
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and out == "", f"systemd-analyze verify (exit {proc.returncode}):\n{out}"


def test_security_exposure_is_at_most_1_5() -> None:
    analyze = tool("systemd-analyze", "systemd")
    proc = run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)])
    found = re.search(r"Overall exposure level for nflogd\.service: (\d+\.\d+)", proc.stdout)
    assert found, f"no overall exposure in:\n{proc.stdout}\n{proc.stderr}"
    exposure = float(found.group(1))
    lost = [line for line in proc.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= EXPOSURE_MAX, f"exposure {exposure} > {EXPOSURE_MAX}; open points:\n" + "\n".join(lost)


def test_unit_keeps_the_settings_nflogd_depends_on() -> None:
    settings = unit_settings()
    keys = [k for k, _ in settings]
    values = dict(settings)
    # Both would break nflogd without an error at start: see the comments in the unit.
    assert "PrivateUsers" not in keys, "PrivateUsers= makes every NFLOG bind fail with EPERM"
    assert "ProcSubset" not in keys, "ProcSubset=pid silently removes the process_* metrics"
    assert values["Type"] == "notify"
    assert values["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert values["AmbientCapabilities"] == "CAP_NET_ADMIN"
    assert values["DynamicUser"] == "yes"
    assert "WatchdogSec" in values
    reloads = [v for k, v in settings if k == "ExecReload"]
    assert len(reloads) == 2 and "--check-config" in reloads[0] and "kill -HUP $MAINPID" in reloads[1]
    assert values["ExecStart"] == "/opt/nflogd/venv/bin/nflogd --config /etc/nflogd/nflogd.yaml"
    assert set(values["RestrictAddressFamilies"].split()) == {"AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"}


def test_python_runs_under_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes: CPython, its C extensions and our dependencies never map W+X.

    PR_SET_MDWE (kernel >= 6.3) enforces the same rule as the unit's setting and, like it, holds from
    the first instruction: it is set here, then the interpreter is exec'd under it.
    """
    workload = textwrap.dedent("""\
        import ctypes, importlib.util, mmap, ssl, threading, urllib.request
        import bcrypt, sdnotify, yaml, prometheus_client
        from prometheus_client import start_http_server
        import nflogd, nflogd.notify
        if importlib.util.find_spec("nflogd._nflog") is not None:
            import nflogd._nflog
        assert ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) == 1, "PR_GET_MDWE: not in force"
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            raise SystemExit("a W+X mapping was allowed: MDWE is not enforced")
        except PermissionError:
            pass
        yaml.load("a: [1, 2]", Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        bcrypt.checkpw(b"pw", bcrypt.hashpw(b"pw", bcrypt.gensalt(4)))
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server, thread = start_http_server(0, addr="127.0.0.1")
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics").read()
        assert b"process_cpu_seconds_total" in body
        server.shutdown()
        print("ok")
        """)
    setter = textwrap.dedent("""\
        import ctypes, os, sys
        if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, REFUSE_EXEC_GAIN
            sys.exit(f"PR_SET_MDWE failed (errno {ctypes.get_errno()}): kernel older than 6.3?")
        os.execv(sys.argv[1], sys.argv[1:])
        """)
    proc = run([sys.executable, "-c", setter, sys.executable, "-c", workload], cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    # And the daemon's own start-up path, as ExecReload= runs it.
    proc = run([sys.executable, "-c", setter, sys.executable, "-m", "nflogd",
                "--config", str(CONFIG / "nflogd.yaml"), "--check-config"], cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_is_idempotent_and_keeps_an_edited_config() -> None:
    """install.sh for real, in a private mount namespace whose /etc is an overlay (writes land in a
    tmpfs, the host's /etc is not touched), into a PREFIX under /tmp; twice, the config edited between.
    """
    require_root()
    unshare = tool("unshare", "util-linux")
    tool("setpriv", "util-linux")
    host_config_before = Path("/etc/nflogd/nflogd.yaml").exists()
    prefix_root = Path(tempfile.mkdtemp(prefix="nflogd-install-", dir="/tmp"))
    try:
        prefix_root.chmod(0o755)  # the service's uid must reach the venv
        prefix = prefix_root / "nflogd"
        uid = unused_uids(1)[0]
        script = textwrap.dedent("""\
            repo=$1 prefix=$2 uid=$3 scratch=$4
            mkdir "$scratch"
            mount -t tmpfs nflogd-etc "$scratch"
            # 0755: the overlay's root (/etc) takes the upper directory's mode.
            mkdir -m 0755 "$scratch/upper" "$scratch/work"
            mount -t overlay overlay -o "lowerdir=/etc,upperdir=$scratch/upper,workdir=$scratch/work" /etc
            sh "$repo/systemd/install.sh" "$prefix"
            cmp "$repo/config/nflogd.yaml" /etc/nflogd/nflogd.yaml
            echo "# edited by the operator" >> /etc/nflogd/nflogd.yaml
            cp /etc/nflogd/nflogd.yaml "$scratch/edited"
            sh "$repo/systemd/install.sh" "$prefix/"
            cmp "$scratch/edited" /etc/nflogd/nflogd.yaml
            grep -qx "ExecStart=$prefix/venv/bin/nflogd --config /etc/nflogd/nflogd.yaml" \\
                /etc/systemd/system/nflogd.service
            ! grep -q /opt/nflogd /etc/systemd/system/nflogd.service
            test "$(stat -c %a /etc/systemd/system/nflogd.service)" = 644
            test "$(stat -c %a /etc/nflogd/nflogd.yaml)" = 644
            # As an unprivileged uid with no groups, like the service's DynamicUser.
            setpriv --reuid="$uid" --regid="$uid" --clear-groups \\
                "$prefix/venv/bin/nflogd" --config /etc/nflogd/nflogd.yaml --check-config
            """)
        # Root's umask may be 077: the install must be world-readable anyway.
        proc = run([unshare, "--mount", "--propagation", "private", "sh", "-exc", f"umask 077\n{script}",
                    "install-test", str(REPO), str(prefix), str(uid), str(prefix_root / "etc")],
                   timeout=900)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
        unreadable = [str(p) for p in prefix.rglob("*")
                      if not p.is_symlink() and not p.stat().st_mode & 0o004]
        assert not unreadable, f"not world-readable: {unreadable[:5]}"
    finally:
        shutil.rmtree(prefix_root, ignore_errors=True)
    assert Path("/etc/nflogd/nflogd.yaml").exists() == host_config_before, "the test wrote to the host's /etc"


# --- Prometheus -----------------------------------------------------------------------------------
def test_rules_check_clean() -> None:
    promtool = tool("promtool", "prometheus")
    proc = run([promtool, "check", "rules", str(CONFIG / "nflogd.rules.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_unit_tests_pass() -> None:
    promtool = tool("promtool", "prometheus")
    proc = run([promtool, "test", "rules", str(CONFIG / "nflogd.rules.test.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    rules = yaml.safe_load((CONFIG / "nflogd.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((CONFIG / "nflogd.rules.test.yml").read_text())["tests"]
    fired, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts == {"NflogdFirewallDropRateHigh", "NflogdMessagesLost", "NflogdSeriesLimitReached",
                      "NflogdSeriesChurnHigh",
                      "NflogdConfigReloadFailed", "NflogdGroupNotBound", "NflogdRecordsUncounted",
                      "NflogdDown", "NflogdPortScan"}
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown not firing"


def test_rules_follow_mixin_conventions_and_spec_metrics() -> None:
    rules = yaml.safe_load((CONFIG / "nflogd.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert not unknown_metrics(rule["expr"]), (rule, unknown_metrics(rule["expr"]))
            if "alert" in rule:
                assert re.fullmatch(r"Nflogd(?:[A-Z][a-z0-9]+)+", rule["alert"]), rule["alert"]
                assert rule["labels"]["severity"] in {"info", "warning", "critical"}
                assert rule["annotations"].keys() >= {"summary", "description"}
            else:
                assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_prometheus_config_checks() -> None:
    promtool = tool("promtool", "prometheus")
    proc = run([promtool, "check", "config", str(CONFIG / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scrape = yaml.safe_load((CONFIG / "prometheus.yml").read_text())["scrape_configs"]
    assert [s["job_name"] for s in scrape] == ["nflogd"], "the alerts select job=\"nflogd\""


# --- Grafana --------------------------------------------------------------------------------------
# What Grafana would put in place of its variables, so that promtool can parse the queries.
GRAFANA_SUBSTITUTES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                       "$job": "nflogd", "$instance": ".*"}


def dashboard_queries(substitutes: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query of the shipped dashboard, variables substituted.

    Also usable by an end-to-end test that runs these against a real Prometheus.
    """
    subs = GRAFANA_SUBSTITUTES if substitutes is None else substitutes
    dashboard = json.loads((CONFIG / "grafana-dashboard.json").read_text())

    def substituted(expr: str) -> str:
        for var in sorted(subs, key=len, reverse=True):  # $__range before a shorter prefix of it
            expr = expr.replace(var, subs[var]).replace("${" + var[1:] + "}", subs[var])
        return expr

    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], substituted(target["expr"])
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            # label_values(SELECTOR, label): the selector is PromQL.
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"])
            assert inner, query
            yield f"variable {var['name']}", substituted(inner.group(1))


def test_dashboard_variables_and_datasource() -> None:
    dashboard = json.loads((CONFIG / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query" and variables["instance"]["multi"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_queries_parse_and_use_spec_metrics(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    queries = list(dashboard_queries())
    assert len(queries) >= 10
    titles = " ".join(t for t, _ in queries).lower()
    for needed in ("prefix", "interface", "uid", "top", "lost", "series", "receive buffer",
                   "last message", "reload"):
        assert needed in titles, f"no panel about {needed!r}"
    rules = []
    for i, (title, expr) in enumerate(queries):
        assert "$" not in expr, f"unsubstituted variable in {title!r}: {expr}"
        assert not unknown_metrics(expr), (title, unknown_metrics(expr))
        rules.append({"record": f"dashboard:query_{i}:check", "expr": expr})
    # promtool 2.42 has no query parser command: a rules file parses every expression fully.
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- Firewall examples ----------------------------------------------------------------------------
def test_nftables_example_loads_and_logs_every_drop_with_a_counter() -> None:
    tool("nft", "nftables")
    with Netns("svc") as ns:
        path = str(CONFIG / "nftables.conf")
        ns.run("nft", "-c", "-f", path)
        ns.run("nft", "-f", path)  # for real, in the throwaway namespace: the kernel accepts it
        ns.run("nft", "-f", path)  # and again: reloading it replaces its table, does not add to it
        ruleset = json.loads(ns.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    logs = []
    for item in ruleset:
        rule = item.get("rule")
        if not rule:
            continue
        exprs = rule["expr"]
        for i, expr in enumerate(exprs):
            if "log" in expr:
                logs.append(expr["log"])
                assert "group" in expr["log"], f"log without an NFLOG group: {rule}"
                assert any("counter" in e for e in exprs[:i]), f"log without a counter before it: {rule}"
                assert re.search("drop|reject", expr["log"]["prefix"]), expr["log"]
    assert len(logs) == 7, logs
    assert {log["group"] for log in logs} == {0, 1}


def test_iptables_example_loads() -> None:
    restore = tool("iptables-restore", "iptables")
    text = (CONFIG / "iptables.rules").read_text()
    for line in text.splitlines():
        if line.startswith("-A") and "-j NFLOG" in line:
            prefix = re.search(r'--nflog-prefix "([^"]+)"', line)
            assert prefix and re.search("drop|reject", prefix.group(1)), line
            assert len(prefix.group(1)) <= 64, line
            assert re.search(r"--nflog-group [01]\b", line), line
    with Netns("svc") as ns:
        ns.run(restore, "--test", input=text)
        ns.run(restore, input=text)
