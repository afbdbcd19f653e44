"""The Debian package as a user meets it (issue 13): `make deb` builds
nflogd_<version>_<arch>.deb (lintian: no errors), `apt-get install ./nflogd_*.deb` installs it under
a real systemd (252, PID 1), which runs it on Debian's own python3 libraries; it is scraped,
reconfigured with basic auth (Debian's bcrypt 3.2), upgraded keeping the edited conffile, and
purged, leaving nothing behind.

Where: the namespace-booted systemd of test_systemd_boot.py (same safety: PID 1 of new
pid/mount/UTS namespaces in a test network namespace, tmpfs /tmp, /run, /var/tmp, host units hidden
and masked, its own cgroup, always SIGKILLed). Its boot script here also puts overlays over /usr,
/var and /etc whose writes land in a tmpfs, so dpkg's database, the installed files and the
maintainer scripts' work never reach the host, and what the package leaves behind is exactly what
is in the overlays' upper directories. Debian's dependencies come from the host (make test-deb
installs them), so apt needs no network (the test namespace has none). This container's
policy-rc.d (exit 101: never start services, a Docker habit) is removed inside the overlay: on a
real Debian host there is none, and the postinst starts nflogd.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from test_systemd_boot import SYSTEMD, Booted, opt_dir, require_tools

import nflogd
from netns import Netns, require_tool

REPO = Path(__file__).resolve().parent.parent
PORT = 10040  # the shipped /etc/nflogd/nflogd.yaml's listen address

DEB_BOOT_SH = r"""
set -eu
root=$1 cg=$2
[ "$$" = 1 ] || { echo "boot.sh: not PID 1 of a new pid namespace, refusing" >&2; exit 1; }
mount -t tmpfs -o mode=0755 nflogd-run /run
# Overlays: every write to /usr, /var and /etc lands in this tmpfs, never on the host.
mkdir -m 0755 /run/ovl
mount -t tmpfs nflogd-ovl /run/ovl
for d in usr var etc; do
    mkdir -p -m 0755 "/run/ovl/$d/upper" "/run/ovl/$d/work"
    mount -t overlay overlay \
        -o "lowerdir=/$d,upperdir=/run/ovl/$d/upper,workdir=/run/ovl/$d/work" "/$d"
    [ "$(stat -f -c %T "/$d")" = overlayfs ] ||
        { echo "boot.sh: /$d is not an overlay, refusing" >&2; exit 1; }
done
mount -t tmpfs -o mode=1777 nflogd-tmp /tmp
mount -t tmpfs -o mode=1777 nflogd-vartmp /var/tmp
for d in /tmp /var/tmp /run; do
    [ "$(stat -f -c %T "$d")" = tmpfs ] ||
        { echo "boot.sh: $d is not a tmpfs, refusing" >&2; exit 1; }
done
# None of the host's units or enablement symlinks: what the package enables lands here.
mount -t tmpfs -o mode=0755 nflogd-units /etc/systemd/system
rm -f /usr/sbin/policy-rc.d
mount --bind "$root/console.log" /dev/console
for h in systemd unified; do
    mkdir "/sys/fs/cgroup/$h/$cg"
    echo 1 > "/sys/fs/cgroup/$h/$cg/cgroup.procs"
done
u=/run/systemd/system
mkdir -p "$u/nflogd.service.d"
# Here journald runs (its journal in /run, a tmpfs): nflogd logs to it as on a real host.
printf '[Unit]\nDescription=nflogd test boot\nDefaultDependencies=no\n%s\n' \
    'Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service' \
    > "$u/nflogd-test.target"
printf '[Unit]\nDefaultDependencies=no\n' > "$u/nflogd.service.d/test.conf"
for m in $(grep -v '^systemd-journald' "$root/masked"); do ln -s /dev/null "$u/$m"; done
export container=nflogd-test
exec {systemd} --system --unit=nflogd-test.target --log-target=console --log-level=info
""".replace("{systemd}", SYSTEMD)


class DebBooted(Booted):
    boot_script = DEB_BOOT_SH

    def apt(self, *args: str, timeout: float = 300) -> str:
        proc = self.inside("env", "DEBIAN_FRONTEND=noninteractive", "apt-get",
                           "-o", "DPkg::Lock::Timeout=60", "-y", *args,
                           timeout=timeout)
        return proc.stdout + proc.stderr


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Under /opt (world-readable: apt's sandbox user _apt reads the .deb from here)."""
    yield from opt_dir("nflogd-debtest-")


