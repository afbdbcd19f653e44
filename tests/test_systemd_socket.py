"""systemd/nflogd.socket under the real systemd (252) as PID 1 (booted as test_systemd_boot.py
does, whose machinery this reuses): systemd binds the port, the first connection starts nflogd
with --web.systemd-socket, which serves on the socket it was handed; a restart refuses no
connection, since the socket stays with systemd; a stop leaves the port to systemd, and the next
connection starts nflogd again.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from test_systemd_boot import booted, install, install_root, require_tools  # noqa: F401

from netns import Netns

REPO = Path(__file__).resolve().parent.parent
PORT = 10040  # nflogd.socket's ListenStream=, verbatim


def get(ns: Netns, path: str = "/metrics", timeout: float = 20, port: int = PORT) -> bytes:
    """One HTTP/1.1 GET from inside the namespace; the whole raw reply."""
    with ns.entered():
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
    return reply


def wait_active(sd, timeout: float = 20) -> str:
    """The MainPID once the unit is active (READY=1 may follow the first answer a moment later)."""
    deadline = time.monotonic() + timeout
    while sd.show("ActiveState") != "active":
        assert time.monotonic() < deadline, f"nflogd.service is {sd.show('ActiveState')}"
        time.sleep(0.05)
    return sd.show("MainPID")


def test_socket_unit_hands_its_port_to_nflogd(install_root: Path, booted) -> None:  # noqa: F811
    require_tools()
    install(install_root)
    unit = (REPO / "systemd" / "nflogd.socket").read_text()
    with Netns("sock") as ns:
        sd = booted(ns)
        sd.wait_running()
        sd.inside("sh", "-c", "cat > /etc/systemd/system/nflogd.socket", input=unit)
        # As for the service (test_systemd_boot's drop-in): nothing of a real boot runs here.
        sd.inside("sh", "-c", "mkdir -p /run/systemd/system/nflogd.socket.d && cat > "
                  "/run/systemd/system/nflogd.socket.d/test.conf",
                  input="[Unit]\nDefaultDependencies=no\n"
                        # A second address, as the unit's comment says: one line each.
                        "[Socket]\nListenStream=127.0.0.1:10042\n")
        exec_start = sd.show("ExecStart").split("argv[]=")[1].split(" ;")[0]
        assert exec_start.endswith("--config /etc/nflogd/nflogd.yaml"), exec_start
        # The drop-in nflogd.socket's comment tells the user to write.
        sd.inside("sh", "-c", "mkdir -p /etc/systemd/system/nflogd.service.d && cat > "
                  "/etc/systemd/system/nflogd.service.d/socket.conf",
                  input=f"[Service]\nExecStart=\nExecStart={exec_start} --web.systemd-socket\n")
        sd.systemctl("daemon-reload")
        sd.systemctl("start", "nflogd.socket")
        assert sd.show("SubState", "nflogd.socket") == "listening"
        assert sd.show("ActiveState") == "inactive"  # nothing started it yet

        # The first connection starts nflogd (Type=notify: the request waits in the backlog).
        try:
            reply = get(ns)
        except OSError as e:
            raise AssertionError(f"{e}: {sd.inside('cat', '/run/nflogd.log', check=False).stdout}"
                                 f"{sd.systemctl('status', 'nflogd', check=False).stdout}") from e
        assert reply.startswith(b"HTTP/1.1 200"), \
            (reply[:300], sd.inside("cat", "/run/nflogd.log", check=False).stdout)
        assert b'nflogd_group_bound{group="0"} 1.0' in reply
        pid = wait_active(sd)
        fds = sd.inside("ls", "-l", f"/proc/{pid}/fd").stdout
        assert " 3 -> socket:" in fds and " 4 -> socket:" in fds, fds
        assert get(ns, port=10042).startswith(b"HTTP/1.1 200")
        log = sd.inside("cat", "/run/nflogd.log").stdout
        assert "listening on http://[::]:10040/metrics" in log, log
        assert "listening on http://127.0.0.1:10042/metrics" in log, log

        # A reload with another listen address changes nothing: the socket is the address.
        conf = sd.inside("cat", "/etc/nflogd/nflogd.yaml").stdout
        assert 'listen: ":10040"' in conf
        sd.inside("sh", "-c", "cat > /etc/nflogd/nflogd.yaml",
                  input=conf.replace('listen: ":10040"', 'listen: ":10041"'))
        sd.systemctl("reload", "nflogd.service")
        assert wait_active(sd) == pid
        assert get(ns).startswith(b"HTTP/1.1 200")
        with ns.entered(), socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex(("127.0.0.1", 10041)) != 0, "the config's address got bound"

        # A restart: the socket stays bound by systemd, so no connection made meanwhile is
        # refused; they wait in its backlog for the new process. (One the old process accepted
        # just as it stopped can be closed unanswered or reset: its server closes open
        # connections on stop rather than finishing them.)
        sd.systemctl("restart", "--no-block", "nflogd.service")
        served = reset = 0
        for _ in range(5):
            try:
                reply = get(ns)
            except ConnectionResetError:
                reply = b""
            if not reply:
                reset += 1
                continue
            assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
            served += 1
        assert served >= 4, (served, reset)
        deadline = time.monotonic() + 20
        while sd.show("MainPID") in ("0", pid) or sd.show("ActiveState") != "active":
            assert time.monotonic() < deadline, "not running again after the restart"
            time.sleep(0.1)
        assert get(ns).startswith(b"HTTP/1.1 200")

        # Stopped, the port stays with systemd; the next connection starts nflogd again.
        sd.systemctl("stop", "nflogd.service")
        assert sd.show("Result") == "success" and sd.show("ExecMainStatus") == "0"
        assert sd.show("SubState", "nflogd.socket") == "listening"
        assert get(ns).startswith(b"HTTP/1.1 200")
        wait_active(sd)
        sd.systemctl("stop", "nflogd.socket", "nflogd.service")
        with ns.entered():
            s = socket.socket()
            try:
                s.settimeout(5)
                assert s.connect_ex(("127.0.0.1", PORT)) != 0, "port still open after both stopped"
            finally:
                s.close()
