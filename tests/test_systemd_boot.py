"""nflogd under a real systemd (252) as PID 1: installed by systemd/install.sh, started, reloaded and
stopped with systemctl, its watchdog honoured (issue 4).

How, and why it is safe (see /work/shared/reference/testing-here.md): systemd boots as PID 1 of new
pid, mount and UTS namespaces (`unshare --pid --fork --kill-child --mount --uts --propagation private
--mount-proc`), inside a test network namespace (entered with nsenter, so /sys keeps the cgroup
mounts). Before exec'ing systemd, boot.sh, which refuses to go on unless it is PID 1:
- mounts tmpfs on /tmp, /var/tmp and /run (and checks they are tmpfs), so nothing systemd or a unit
  does there reaches the host's (booting systemd on the real /tmp would wipe it);
- overlays /etc on a tmpfs and puts a tmpfs over /etc/systemd/system, so none of the host's units or
  enablement symlinks exist for this systemd; it holds only the nflogd.service that install.sh wrote;
- masks (in /run/systemd/system) sysinit/basic/multi-user targets, tmpfiles, sysusers, journald,
  udev, logind, getty, postgresql, prometheus, ..., and boots into a target with
  DefaultDependencies=no that wants nothing;
- moves itself into a cgroup of its own (name=systemd and unified hierarchies), so this systemd
  manages only that subtree; the test removes it afterwards;
- sets container= so systemd leaves host-wide settings alone, and binds a file over /dev/console so
  nothing it logs reaches the host's console (systemd then logs nowhere: the test reads unit state
  with `systemctl show` and nflogd's output from a file).
The test adds one drop-in to nflogd.service: DefaultDependencies=no (nothing of a real boot runs
here) and its output to a file (no journald). The PID 1 is always killed with SIGKILL (and with it
everything in its pid namespace) in a finalizer; the install prefix under /opt is deleted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netns import Netns, require_root, require_tool
from stall import stall

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = "/lib/systemd/systemd"
CAP_NET_ADMIN = 1 << 12

MASKED = """
    sysinit.target basic.target multi-user.target graphical.target default.target getty.target
    local-fs.target remote-fs.target swap.target sockets.target timers.target paths.target
    network.target network-online.target emergency.target rescue.target
    systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.service
    systemd-tmpfiles-clean.timer systemd-sysusers.service systemd-journald.service
    systemd-journald.socket systemd-journald-dev-log.socket systemd-journald-audit.socket
    systemd-journal-flush.service systemd-logind.service systemd-udevd.service
    systemd-udev-trigger.service systemd-udevd-control.socket systemd-udevd-kernel.socket
    systemd-random-seed.service systemd-update-utmp.service systemd-sysctl.service
    systemd-modules-load.service systemd-remount-fs.service systemd-timesyncd.service
    systemd-pstore.service systemd-binfmt.service getty@tty1.service console-getty.service
    dbus.service dbus.socket cron.service ssh.service postgresql.service prometheus.service
    prometheus-node-exporter.service ulogd.service ulogd2.service smartd.service
""".split()

BOOT_SH = r"""
set -eu
root=$1 cg=$2
# Only ever as PID 1 of a fresh pid namespace: never in the host's namespaces.
[ "$$" = 1 ] || { echo "boot.sh: not PID 1 of a new pid namespace, refusing" >&2; exit 1; }
mount -t tmpfs -o mode=1777 nflogd-tmp /tmp
mount -t tmpfs -o mode=1777 nflogd-vartmp /var/tmp
mount -t tmpfs -o mode=0755 nflogd-run /run
for d in /tmp /var/tmp /run; do
    [ "$(stat -f -c %T "$d")" = tmpfs ] || { echo "boot.sh: $d is not a tmpfs, refusing" >&2; exit 1; }
done
# /etc: an overlay whose writes land in a tmpfs; no host units, only what install.sh wrote.
mkdir -m 0755 /run/etc-scratch
mount -t tmpfs nflogd-etc /run/etc-scratch
mkdir -m 0755 /run/etc-scratch/upper /run/etc-scratch/work
mount -t overlay overlay -o lowerdir=/etc,upperdir=/run/etc-scratch/upper,workdir=/run/etc-scratch/work /etc
mount -t tmpfs -o mode=0755 nflogd-units /etc/systemd/system
install -m 0644 "$root/stage/nflogd.service" /etc/systemd/system/nflogd.service
mkdir -p -m 0755 /etc/nflogd
install -m 0644 "$root/stage/nflogd.yaml" /etc/nflogd/nflogd.yaml
# Not the host's console.
mount --bind "$root/console.log" /dev/console
# A cgroup subtree of our own in the hierarchies systemd uses.
for h in systemd unified; do
    mkdir "/sys/fs/cgroup/$h/$cg"
    echo 1 > "/sys/fs/cgroup/$h/$cg/cgroup.procs"