def deb_version() -> str:
    return subprocess.run(["dpkg-parsechangelog", "-l", str(REPO / "debian" / "changelog"), "-S",
                           "Version"], capture_output=True, text=True, check=True).stdout.strip()


def make_deb(out: Path) -> Path:
    """`make deb` as a user types it; the package's name is nflogd_<version>_<arch>.deb."""
    for tool in ("dpkg-buildpackage", "lintian", "make"):
        require_tool(tool)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    proc = subprocess.run(["make", "-C", str(REPO), "deb", f"DEB_OUT={out}"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, \
        f"make deb: {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert "lintian --fail-on error" in proc.stdout  # and it passed, or make would have failed
    deb = out / f"nflogd_{deb_version()}_{arch}.deb"
    assert deb.is_file(), sorted(p.name for p in out.iterdir())
    return deb


def upgrade_deb(work: Path, version: str) -> Path:
    """The same tree with a newer changelog entry, built the way `make deb` builds it."""
    src = work / "src-upgrade"
    src.mkdir()
    subprocess.run(f"tar -c --exclude-vcs --exclude-vcs-ignores --exclude=./build "
                   f"--exclude=./.venv . | tar -x -C {src}", shell=True, cwd=REPO, check=True)
    changelog = src / "debian" / "changelog"
    changelog.write_text(
        f"nflogd ({version}) unstable; urgency=medium\n\n  * Upgrade test build.\n\n"
        f" -- Test <test@example.org>  Tue, 01 Dec 2026 10:00:00 +0000\n\n" + changelog.read_text())
    proc = subprocess.run(["dpkg-buildpackage", "-b", "-us", "-uc", "--no-sign"], cwd=src,
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(work)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    (deb,) = work.glob(f"nflogd_{version}_*.deb")
    return deb


def get(ns: Netns, path: str = "/metrics", auth: str | None = None) -> tuple[int, str]:
    """(status, body) of one HTTP/1.1 GET to the packaged service, from inside the namespace."""
    import base64
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if auth:
        head += f"Authorization: Basic {base64.b64encode(auth.encode()).decode()}\r\n"
    with ns.entered():
        with socket.create_connection(("127.0.0.1", PORT), timeout=20) as s:
            s.sendall((head + "\r\n").encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, reply.partition(b"\r\n\r\n")[2].decode(errors="replace")


def wait_active(sd: Booted, other_than: str = "", timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while sd.show("ActiveState") != "active" or sd.show("MainPID") in ("0", other_than):
        assert time.monotonic() < deadline, \
            f"nflogd.service: {sd.show('ActiveState')}/{sd.show('SubState')}\n" \
            + journal(sd)[-3000:]
        time.sleep(0.1)
    return sd.show("MainPID")


def journal(sd: Booted) -> str:
    return sd.inside("journalctl", "--no-pager", "-o", "cat", "-u", "nflogd.service",
                     check=False).stdout


def journal_entries(sd: Booted) -> list[dict[str, str]]:
    out = sd.inside("journalctl", "--no-pager", "-o", "json", "-u", "nflogd.service").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def leftovers(sd: Booted) -> list[str]:
    """Paths named like nflogd that the overlays hold: what the package changed on the system."""
    found = sd.inside("find", "/run/ovl/usr/upper", "/run/ovl/var/upper", "/run/ovl/etc/upper",
                      "-name", "*nflogd*").stdout.split()
    return sorted(p for p in found if not p.startswith("/run/ovl/var/upper/log/"))


def test_deb_build_install_run_upgrade_purge(workdir: Path) -> None:
    require_tools()
    version = deb_version()
    assert version == nflogd.__version__, "debian/changelog and nflogd.__version__ disagree"
    deb = make_deb(workdir)
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True,
                          check=True).stdout
    for dep in ("python3-prometheus-client", "python3-yaml", "python3-sdnotify", "python3-bcrypt",
                "python3-h11", "libnetfilter-log1"):
        assert dep in info, (dep, info)
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                               check=True).stdout
    assert b"./conffiles" in subprocess.run(["tar", "-t"], input=conffiles, capture_output=True,
                                             check=True).stdout
    upgrade = upgrade_deb(workdir, f"{version}+upgrade1")

    with Netns("deb") as ns:
        sd = DebBooted(workdir, ns)
        try:
            sd.wait_running()
            assert leftovers(sd) == []
            assert sd.inside("sh", "-c", "command -v nflogd", check=False).returncode != 0

            # Install as a user would; the postinst enables and starts the service (Debian's norm).
            out = sd.apt("install", str(deb))
            assert "nflogd" in out
            assert sd.inside("dpkg-query", "-W", "-f", "${Status} ${Version}", "nflogd").stdout \
                == f"install ok installed {version}"
            assert sd.inside("cat", "/var/lib/dpkg/info/nflogd.conffiles").stdout.split() == \
                ["/etc/nflogd/nflogd.yaml"]
            assert sd.systemctl("is-enabled", "nflogd.service").stdout.strip() == "enabled"
            # What the purge check looks for is there now (so that check can fail).
            installed = leftovers(sd)
            assert "/run/ovl/usr/upper/bin/nflogd" in installed, installed
            assert "/run/ovl/etc/upper/nflogd" in installed, installed
            pid = wait_active(sd)
            assert sd.show("FragmentPath") == "/lib/systemd/system/nflogd.service"
            assert sd.show("ExecStart").split("argv[]=")[1].startswith(
                "/usr/bin/nflogd --config /etc/nflogd/nflogd.yaml")
            # The installed units as systemd-analyze sees them: no complaint at all.
            verify = sd.inside("systemd-analyze", "verify", "/lib/systemd/system/nflogd.service",
                               "/lib/systemd/system/nflogd.socket", check=False)
            assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify
            # The socket unit is shipped but left alone.
            assert sd.systemctl("is-enabled", "nflogd.socket", check=False).stdout.strip() \
                == "disabled"
            # Debian's interpreter and libraries, the packaged extension.
            maps = sd.inside("cat", f"/proc/{pid}/maps").stdout
            assert "/usr/lib/python3/dist-packages/nflogd/_nflog.cpython-3" in maps, maps[-2000:]
            assert "libnetfilter_log.so.1" in maps
            exe = sd.inside("readlink", f"/proc/{pid}/exe").stdout.strip()
            assert exe.startswith("/usr/bin/python3"), exe

            # Its log in the journal: one entry per event, no second timestamp, the priority set.
            entries = [e for e in journal_entries(sd) if e.get("_PID") == pid]
            started = [e for e in entries if "msg=\"nflogd started" in e["MESSAGE"]]
            assert len(started) == 1, entries
            assert started[0]["MESSAGE"].startswith("level=info logger=nflogd msg=")
            assert started[0]["PRIORITY"] == "6"
            assert not [e for e in entries if "ts=" in e["MESSAGE"] or "\n" in e["MESSAGE"]]

            status, body = get(ns)
            assert status == 200, body[:500]
            assert 'nflogd_group_bound{group="0"} 1.0' in body
            assert f'version="{nflogd.__version__}"' in body  # nflogd_build_info
            for path in ("/usr/share/nflogd/nflogd.rules.yml",
                         "/usr/share/nflogd/grafana-dashboard.json",
                         "/usr/share/doc/nflogd/examples/nftables.conf",
                         "/lib/systemd/system/nflogd.socket"):
                sd.inside("test", "-s", path)

            # The operator edits the conffile: basic auth (a bcrypt hash: Debian's bcrypt 3.2).
            require_tool("htpasswd")
            hashed = subprocess.run(["htpasswd", "-nbBC", "10", "prom", "s3cret"],
                                    capture_output=True, text=True, check=True
                                    ).stdout.strip().split(":", 1)[1]
            sd.inside("sh", "-c", "cat > /etc/nflogd/web.yml",
                      input=f"basic_auth_users:\n  prom: '{hashed}'\n")
            sd.inside("sh", "-c", "chmod 0644 /etc/nflogd/web.yml && "
                      "echo 'web_config_file: web.yml' >> /etc/nflogd/nflogd.yaml && "
                      "sed -i 's/^web_config_file: null$//' /etc/nflogd/nflogd.yaml")
            edited = sd.inside("cat", "/etc/nflogd/nflogd.yaml").stdout
            reload = sd.systemctl("reload", "nflogd", check=False)
            assert reload.returncode == 0, journal(sd)[-3000:]
            wait_active(sd)
            deadline = time.monotonic() + 10
            while get(ns)[0] != 401:
                assert time.monotonic() < deadline, "basic auth not applied after the reload"
                time.sleep(0.1)
            assert get(ns, auth="prom:wrong")[0] == 401
            assert get(ns, auth="prom:s3cret")[0] == 200

            # A bad file behind the daemon's back (SIGHUP, no check first): the refusal is one
            # journal entry at priority err, naming the file and line.
            sd.inside("sh", "-c", "cat > /etc/nflogd/nflogd.yaml", input=edited + "bogus: 1\n")
            sd.systemctl("kill", "-s", "HUP", "nflogd")
            deadline = time.monotonic() + 10
            while not (refused := [e for e in journal_entries(sd) if e.get("PRIORITY") == "3"]):
                assert time.monotonic() < deadline, journal(sd)[-2000:]
                time.sleep(0.1)
            assert len(refused) == 1 and refused[0]["MESSAGE"].startswith(
                'level=error logger=nflogd msg="reload refused'), refused
            assert "/etc/nflogd/nflogd.yaml:" in refused[0]["MESSAGE"], refused
            sd.inside("sh", "-c", "cat > /etc/nflogd/nflogd.yaml", input=edited)

            # Upgrade: the edited conffile is kept (no prompt), the service restarted on the new
            # version and still asks for the password.
            sd.apt("install", str(upgrade))
            assert sd.inside("dpkg-query", "-W", "-f", "${Version}", "nflogd").stdout \
                == f"{version}+upgrade1"
            assert sd.inside("cat", "/etc/nflogd/nflogd.yaml").stdout == edited
            assert sd.inside("test", "!", "-e", "/etc/nflogd/nflogd.yaml.dpkg-new",
                             check=False).returncode == 0
            new_pid = wait_active(sd, other_than=pid)
            assert new_pid != pid
            assert get(ns)[0] == 401 and get(ns, auth="prom:s3cret")[0] == 200

            # Purge: the operator's own file goes first (dpkg leaves files it does not own), then
            # nothing named nflogd is left anywhere the package wrote.
            owned = [p for p in sd.inside("dpkg", "-L", "nflogd").stdout.split() if "nflogd" in p]
            assert owned
            sd.inside("rm", "/etc/nflogd/web.yml")
            sd.apt("purge", "nflogd")
            assert sd.inside("dpkg-query", "-W", "-f", "${Status}", "nflogd",
                             check=False).stdout in ("", "unknown ok not-installed")
            still = sd.inside("sh", "-c", 'for p; do [ -e "$p" ] && echo "$p"; done; true', "sh",
                              *owned).stdout.split()
            assert still == [], still
            assert leftovers(sd) == [], leftovers(sd)
            assert sd.show("LoadState") == "not-found"
            with ns.entered():
                with socket.socket() as s:
                    s.settimeout(5)
                    assert s.connect_ex(("127.0.0.1", PORT)) != 0, "something still listens"
            log = journal(sd)
            assert re.search(r"level=info logger=nflogd msg=stopped", log), log[-2000:]
            assert "Traceback" not in log, log
        finally:
            sd.kill()
