"""The exporter command line (issue 13): the flags node_exporter users type, overriding the config,
also across reloads; logfmt/JSON logs, one line per event; `listen:` as a string or a list; the
sockets systemd passes (LISTEN_FDS), here handed over by the real systemd-socket-activate (the
real systemd with nflogd.socket is in test_systemd_socket.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NFLOGD, Scrape

from netns import require_tool
from nflogd import activation, logformat
from nflogd.cli import flag_overrides, parse_args
from nflogd.config import ConfigError, default_config, load_config


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([NFLOGD, *args], capture_output=True, text=True, timeout=30, env=env)


# --- listen: a string or a list --------------------------------------------------------------

def test_listen_list(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text('listen:\n  - "127.0.0.1:9001"\n  - "[::1]:9001"\n  - ":9002"\n')
    c = load_config(str(p))
    assert c.listen_addresses == (("127.0.0.1", 9001), ("::1", 9001), ("", 9002))
    assert (c.listen_host, c.listen_port) == ("127.0.0.1", 9001)  # the first, for old callers
    assert c.listen == "127.0.0.1:9001, [::1]:9001, :9002"
    p.write_text('listen: "[::1]:9001"\n')
    assert load_config(str(p)).listen_addresses == (("::1", 9001),)
    assert default_config().listen_addresses == (("", 10040),)


@pytest.mark.parametrize("text,line,fragment", [
    ("listen: []\n", 1, "listen: must list at least one address"),
    ('listen:\n  - ":1"\n  - "127.0.0.1"\n', 3, "listen[1]: '127.0.0.1' has no port"),
    ('listen:\n  - ":1"\n  - 9\n', 3, "listen[1]: expected a string"),
    ('listen:\n  - ":1"\n  - ":1"\n', 3, "listen[1]: :1 is listed twice (first at line 2)"),
    ("listen: {a: 1}\n", 1, "listen: expected a string"),
])
def test_listen_list_errors(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert str(e.value).startswith(f"{p}:{line}:"), str(e.value)
    assert fragment in str(e.value), str(e.value)


# --- flags -----------------------------------------------------------------------------------

def test_flags_override_config_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text('listen: ":1"\nmetrics_path: /a\nlog_level: error\nweb_config_file: w.yml\n')
    args = parse_args(["--web.listen-address", "127.0.0.1:5", "--web.listen-address=[::1]:6",
                       "--web.listen-address", "127.0.0.1:5", "--web.telemetry-path", "/b",
                       "--log.level", "warn", "--web.config.file", "rel/web.yml"])
    c = flag_overrides(args)(load_config(str(p)))
    assert c.listen_addresses == (("127.0.0.1", 5), ("::1", 6))
    assert c.metrics_path == "/b" and c.log_level == "warning"
    assert c.web_config_file == os.path.abspath("rel/web.yml")
    # No flags: the file's keys stand.
    c = flag_overrides(parse_args([]))(load_config(str(p)))
    assert (c.listen_addresses, c.metrics_path, c.log_level) == ((("", 1),), "/a", "error")


@pytest.mark.parametrize("args,fragment", [
    (["--web.listen-address", "10040"], "has no port"),
    (["--web.listen-address", "[::1]"], "has no port"),
    (["--web.listen-address", "1.2.3.4.5:80"], "not an IPv4 address"),
    (["--web.telemetry-path", "metrics"], "must start with '/'"),
    (["--web.telemetry-path", "/"], "'/' is the landing page"),
    (["--web.telemetry-path", "/a b"], "must not contain spaces"),
    (["--log.level", "verbose"], "invalid choice: 'verbose'"),
    (["--log.format", "xml"], "invalid choice: 'xml'"),
    (["--web.listen-addres", ":1"], "unrecognized arguments"),
])
def test_bad_flags_exit_2_with_one_error_line(tmp_path: Path, args: list, fragment: str) -> None:
    (tmp_path / "c.yaml").write_text("")
    # --check-config: were a bad flag accepted, nothing would start listening on the host.
    proc = run(*args, "--check-config", str(tmp_path / "c.yaml"))
    assert proc.returncode == 2, proc
    errors = [line for line in proc.stderr.splitlines() if line.startswith("nflogd: error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_and_version() -> None:
    for flag in ("-h", "--help"):
        proc = run(flag)
        assert proc.returncode == 0, proc
        for name in ("--web.listen-address", "--web.telemetry-path", "--web.config.file",
                     "--web.systemd-socket", "--log.level", "--log.format", "--version"):
            assert name in proc.stdout, (name, proc.stdout)
        assert "--log-level" not in proc.stdout  # deprecated: works, not advertised
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("nflogd "), proc


def test_old_log_level_still_works_with_a_note(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("")
    proc = run("--log-level", "debug", "--check-config", str(p))
    assert proc.returncode == 0, proc
    assert proc.stderr == "nflogd: --log-level is deprecated, use --log.level\n"
    assert parse_args(["--log-level", "warning"]).log_level == "warning"


# --- log format -------------------------------------------------------------------------------

def _record(msg: str, level: int = logging.INFO, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    r = logging.LogRecord("nflogd.worker", level, __file__, 1, msg, (), exc_info)
    r.created, r.msecs = 1764581400.25, 250.0
    return r


def test_logfmt_lines() -> None:
    f = logformat.ExporterFormatter("logfmt")
    assert f.format(_record("started")) == \
        "ts=2025-12-01T09:30:00.250Z level=info logger=nflogd.worker msg=started"
    line = f.format(_record('a "quoted"\nmulti=line \\ message', logging.WARNING, exc=True))
    assert "\n" not in line
    assert line.startswith('ts=2025-12-01T09:30:00.250Z level=warn logger=nflogd.worker '
                           'msg="a \\"quoted\\"\\nmulti=line \\\\ message" exc="Traceback'), line
    assert 'ValueError: boom\\nsecond line"' in line
    assert f.format(_record("")).endswith('msg=""')


def test_json_lines() -> None:
    f = logformat.ExporterFormatter("json")
    line = f.format(_record("x\ny", logging.ERROR, exc=True))
    assert "\n" not in line
    d = json.loads(line)
    assert (d["ts"], d["level"], d["logger"], d["msg"]) == \
        ("2025-12-01T09:30:00.250Z", "error", "nflogd.worker", "x\ny")
    assert d["exc"].startswith("Traceback") and d["exc"].endswith("ValueError: boom\nsecond line")


def test_journal_lines_have_no_timestamp_but_a_priority() -> None:
    f = logformat.ExporterFormatter("logfmt", timestamps=False)
    assert f.format(_record("bad", logging.ERROR)) == "<3>level=error logger=nflogd.worker msg=bad"
    assert f.format(_record("hm", logging.WARNING)).startswith("<4>level=warn ")
    assert f.format(_record("hi", logging.DEBUG)).startswith("<7>level=debug ")


def test_journal_stream_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logformat.journal_stream(a)
        assert not logformat.journal_stream(b)  # e.g. stderr redirected by the user
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logformat.journal_stream(a)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logformat.journal_stream(a)


# --- the daemon with flags, live ---------------------------------------------------------------

def test_two_listen_addresses_and_telemetry_path_survive_reload(make_netns, start_daemon) -> None:
    ns = make_netns("flags")
    second = ns.free_port()
    d = start_daemon(ns, "metrics_path: /from-config\nlog_level: error\ngroups:\n  - group: 3\n",
                     wait=False,
                     args=["--web.listen-address", f"127.0.0.1:{second}",
                           "--web.telemetry-path", "/nflog", "--log.format", "json",
                           "--log.level", "info"],
                     port=None)
    config_port, d.port = d.port, second  # the flag replaces the config's listen address
    deadline = time.monotonic() + 10
    while True:
        try:
            if d.get("/nflog")[0] == 200:
                break
        except OSError:
            pass
        assert d.proc.poll() is None and time.monotonic() < deadline, d.stderr()
        time.sleep(0.05)
    assert d.get("/from-config")[0] == 404
    with ns.entered(), pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", config_port), timeout=5)
    d.send(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded" not in d.stderr():
        assert time.monotonic() < deadline, d.stderr()
        time.sleep(0.05)
    status, _, body = d.get("/nflog")
    assert status == 200
    assert Scrape(body).value("nflogd_group_bound", group="3") == 1
    lines = d.stderr().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["msg"].startswith("nflogd started") for r in records), lines  # info, not error
    assert any(r["msg"] == "reloaded: 1 groups" for r in records), lines


def test_listen_list_in_config_serves_on_each(make_netns, start_daemon) -> None:
    ns = make_netns("lstn")
    a, b = ns.free_port(), ns.free_port()
    while b == a:
        b = ns.free_port()
    d = start_daemon(ns, f'listen:\n  - "127.0.0.1:{a}"\n  - "[::1]:{b}"\ngroups:\n  - group: 4\n',
                     port=a)
    assert d.scrape().value("nflogd_group_bound", group="4") == 1
    with ns.entered():
        s = socket.create_connection(("::1", b), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        s.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b'nflogd_group_bound{group="4"} 1.0' in reply


# --- LISTEN_FDS -------------------------------------------------------------------------------

def test_listen_sockets_validation() -> None:
    with pytest.raises(activation.ActivationError, match="LISTEN_FDS is not set"):
        activation.listen_sockets({})
    with pytest.raises(activation.ActivationError, match="meant for pid 1,"):
        activation.listen_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    with pytest.raises(activation.ActivationError, match="not numbers"):
        activation.listen_sockets({"LISTEN_PID": "x", "LISTEN_FDS": "1"})
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0", "LISTEN_FDNAMES": "a"}
    with pytest.raises(activation.ActivationError, match="expected 1-64"):
        activation.listen_sockets(env)
    assert env == {}  # unset either way, as sd_listen_fds(1)


def test_systemd_socket_activate_hands_over_the_socket(make_netns, tmp_path: Path) -> None:
    """systemd's own systemd-socket-activate binds the port and execs nflogd with LISTEN_FDS=1."""
    tool = require_tool("systemd-socket-activate")
    ns = make_netns("sact")
    port = ns.free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text('listen: "127.0.0.1:1"\ngroups:\n  - group: 5\n')  # not used: the socket is
    log = open(tmp_path / "err", "wb")
    proc = ns.popen([tool, "-l", f"127.0.0.1:{port}", NFLOGD, "--config",
                     str(cfg), "--web.systemd-socket"], stdout=log, stderr=log)
    try:
        # -l binds at once; nflogd is exec'd on the first connection, which then waits for it.
        deadline = time.monotonic() + 20
        body = b""
        while True:
            with ns.entered():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        body = b""
                        while chunk := s.recv(65536):
                            body += chunk
                except OSError:
                    pass
            if body.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert body.startswith(b"HTTP/1.1 200"), (body[:300], (tmp_path / "err").read_text())
        assert b'nflogd_group_bound{group="5"} 1.0' in body
        with ns.entered(), socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex(("127.0.0.1", 1)) != 0, "the config's listen address got bound"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, (tmp_path / "err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
    assert "msg=stopped" in (tmp_path / "err").read_text()


def test_systemd_socket_of_the_wrong_kind_fails_with_exit_2(make_netns, tmp_path: Path) -> None:
    """A ListenDatagram= socket is not an HTTP endpoint: refused, one line, exit 2."""
    tool = require_tool("systemd-socket-activate")
    ns = make_netns("sdgr")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("groups:\n  - group: 5\n")
    # --datagram: the UDP socket is passed at once; nflogd is exec'd on the first datagram.
    port = ns.free_port()
    proc = ns.popen([tool, "--datagram", "-l", f"127.0.0.1:{port}", NFLOGD, "--config", str(cfg),
                     "--web.systemd-socket"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            with ns.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"x", ("127.0.0.1", port))
            time.sleep(0.2)
        assert proc.poll() is not None, "nflogd kept running on a datagram socket"
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 2, (proc.returncode, err)
    # The tool says what it does on stderr too; nflogd's lines are the logfmt ones.
    lines = [line for line in err.decode().splitlines() if line.startswith("ts=")]
    assert len(lines) == 1 and "fd 3 is not a listening TCP socket" in lines[0], err
    assert "level=error" in lines[0] and "Traceback" not in err.decode()


def test_systemd_socket_without_sockets_fails_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("groups:\n  - group: 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    proc = run("--config", str(cfg), "--web.systemd-socket", env=env)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "level=error" in lines[0] and "LISTEN_FDS is not set" in lines[0], \
        proc.stderr
