"""Issue 10's attack table, rerun against a real server (10k series, rendered per scrape) in its own
process, with the attacker and the legitimate scraper in two more: during each attack a scrape
every 0.25 s on a fresh connection must succeed (complete 200) within 2 s at least 95 % of the
time. Threads and memory of the server stay bounded throughout.

The plain server has no auth (the default set-up); the TLS one has basic auth, and its scraper
has scraped once before the attack (as Prometheus has), so its credentials are cached.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import htpasswd
from http_support import pki_fixture, tools_fixture  # noqa: F401 -- fixtures
from netns import REPO, VENV_PYTHON, require_tools

TOOLS = str(REPO / "tests" / "http_attack_tools.py")
SCRAPES = 20  # 5 s of scraping per attack: 19 of 20 is 95 %
MIN_OK = 0.95
PASSWORD = "s3cret-scraper"


class Server:
    def __init__(self, proc: subprocess.Popen[str], ports: dict[str, int], cfg: dict[str, Any],
                 log: Path):
        self.proc, self.ports, self.cfg, self.log = proc, ports, cfg, log

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())


@pytest.fixture(scope="module")
def server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("attack")
    web = d / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki / 'server.pem'}\n"
                   f"  key_file: {pki / 'server.key'}\n"
                   f"basic_auth_users:\n  alice: {htpasswd('alice', PASSWORD, cost=10)}\n")
    cfg = {"web_config": str(web), "ca": str(pki / "ca.pem"), "user": "alice",
           "password": PASSWORD}
    proc = subprocess.Popen([VENV_PYTHON, TOOLS, "serve", json.dumps(cfg)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(d / "server.log", "w"), cwd=REPO)
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())
    srv = Server(proc, ports, cfg, d / "server.log")
    yield srv
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(10)
    finally:
        proc.kill()
    log = (d / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def scrape(srv: Server, which: str, count: int, keepalive: bool = False
           ) -> list[tuple[int, float]]:
    cfg = {**srv.cfg, "port": srv.ports[which], "tls": which == "tls", "count": count,
           "keepalive": keepalive}
    out = subprocess.run([VENV_PYTHON, TOOLS, "scrape", json.dumps(cfg)], capture_output=True,
                         text=True, timeout=count * 3 + 30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return [tuple(r) for r in json.loads(out.stdout)]  # type: ignore[misc]


def under_attack(srv: Server, which: str, kind: str, n: int, count: int = SCRAPES,
                 ramp: float = 1.0, keepalive: bool = False) -> list[tuple[int, float]]:
    """Start the attack, wait until it is in place, scrape `count` times, end the attack."""
    scrape(srv, which, 1)  # scraped before: a warm credential cache, as with Prometheus
    duration = ramp + count * 0.25 + 3
    depth = 8 if kind == "pipeline8" else 3
    cfg = {**srv.cfg, "kind": kind.rstrip("8"), "port": srv.ports[which], "n": n,
           "duration": duration, "ramp": ramp, "depth": depth}
    attacker = subprocess.Popen([VENV_PYTHON, TOOLS, "attack", json.dumps(cfg)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert attacker.stdout is not None
        assert attacker.stdout.readline().strip() == "ready", attacker.stderr.read()  # type: ignore[union-attr]
        results = scrape(srv, which, count, keepalive)
    finally:
        attacker.kill()
        _, err = attacker.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]
    return results


def assert_served(results: list[tuple[int, float]], what: str) -> None:
    ok = [r for r in results if r[0] == 200 and r[1] < 2.0]
    slowest = max(t for _, t in results)
    assert len(ok) >= MIN_OK * len(results), \
        f"{what}: {len(ok)} of {len(results)} scrapes succeeded within 2 s; {results}"
    print(f"{what}: {len(ok)}/{len(results)} ok, slowest {slowest:.2f} s")


def wait_quiet(srv: Server, timeout: float = 15.0) -> dict[str, Any]:
    """The attacker is gone: the server lets its connections go, back to a few descriptors."""
    deadline = time.monotonic() + timeout
    while True:
        rep = srv.report()
        quiet = rep["plain"]["open"] + rep["tls"]["open"] == 0 and rep["fds"] < 64
        if quiet or time.monotonic() > deadline:
            return rep
        time.sleep(0.1)


def delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    if key.startswith("code"):
        code = key[4:]
        return int(after["requests"].get(code, 0)) - int(before["requests"].get(code, 0))
    return int(after[key]) - int(before[key])


ATTACKS = [
    # (server, attack, clients, proof that the attack was in place: counter -> at least)
    ("plain", "pipeline", 70, {"code200": 70, "evicted": 70 - 64}),  # 3 GETs, never read
    # 8 responses (6 MB) are more than the kernel's socket buffers take: stuck writers
    ("plain", "pipeline8", 70, {"code200": 70, "evicted": 70 - 64}),
    ("tls", "half_tls", 300, {"accepted": 300}),  # half a ClientHello, reconnect when closed
    ("plain", "slowloris", 400, {"accepted": 400}),
    ("plain", "slowloris", 150, {"accepted": 150}),
    ("plain", "idle", 1500, {"evicted": 1500 - 512}),  # idle, reconnecting when closed
    ("tls", "wrong_password", 64, {"auth_failures": 10, "code503": 64}),  # keep-alive
]


# the scraper on a fresh connection per scrape (a Prometheus that just started, or a new target),
# and, where the attack competes with it for a served slot, on one keep-alive connection
RUNS = [(*a, False) for a in ATTACKS] + \
    [(*a, True) for a in ATTACKS if a[1] in ("pipeline8", "idle", "wrong_password")]


@pytest.mark.parametrize("which,kind,n,proof,keepalive", RUNS,
                         ids=[f"{k}-{n}-{'keepalive' if ka else 'fresh'}"
                              for _, k, n, _, ka in RUNS])
def test_attack_leaves_scrapes_served(server: Server, which: str, kind: str, n: int,
                                      proof: dict[str, int], keepalive: bool) -> None:
    before = server.report()[which]
    assert_served(under_attack(server, which, kind, n, keepalive=keepalive),
                  f"{kind} x{n} on {which}, {'keep-alive' if keepalive else 'fresh'} scraper")
    rep = wait_quiet(server)
    print(f"  server: peak {rep['peak_threads']} threads, max RSS {rep['max_rss_kib'] // 1024} MiB,"
          f" {rep['fds']} fds after")
    for key, least in proof.items():  # the attack did what it says, or this proves nothing
        assert delta(before, rep[which], key) >= least, (key, before, rep[which])
    assert rep["peak_threads"] <= 12, rep  # loop + 2 render + 1 bcrypt per server, + watcher
    assert rep["fds"] < 64, (rep, before)  # everything the attack opened was let go
    assert rep["max_rss_kib"] < 200_000, rep  # 112 MiB measured: two servers, 10k series


def test_burst_of_idle_and_half_open_then_scrapes(server: Server) -> None:
    # 200 idle TCP + 20 half-open TLS opened at once; the next scrapes (the first right away)
    before = server.report()["tls"]
    assert_served(under_attack(server, "tls", "burst", 220, count=12, ramp=0.0),
                  "burst of 200 idle + 20 half-open TLS")
    rep = wait_quiet(server)
    assert delta(before, rep["tls"], "accepted") >= 220 + 12


def test_out_of_descriptors_pauses_accepting_briefly(server: Server) -> None:
    """accept() failing with EMFILE (injected with strace, 10 times): the server pauses accepting
    0.1 s at a time, instead of spinning or dying; the scrape waiting in the backlog is served
    once accept() works again; one warning line, not one per attempt."""
    require_tools("strace")
    before = server.log.read_text().count("cannot accept connections")
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-p", str(server.proc.pid), "-o",
                               "/dev/null", "-e", "trace=accept4",
                               "-e", "inject=accept4:error=EMFILE:when=1..10"])
    try:
        time.sleep(1.0)  # attached
        t0 = time.monotonic()
        results = scrape(server, "plain", 1)
        waited = time.monotonic() - t0
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    assert results[0][0] == 200, results
    assert 0.5 < waited < 5, waited  # 10 failed accepts, 0.1 s apart: about 1 s
    log = server.log.read_text()
    assert log.count("cannot accept connections") - before == 1, log[-2000:]
    assert "Traceback" not in log


# --- the real daemon ------------------------------------------------------------------------------

DAEMON_ATTACKS = [("plain", "pipeline8", 70), ("plain", "slowloris", 400), ("plain", "idle", 1500),
                  ("tls", "half_tls", 300), ("tls", "wrong_password", 64)]


def test_attacks_against_the_real_daemon(make_netns, start_daemon, pki: Path,  # type: ignore[no-untyped-def]
                                         tmp_path: Path) -> None:
    """The table again, against nflogd itself in a namespace, exporting 10k series made by real
    traffic (5000 marks x packets and bytes): plain HTTP, then TLS with basic auth."""
    ns = make_netns("atk")
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0;\n"
           'udp dport 7000 meta mark set numgen inc mod 5000 counter log prefix "p" group 10 '
           'comment "m"\n'
           'udp dport 7001 meta mark set numgen inc mod 5000 counter log prefix "p" group 11 '
           'comment "m2"\n }\n}\n')
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki / 'server.pem'}\n"
                   f"  key_file: {pki / 'server.key'}\n"
                   f"basic_auth_users:\n  alice: {htpasswd('alice', PASSWORD, cost=10)}\n")
    base = "max_series: 20000\nlabels: [group, prefix, mark]\ngroups:\n  - group: {}\n"
    plain = start_daemon(ns, base.format(10))
    ns.send_udp("127.0.0.1", 7000, 10_000, 10)
    s = plain.wait_for(lambda s: s.total("nflog_packets_total") >= 10_000, timeout=20)
    assert len(s.series("nflog_packets_total")) == 5000
    assert s.total("nflog_packets_total") == ns.counters()["m"][0] == 10_000
    tls = start_daemon(ns, base.format(11) + f"web_config_file: {web}\n", wait=False)
    client = {"ca": str(pki / "ca.pem"), "user": "alice", "password": PASSWORD}
    sent_tls = False
    for which, kind, n in DAEMON_ATTACKS:
        d = plain if which == "plain" else tls
        scrape_cfg = {**client, "port": d.port, "tls": which == "tls"}
        deadline = time.monotonic() + 15
        while True:  # up (the TLS one was not waited for), and scraped once: a warm cache
            warm = ns.run(VENV_PYTHON, TOOLS, "scrape", json.dumps({**scrape_cfg, "count": 1}))
            status = json.loads(warm.stdout)[0][0]
            if status == 200:  # 200 with all 10k series
                break
            if status == -1 and not sent_tls:  # the TLS daemon answers: its group is bound
                ns.send_udp("127.0.0.1", 7001, 10_000, 10)
                sent_tls = True
            assert d.proc.poll() is None and time.monotonic() < deadline, d.stderr()
            time.sleep(0.2)
        cfg = {**client, "kind": kind.rstrip("8"), "port": d.port, "n": n, "duration": 9.0,
               "ramp": 1.0, "depth": 8}
        attacker = ns.popen([VENV_PYTHON, TOOLS, "attack", json.dumps(cfg)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        try:
            assert attacker.stdout is not None
            assert attacker.stdout.readline().strip() == "ready"
            out = ns.run(VENV_PYTHON, TOOLS, "scrape",
                         json.dumps({**scrape_cfg, "count": SCRAPES}), timeout=120)
        finally:
            attacker.kill()
            attacker.communicate(timeout=30)
        assert_served([tuple(r) for r in json.loads(out.stdout)],  # type: ignore[misc]
                      f"{kind} x{n} on the daemon ({which})")
    for d in (plain, tls):
        assert d.proc.poll() is None
        assert "Traceback" not in d.stderr()