done
u=/run/systemd/system
mkdir -p "$u/nflogd.service.d"
printf '[Unit]\nDescription=nflogd test boot\nDefaultDependencies=no\n' > "$u/nflogd-test.target"
printf '[Unit]\nDefaultDependencies=no\n[Service]\n%s\n%s\n' \
    StandardOutput=append:/run/nflogd.log StandardError=inherit \
    > "$u/nflogd.service.d/test.conf"
for m in $(cat "$root/masked"); do ln -s /dev/null "$u/$m"; done
export container=nflogd-test
exec {systemd} --system --unit=nflogd-test.target --log-target=console --log-level=info
""".replace("{systemd}", SYSTEMD)


def require_tools() -> None:
    """Root and the real tools, or a loud failure (never a skip)."""
    require_root()
    for t in ("unshare", "nsenter", "systemctl", "ip", "nft"):
        require_tool(t)
    if not os.access(SYSTEMD, os.X_OK):
        raise RuntimeError(f"{SYSTEMD} is missing: apt-get install systemd")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Booted:
    """A systemd running as PID 1 of private namespaces; ``kill()`` always ends it with SIGKILL."""

    boot_script = BOOT_SH  # test_deb.py boots with its own (overlays over /usr and /var too)

    def __init__(self, root: Path, ns: Netns) -> None:
        self.root, self.ns = root, ns
        self.cgroup = root.name  # unique: the mkdtemp name of the install prefix
        (root / "boot.sh").write_text(self.boot_script)
        (root / "masked").write_text("\n".join(MASKED) + "\n")
        (root / "console.log").write_text("")
        self.log = root / "unshare.log"
        self._log = open(self.log, "wb")
        self.pid1: int | None = None
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--propagation",
             "private", "--mount-proc", "nsenter", f"--net=/run/netns/{ns.name}",
             "sh", str(root / "boot.sh"), str(root), self.cgroup],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 15
        while self.pid1 is None:
            for child in _children(self.proc.pid):
                if _comm(child) == "systemd":
                    self.pid1 = child
            if self.pid1 is None:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"systemd did not start as PID 1:\n{self.output()}")
                time.sleep(0.05)

    def output(self) -> str:
        self._log.flush()
        text = self.log.read_text(errors="replace")
        console = self.root / "console.log"
        if console.exists():
            text += "\n--- systemd's console:\n" + console.read_text(errors="replace")[-6000:]
        return text

    def inside(self, *cmd: str, timeout: float = 30, check: bool = True,
               input: str | None = None) -> subprocess.CompletedProcess:
        """Run cmd in the boot's mount and pid namespaces (systemctl finds its manager there)."""
        assert self.pid1 is not None
        proc = subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "-p", *cmd], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stdout}"
                                 f"{proc.stderr}\n{self.output()}")
        return proc

    def systemctl(self, *args: str, check: bool = True, timeout: float = 30
                  ) -> subprocess.CompletedProcess:
        return self.inside("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, prop: str, unit: str = "nflogd.service") -> str:
        return self.systemctl("show", "-P", prop, unit).stdout.strip()

    def wait_running(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.systemctl("is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            assert self.proc.poll() is None, f"systemd exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"system state {state!r} after {timeout} s"
            time.sleep(0.2)

    def kill(self) -> None:
        # The PID 1 with SIGKILL (a PID 1 ignores SIGTERM): the kernel then kills everything in its
        # pid namespace. Only while it still is unshare's child (no pid reuse); then unshare itself.
        if self.pid1 is not None and self.pid1 in _children(self.proc.pid):
            os.kill(self.pid1, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        for h in ("systemd", "unified"):
            top = Path(f"/sys/fs/cgroup/{h}/{self.cgroup}")
            while top.exists():
                dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
                for d in dirs + [top]:
                    try:
                        d.rmdir()
                    except OSError:
                        pass
                if top.exists():
                    assert time.monotonic() < deadline, f"cannot remove cgroup {top}"
                    time.sleep(0.1)


def opt_dir(prefix: str) -> Iterator[Path]:
    """A new folder under /opt (world-readable, unlike /root, so a DynamicUser service or apt's
    _apt user can read it), deleted afterwards; for fixtures to yield from."""
    require_tools()
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/opt"))
    try:
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def install_root() -> Iterator[Path]:
    """An install prefix under /opt, deleted afterwards."""
    yield from opt_dir("nflogd-systest-")


@pytest.fixture
def booted(install_root: Path) -> Iterator[Callable[[Netns], Booted]]:
    made: list[Booted] = []

    def boot(ns: Netns) -> Booted:
        b = Booted(install_root, ns)
        made.append(b)
        return b

    yield boot
    for b in made:
        b.kill()


def host_pid(sd: Booted, pid: int) -> int:
    """The pid, as this test sees it, of the process that is ``pid`` in the booted systemd's PID
    namespace (the NSpid line of /proc/N/status lists a process's pid in each namespace)."""
    pidns = os.readlink(f"/proc/{sd.pid1}/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != pidns:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines()
                      if line.startswith("NSpid:")), [])
        if nspid and int(nspid[-1]) == pid:
            return int(entry)
    raise AssertionError(f"no process is pid {pid} in the booted systemd's namespace")


def install(root: Path) -> None:
    """systemd/install.sh PREFIX for real, its /etc writes kept in an overlay on a tmpfs (the host's
    /etc is untouched); the unit and config it wrote are copied to root/stage for the boot."""
    script = textwrap.dedent("""\
        set -eu
        root=$1 repo=$2
        mkdir "$root/scratch" "$root/stage"
        mount -t tmpfs nflogd-etc "$root/scratch"
        mkdir -m 0755 "$root/scratch/upper" "$root/scratch/work"
        mount -t overlay overlay \
            -o "lowerdir=/etc,upperdir=$root/scratch/upper,workdir=$root/scratch/work" /etc
        sh "$repo/systemd/install.sh" "$root/prefix"
        cp /etc/systemd/system/nflogd.service /etc/nflogd/nflogd.yaml "$root/stage/"
        """)
    host_had_config = Path("/etc/nflogd").exists()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           "install", str(root), str(REPO)], capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, f"install.sh: {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert Path("/etc/nflogd").exists() == host_had_config, "the install wrote to the host's /etc"
    unit = (root / "stage" / "nflogd.service").read_text()
    assert f"ExecStart={root}/prefix/venv/bin/nflogd --config /etc/nflogd/nflogd.yaml" in unit


def scrape(ns: Netns, port: int = 10040) -> dict[tuple[str, frozenset], float]:
    with ns.entered():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            body = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(body) for s in f.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no {name}{labels}; have {[k for k in samples if k[0] == name]}"
    return samples[key]


def test_systemd_runs_the_installed_unit(install_root: Path, booted) -> None:
    require_tools()
    install(install_root)
    with Netns("sysd") as ns:
        ns.nft("""
            table inet t {
                chain input {
                    type filter hook input priority 0;
                    udp dport 5555 counter log prefix "sysd drop" group 1 drop comment "dropped"
                }
            }
        """)
        sd = booted(ns)
        sd.wait_running()

        # start: Type=notify, so `systemctl start` returns once READY=1 arrived; a scrape answers then.
        t0 = time.monotonic()
        sd.systemctl("start", "nflogd", timeout=30)
        start_s = time.monotonic() - t0
        assert sd.show("ActiveState") == "active" and sd.show("SubState") == "running"
        assert sd.show("StatusText").startswith("1/1 groups bound"), sd.show("StatusText")
        s = scrape(ns)  # the installed default config: ":10040", group 0
        assert sample(s, "nflogd_group_bound", group="0") == 1
        assert sample(s, "process_cpu_seconds_total") > 0  # ProtectProc=invisible keeps them
        pid = sd.show("MainPID")
        status = sd.inside("cat", f"/proc/{pid}/status").stdout
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        uid = int(fields["Uid"].split()[0])
        assert uid >= 61184, f"not a DynamicUser uid: {uid}"  # systemd's dynamic range 61184-65519
        for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(fields[cap], 16) == CAP_NET_ADMIN, (cap, fields[cap])

        # reload with a good file: labels and a second group, applied (ExecReload checks, then HUPs).
        conf = sd.inside("cat", "/etc/nflogd/nflogd.yaml").stdout
        good = conf.replace("labels: [group, prefix, indev, outdev, uid]",
                            "labels: [group, prefix, action]")
        good = good.replace("groups:\n", "groups:\n  - group: 1\n    timeout: 0.1\n")
        assert good != conf and "group: 1" in good
        sd.inside("sh", "-c", "cat > /etc/nflogd/nflogd.yaml", input=good)
        sd.systemctl("reload", "nflogd")
        # With Type=notify (systemd 252 has no notify-reload) the reload job ends when `kill -HUP`
        # exits: the daemon's RELOADING=1 may come after it, so the unit can be "reloading" a moment
        # after `systemctl reload` returned. Wait for its READY=1, bounded.
        deadline = time.monotonic() + 10
        while sd.show("ActiveState") != "active":
            assert time.monotonic() < deadline, f"still {sd.show('ActiveState')} after reload"
            time.sleep(0.05)
        assert sd.show("SubState") == "running" and sd.show("MainPID") == pid
        ns.send_udp("127.0.0.1", 5555, 20)
        deadline = time.monotonic() + 5
        while True:
            s = scrape(ns)
            got = sum(v for (n, lb), v in s.items() if n == "nflog_packets_total"
                      and dict(lb).get("prefix") == "sysd drop")
            if got == 20 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sample(s, "nflogd_group_bound", group="1") == 1
        assert sample(s, "nflog_packets_total", group="1", prefix="sysd drop", action="drop") == 20
        assert ns.counters()["dropped"][0] == 20

        # reload with a bad file fails visibly; the daemon keeps running on the old config.
        sd.inside("sh", "-c", "cat > /etc/nflogd/nflogd.yaml", input=good + "bogus: 1\n")
        bad = sd.systemctl("reload", "nflogd", check=False)
        assert bad.returncode != 0, bad
        assert "failed" in bad.stderr, bad.stderr
        assert sd.show("ActiveState") == "active" and sd.show("MainPID") == pid
        assert "unknown key 'bogus'" in sd.inside("cat", "/run/nflogd.log").stdout
        s = scrape(ns)
        assert sample(s, "nflogd_config_last_reload_successful") == 1  # never got the HUP
        assert sample(s, "nflogd_group_bound", group="1") == 1

        # stop: SIGTERM, STOPPING=1, exit 0.
        sd.inside("sh", "-c", "cat > /etc/nflogd/nflogd.yaml", input=good)
        sd.systemctl("stop", "nflogd", timeout=30)
        assert sd.show("ActiveState") == "inactive"
        assert sd.show("Result") == "success" and sd.show("ExecMainStatus") == "0"
        log = sd.inside("cat", "/run/nflogd.log").stdout
        assert "level=info logger=nflogd msg=stopped" in log, log

        # The watchdog, for real: a stuck worker (group 1's, hung from outside by strace delaying
        # its next poll()) stops the pings, systemd kills and restarts nflogd.
        sd.inside("sh", "-c", "cat > /run/systemd/system/nflogd.service.d/stall.conf", input=(
            "[Service]\nWatchdogSec=2s\nRestartSec=3s\nLimitCORE=0\n"))
        sd.systemctl("daemon-reload")
        sd.systemctl("start", "nflogd")
        first = sd.show("MainPID")
        hang = stall(host_pid(sd, int(first)), 1)
        t1 = time.monotonic()
        # RestartSec=3s: the unit sits in auto-restart, Result=watchdog, long enough to be seen.
        deadline = t1 + 30
        killed_after = 0.0
        while sd.show("SubState") != "auto-restart":
            assert time.monotonic() < deadline, \
                f"not killed by the watchdog within 30 s: {sd.show('SubState')}"
            if sd.show("SubState") == "stop-watchdog" and not killed_after:
                # systemd has sent SIGABRT. The kernel may hand it to the thread strace holds
                # stopped, where it waits until strace lets go: a hung syscall would not hold it.
                killed_after = time.monotonic() - t1
                hang.stop()
            time.sleep(0.1)
        killed_after = killed_after or time.monotonic() - t1
        assert sd.show("Result") == "watchdog", sd.show("Result")
        assert killed_after > 5, f"killed {killed_after:.1f} s after start, before the heartbeat aged"
        deadline = time.monotonic() + 10
        while sd.show("SubState") != "running" or sd.show("MainPID") in ("0", first):
            assert time.monotonic() < deadline, "not running again after the watchdog restart"
            time.sleep(0.2)
        hang.stop()  # gone with the process it traced, if not stopped above: only reaped here
        assert sd.show("NRestarts") == "1"
        # The unit promises a traceback of every thread on the watchdog's SIGABRT: where it hangs.
        log = sd.inside("cat", "/run/nflogd.log").stdout
        assert "Fatal Python error: Aborted" in log and "worker.py" in log, log[-3000:]
        sd.systemctl("stop", "nflogd")
        print(f"systemctl start took {start_s:.2f} s; stuck worker killed and restarted by the "
              f"watchdog {killed_after:.1f} s after start")
