"""nflogd benchmark harness: the same NFLOG flood, several consumers, interleaved rounds, medians.

Run through bench/run (it builds the C programs first). Everything happens in network namespaces
made here and deleted again (also on Ctrl-C or SIGTERM); traffic only goes to 127.0.0.1 inside
them; every loop and wait is bounded.

Per measurement: a fresh namespace with an nft rule that counts, logs (group G, prefix "bench")
and drops the flood; the consumer starts and binds the group; its CPU (all threads, all
descendant processes) is read before the flood and after it, once the kernel's flush timer has
fired and the consumer went idle; records seen are compared with the rule's counter.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
BIN = OUT / "bin"
VENV_PY = REPO / ".venv" / "bin" / "python"
VENV_NFLOGD = REPO / ".venv" / "bin" / "nflogd"
NFLOGD_EXE = VENV_NFLOGD   # --nflogd overrides it
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT = 9999          # flood destination; group n+1's traffic goes to PORT + n
GROUP = 5            # first NFLOG group; the second (scenario c) is GROUP + 1
METRICS_PORT = 10040
# Scenarios d and e: the labels of issue 11 (addresses, ports) on floods of many sources.
RICH_LABELS = ("group", "prefix", "saddr", "dport", "proto")
RICH_CONFIG = f"labels: [{', '.join(RICH_LABELS)}]\n"
BUDGET_SERIES = 10_000
FLUSH_S = 1.0        # kernel flush timer of every consumer here (kernel default, nflogd default)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, input: str | None = None, timeout: float = 60,
        check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return p


# ------------------------------------------------------------------------------------------------
# Namespaces: the tests' helper (tests/netns.py), one implementation for both
# ------------------------------------------------------------------------------------------------
sys.path.insert(0, str(REPO / "tests"))
from netns import Netns, delete_stale  # noqa: E402

NS_TAG = "bench"     # namespaces are nflogd-bench-PID-N


def flood_ruleset(groups: list[int], hook: str = "input") -> str:
    """One rule per group: count, log and drop UDP to PORT + i. With hook "output" the log rule
    sits in OUTPUT (records then carry the sender's uid) and the drop in INPUT, so sends succeed."""
    rules = []
    for i, g in enumerate(groups):
        verdict = "drop" if hook == "input" else ""
        rules.append(f'udp dport {PORT + i} counter log group {g} prefix "bench" {verdict} '
                     f'comment "g{g}"')
    body = "\n        ".join(rules)
    ports = ", ".join(str(PORT + i) for i in range(len(groups)))
    drop = "" if hook == "input" else f"udp dport {{ {ports} }} drop"
    return f"""
    table inet bench {{
      chain {hook} {{
        type filter hook {hook} priority 0; policy accept;
        {body}
      }}
      chain input_drop {{
        type filter hook input priority 10; policy accept;
        {drop}
      }}
    }}
    """


# ------------------------------------------------------------------------------------------------
# CPU and memory of a process tree, from /proc
# ------------------------------------------------------------------------------------------------
def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds of root and all its descendants.

    "ticks": utime+stime+cutime+cstime from /proc/PID/stat (the whole thread group plus reaped
    children) with the kernel's 10 ms granularity. "ns": the per-thread run time from
    /proc/PID/task/*/schedstat (the same quantity, in ns) plus reaped children's ticks: precise
    enough for a consumer that spends 20 ms on a million records.
    """
    ticks = ns = 0.0
    for pid in descendants(root):
        try:
            f = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]).split()
        except OSError:
            continue
        # after the ")" field 0 is state: utime=11 stime=12 cutime=13 cstime=14
        ut, st, cut, cst = (int(x) for x in f[11:15])
        ticks += (ut + st + cut + cst) / CLK_TCK
        ns += (cut + cst) / CLK_TCK
        try:
            for t in Path(f"/proc/{pid}/task").iterdir():
                try:
                    ns += int((t / "schedstat").read_text().split()[0]) / 1e9
                except (OSError, ValueError, IndexError):
                    pass
        except OSError:
            pass
    return {"ticks": ticks, "ns": ns}


def rss_bytes(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def bound_groups(pid: int) -> dict[int, dict[str, int]]:
    """Groups bound in pid's network namespace (/proc/PID/net/netfilter/nfnetlink_log)."""
    out = {}
    try:
        text = Path(f"/proc/{pid}/net/netfilter/nfnetlink_log").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0].isdigit():
            out[int(f[0])] = {"portid": int(f[1]), "copy_mode": int(f[3]), "copy_range": int(f[4]),
                              "timeout_cs": int(f[5])}
    return out


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def wait_idle(pid: int, timeout: float = 20.0) -> float:
    """Wait until the consumer tree uses < 1 % of a CPU over 0.3 s: it has read everything."""
    deadline = time.monotonic() + timeout
    prev = tree_cpu(pid)["ns"]
    quiet = 0
    while time.monotonic() < deadline:
        time.sleep(0.3)
        cur = tree_cpu(pid)["ns"]
        quiet = quiet + 1 if cur - prev < 0.003 else 0
        prev = cur
        if quiet >= 2:
            return cur
    return prev


def kill_tree(root: int, sig: int = signal.SIGKILL) -> None:
    for pid in reversed(descendants(root)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------------------------
# Consumers
# ------------------------------------------------------------------------------------------------
class Consumer:
    """One NFLOG reader. start() launches it inside ns for the given groups; collect() returns
    {"records": N, ...} after the flood (it may stop the process); stop() always cleans up."""

    name = "?"
    multi_group = False

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None

    def unavailable(self) -> str | None:
        return None

    def start(self, ns: Netns, groups: list[int]) -> None:
        raise NotImplementedError

    def ready(self, groups: list[int]) -> bool:
        assert self.proc
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode} before binding: "
                               f"{self._stderr_tail()}")
        b = bound_groups(self.proc.pid)
        return all(g in b for g in groups)

    def collect(self) -> dict:
        raise NotImplementedError

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10) -> tuple[str, str]:
        """Stop gracefully (so it prints/flushes its totals), then by force; return its output."""
        assert self.proc
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            out, err = self.proc.communicate(timeout=10)
        return out or "", err or ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            kill_tree(self.proc.pid)
        try:
            self.proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass
        self.proc = None

    def _stderr_tail(self) -> str:
        try:
            _, err = self.proc.communicate(timeout=2)   # type: ignore[union-attr]
            return (err or "").strip()[-500:]
        except Exception:
            return ""

    def popen(self, ns: Netns, cmd: list[str], env: dict | None = None) -> None:
        self.proc = subprocess.Popen(ns.argv(cmd), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)


class Floor(Consumer):
    """bench/floor.c: raw netlink, nlbuf 131072, large qthresh, copy range 128, F_SEQ."""

    name = "floor"

    def __init__(self, tmp: Path, default_batches: bool = False) -> None:
        super().__init__(tmp)
        self.default_batches = default_batches
        if default_batches:
            self.name = "floor-default-batch"

    def start(self, ns: Netns, groups: list[int]) -> None:
        assert len(groups) == 1
        cmd = [str(BIN / "floor"), "-g", str(groups[0]), "-t", "900"]
        if self.default_batches:
            cmd.append("-D")
        self.popen(ns, cmd)

    def collect(self) -> dict:
        out, err = self.terminate()
        m = dict(re.findall(r"(\w+)=([\d.]+)", out))
        if "records" not in m:
            raise RuntimeError(f"floor printed no result: {out!r} {err!r}")
        return {"records": int(m["records"]), "lost_by_seq": int(m["lost_by_seq"]),
                "records_per_datagram": float(m["records_per_datagram"]),
                "truncated": int(m["truncated"])}


class FloorMulti(Consumer):
    """One floor process per group (scenario c's reference: group readers never share a CPU)."""

    name = "floor"
    multi_group = True

    def start(self, ns: Netns, groups: list[int]) -> None:
        self.subs = []
        for g in groups:
            f = Floor(self.tmp)
            f.start(ns, [g])
            self.subs.append(f)
        self.proc = self.subs[0].proc

    def ready(self, groups: list[int]) -> bool:
        return all(f.ready([g]) for f, g in zip(self.subs, groups))

    def cpu_roots(self) -> list[int]:
        return [f.proc.pid for f in self.subs if f.proc]

    def collect(self) -> dict:
        res = [f.collect() for f in self.subs]
        return {"records": sum(r["records"] for r in res),
                "lost_by_seq": sum(r["lost_by_seq"] for r in res)}

    def stop(self) -> None:
        for f in getattr(self, "subs", []):
            f.stop()
        self.proc = None


class Tcpdump(Consumer):
    """tcpdump -i nflog:G -B 8192 -w /dev/null (libpcap; it sends PF_UNBIND/PF_BIND, which is
    why it only ever runs inside a throw-away namespace)."""

    name = "tcpdump"

    def unavailable(self) -> str | None:
        return None if shutil.which("tcpdump") else "tcpdump not installed"

    def start(self, ns: Netns, groups: list[int]) -> None:
        self.popen(ns, ["tcpdump", "-i", f"nflog:{groups[0]}", "-B", "8192", "-n", "-q",
                        "-w", "/dev/null"])

    def collect(self) -> dict:
        _, err = self.terminate(signal.SIGINT)
        # Its "dropped by kernel" is wrong for nflog; loss comes from the nft counter instead.
        m = re.search(r"(\d+) packets? captured", err)
        if not m:
            raise RuntimeError(f"tcpdump printed no count: {err[-300:]!r}")
        return {"records": int(m.group(1))}


ULOGD_PLUGINS = Path("/usr/lib/x86_64-linux-gnu/ulogd")


class Ulogd(Consumer):
    """ulogd2 with Debian's stock stack NFLOG -> BASE -> IFINDEX -> IP2STR -> PRINTPKT -> LOGEMU,
    writing its text log to tmpfs; NFLOG settings are ulogd's defaults (unbind=0 only, so it
    never sends PF_UNBIND)."""

    name = "ulogd2"

    def plugin_dir(self) -> Path | None:
        # Debian installs the plugins under the multiarch libdir, e.g. /usr/lib/x86_64-linux-gnu.
        for d in [ULOGD_PLUGINS, *sorted(Path("/usr/lib").glob("*/ulogd")), Path("/usr/lib/ulogd")]:
            if (d / "ulogd_inppkt_NFLOG.so").exists():
                return d
        return None

    def unavailable(self) -> str | None:
        if not shutil.which("ulogd"):
            return "ulogd2 not installed"
        if self.plugin_dir() is None:
            return "ulogd2 NFLOG plugin not found"
        return None

    def start(self, ns: Netns, groups: list[int]) -> None:
        d = self.plugin_dir()
        self.outfile = self.tmp / "ulogd-emu.log"
        self.outfile.unlink(missing_ok=True)
        plugins = "\n".join(f'plugin="{d}/ulogd_{p}.so"' for p in (
            "inppkt_NFLOG", "raw2packet_BASE", "filter_IFINDEX", "filter_IP2STR",
            "filter_PRINTPKT", "output_LOGEMU"))
        conf = self.tmp / "ulogd.conf"
        conf.write_text(
            f'[global]\nlogfile="{self.tmp}/ulogd.log"\nloglevel=5\n{plugins}\n'
            "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
            f"[log1]\ngroup={groups[0]}\nunbind=0\n"
            f'[emu1]\nfile="{self.outfile}"\nsync=0\n')
        self.popen(ns, ["ulogd", "-c", str(conf)])

    def collect(self) -> dict:
        self.terminate(signal.SIGTERM)
        n = count_lines(self.outfile)
        self.outfile.unlink(missing_ok=True)   # ~100 MB of text per million records, in RAM
        return {"records": n}


class Uacctd(Consumer):
    """pmacct's uacctd with the print plugin (aggregate dst_port, csv appended to tmpfs), pmacct's
    defaults otherwise (uacctd_threshold 1, nl_size 131072, snaplen 128). Core + plugin processes
    and the plugin's purge children are all counted."""

    name = "uacctd"

    def unavailable(self) -> str | None:
        return None if shutil.which("uacctd") else "pmacct (uacctd) not installed"

    def start(self, ns: Netns, groups: list[int]) -> None:
        self.outfile = self.tmp / "uacctd.csv"
        self.outfile.unlink(missing_ok=True)
        conf = self.tmp / "uacctd.conf"
        conf.write_text(textwrap.dedent(f"""\
            daemonize: false
            uacctd_group: {groups[0]}
            plugins: print
            aggregate: dst_port
            print_output: csv
            print_output_file: {self.outfile}
            print_output_file_append: true
            print_refresh_time: 60
            logfile: {self.tmp}/uacctd.log
            """))
        self.popen(ns, ["uacctd", "-f", str(conf)])

    def collect(self) -> dict:
        # SIGINT makes the plugin purge its cache to the file before exiting.
        self.terminate(signal.SIGINT, timeout=15)
        total = 0
        if self.outfile.exists():
            for line in self.outfile.read_text().splitlines():
                f = line.split(",")
                if len(f) >= 2 and f[1].isdigit():
                    total += int(f[1])
        return {"records": total}


class PyLoop(Consumer):
    """for rec in nflog.open(...): count += 1 (bench/pyloop.py, the venv's python)."""

    name = "python-loop"

    def unavailable(self) -> str | None:
        if not VENV_PY.exists():
            return "no venv (make venv)"
        p = run([str(VENV_PY), "-c", "from nflogd import nflog; nflog.open; nflog.COPY_PACKET; "
                 "nflog.ENOBUFS_DISABLE"], check=False, timeout=30)
        if p.returncode != 0:
            return "nflogd.nflog not available yet: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        return None

    def start(self, ns: Netns, groups: list[int]) -> None:
        self.countfile = self.tmp / "pyloop.count"
        self.countfile.unlink(missing_ok=True)
        self.popen(ns, [str(VENV_PY), str(BENCH / "pyloop.py"), str(groups[0]),
                        str(self.countfile)])

    def collect(self) -> dict:
        # wait_idle has run; one more report period makes sure the file has the final count.
        time.sleep(0.5)
        try:
            n, lost = (int(x) for x in self.countfile.read_text().split())
        except (OSError, ValueError):
            raise RuntimeError(f"python loop reported nothing: {self._stderr_tail()}")
        self.stop()
        return {"records": n, "lost_by_seq": lost if lost >= 0 else None}


class Nflogd(Consumer):
    """The daemon, default settings except the groups (and a loopback listen address inside the
    namespace); count from a real scrape; READY time from its sd_notify datagram."""

    name = "nflogd"
    multi_group = True

    def __init__(self, tmp: Path, extra_config: str = "") -> None:
        super().__init__(tmp)
        self.extra_config = extra_config
        self.exe = NFLOGD_EXE

    def unavailable(self) -> str | None:
        if self.exe != VENV_NFLOGD:   # --nflogd PATH: benchmark that build as it is
            return None if os.access(self.exe, os.X_OK) else f"{self.exe} is not executable"
        if not (REPO / "nflogd" / "daemon.py").exists():
            return "nflogd daemon not written yet (nflogd/daemon.py missing)"
        if not VENV_NFLOGD.exists():
            return "no .venv/bin/nflogd (make venv)"
        return None

    def start(self, ns: Netns, groups: list[int]) -> None:
        self.ns = ns
        self.groups = groups
        cfg = self.tmp / "nflogd.yaml"
        cfg.write_text("groups:\n" + "".join(f"  - group: {g}\n" for g in groups) +
                       f'listen: "127.0.0.1:{METRICS_PORT}"\n' + self.extra_config)
        # Our own NOTIFY_SOCKET: READY=1 arrives here, and the time until then is "start to READY".
        self.notify_path = self.tmp / "notify.sock"
        self.notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.ready_s: float | None = None
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path))
        self.t_start = time.monotonic()
        self.popen(ns, [str(self.exe), "--config", str(cfg)], env=env)

    def ready(self, groups: list[int]) -> bool:
        assert self.proc
        if self.proc.poll() is not None:
            raise RuntimeError(f"nflogd exited {self.proc.returncode}: {self._stderr_tail()}")
        self.notify.settimeout(0.05)
        try:
            for _ in range(100):   # drain what has arrived (STATUS=, READY=1, ...)
                msg = self.notify.recv(4096).decode(errors="replace")
                if "READY=1" in msg.split("\n") and self.ready_s is None:
                    self.ready_s = time.monotonic() - self.t_start
        except (socket.timeout, BlockingIOError):
            pass
        return self.ready_s is not None and super().ready(groups)

    def scrape(self, repeats: int = 1, gzip: bool = False, save: Path | None = None) -> dict:
        argv = [str(VENV_PY), str(BENCH / "scrape.py"), f"http://127.0.0.1:{METRICS_PORT}/metrics",
                str(repeats), "gzip" if gzip else "plain"] + ([str(save)] if save else [])
        return json.loads(run(self.ns.argv(argv), timeout=600).stdout)

    def check_config(self) -> str | None:
        """Why nflogd refuses this consumer's config (e.g. a label it does not know yet), or None."""
        cfg = self.tmp / "nflogd-check.yaml"
        cfg.write_text(f"groups:\n  - group: {GROUP}\n" + self.extra_config)
        p = run([str(self.exe), "--check-config", str(cfg)], check=False)
        if p.returncode == 0:
            return None
        return (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]

    def collect(self) -> dict:
        s = self.scrape()
        recs = sum(s["packets"].get(str(g), 0) for g in self.groups)
        return {"records": int(recs), "lost_by_seq": int(sum(s["lost"].values())),
                "ready_s": self.ready_s, "rss": rss_bytes(self.proc.pid).get("VmRSS"),
                "series_metrics": s.get("series_metrics")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate(signal.SIGTERM, timeout=10)
        super().stop()
        try:
            self.notify.close()
        except AttributeError:
            pass


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


# ------------------------------------------------------------------------------------------------
# One measurement
# ------------------------------------------------------------------------------------------------
def parse_flood(out: str) -> dict:
    m = dict(re.findall(r"(\w+)=([\d.]+)", out))
    return {"sent": int(m["sent"]), "elapsed": float(m["elapsed"]), "rate": float(m["rate"])}


def measure(consumer: Consumer, groups: list[int], flood_args: list[str], expect: int,
            perf: bool = False) -> dict:
    with Netns(NS_TAG) as ns:
        ns.nft(flood_ruleset(groups))
        try:
            consumer.start(ns, groups)
            if not wait_until(lambda: consumer.ready(groups), 30):
                raise RuntimeError(f"{consumer.name} did not bind {groups} within 30 s")
            time.sleep(0.3)    # let start-up work (imports, first allocations) finish
            roots = consumer.cpu_roots() if hasattr(consumer, "cpu_roots") else [consumer.proc.pid]
            cpu0 = [tree_cpu(r) for r in roots]
            perf_proc = None
            if perf:
                perf_proc = subprocess.Popen(
                    ["perf", "stat", "-x", ",", "-e", "task-clock,context-switches,instructions",
                     "-p", ",".join(str(p) for r in roots for p in descendants(r))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            fl = run(ns.argv([str(BIN / "flood")] + flood_args), timeout=expect / 50_000 + 120)
            flood = parse_flood(fl.stdout)
            # Every batch is flushed at most FLUSH_S after its first record; then wait for quiet.
            time.sleep(FLUSH_S + 0.1)
            for r in roots:
                wait_idle(r)
            cpu1 = [tree_cpu(r) for r in roots]
            perf_out = None
            if perf_proc:
                perf_proc.send_signal(signal.SIGINT)
                perf_out = perf_proc.communicate(timeout=10)[1]
            logged = sum(ns.counters().get(f"g{g}", (0, 0))[0] for g in groups)
            res = consumer.collect()
        finally:
            consumer.stop()
    cpu_s = sum(b["ns"] - a["ns"] for a, b in zip(cpu0, cpu1))
    cpu_ticks_s = sum(b["ticks"] - a["ticks"] for a, b in zip(cpu0, cpu1))
    recs = res["records"]
    out = dict(res)
    out.update({
        "logged": logged, "sent": flood["sent"], "sender_rate": flood["rate"],
        "flood_elapsed": flood["elapsed"],
        "loss_pct": 100.0 * (logged - recs) / logged if logged else None,
        "cpu_s": cpu_s, "cpu_ticks_s": cpu_ticks_s,
        "cpu_us_per_record": 1e6 * cpu_s / recs if recs else None,
    })
    if perf_out is not None:
        out["perf"] = perf_out.strip()
    return out


# ------------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------------
def scenario_defs(smoke: bool, records: int | None) -> dict:
    n_a = records or (20_000 if smoke else 1_000_000)
    n_b = 2 * n_a
    return {
        "a": {"title": f"{n_a:,} records paced at 100k/s, 1 sender", "groups": [GROUP],
              "flood": ["-n", str(n_a), "-r", "100000", "-P", "1"], "expect": n_a},
        "b": {"title": f"{n_b:,} records, 2 unpaced senders", "groups": [GROUP],
              "flood": ["-n", str(n_b), "-P", "2"], "expect": n_b},
        "c1": {"title": f"{n_a:,} records at 200k/s, 2 senders, ONE group", "groups": [GROUP],
               "flood": ["-n", str(n_a), "-r", "200000", "-P", "2"], "expect": n_a,
               "multi": True},
        "c2": {"title": f"{n_a:,} records at 200k/s, 2 senders, TWO groups at once",
               "groups": [GROUP, GROUP + 1],
               "flood": ["-n", str(n_a), "-r", "200000", "-P", "2", "-N", "2"], "expect": n_a,
               "multi": True},
        # The address labels: every source a series (d), or nearly every record a new key that
        # must displace another in a full budget (e). nflogd with these labels against the floor.
        "d": {"title": f"{n_a:,} records paced at 100k/s from 1,000 sources, labels "
                       f"[{', '.join(RICH_LABELS)}]", "groups": [GROUP],
              "flood": ["-n", str(n_a), "-r", "100000", "-P", "1", "-S", "1000"], "expect": n_a,
              "consumers": ("floor", "nflogd"), "nflogd_config": RICH_CONFIG},
        # d's flood with the default labels: what the address labels cost (issue 11: <= 1.3x)
        "d0": {"title": f"{n_a:,} records paced at 100k/s from 1,000 sources, default labels",
               "groups": [GROUP],
               "flood": ["-n", str(n_a), "-r", "100000", "-P", "1", "-S", "1000"], "expect": n_a,
               "consumers": ("floor", "nflogd")},
        "e": {"title": f"{n_a:,} records paced at 100k/s from random sources (4M addresses), "
                       f"labels [{', '.join(RICH_LABELS)}], max_series {BUDGET_SERIES:,} full "
                       "and displacing", "groups": [GROUP],
              "flood": ["-n", str(n_a), "-r", "100000", "-P", "1", "-R"], "expect": n_a,
              "consumers": ("floor", "nflogd"),
              "nflogd_config": RICH_CONFIG + f"max_series: {BUDGET_SERIES}\n"},
        "f": {"title": f"{n_b:,} records, 4 unpaced senders", "groups": [GROUP],
              "flood": ["-n", str(n_b), "-P", "4"], "expect": n_b,
              "consumers": ("floor", "nflogd")},
    }


def med(vals: list) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def summarize(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        summary[name] = {
            "rounds": len(ok), "errors": [r["error"] for r in rs if "error" in r],
            "records": med([r["records"] for r in ok]),
            "logged": med([r["logged"] for r in ok]),
            "loss_pct": med([r["loss_pct"] for r in ok]),
            "loss_pct_max": max([r["loss_pct"] for r in ok], default=None),
            "lost_by_seq": med([r.get("lost_by_seq") for r in ok]),
            "cpu_us_per_record": med([r["cpu_us_per_record"] for r in ok]),
            "cpu_ticks_us_per_record": med([1e6 * r["cpu_ticks_s"] / r["records"]
                                            if r["records"] else None for r in ok]),
            "sender_rate": med([r["sender_rate"] for r in ok]),
            "records_per_datagram": med([r.get("records_per_datagram") for r in ok]),
            "ready_s": med([r.get("ready_s") for r in ok]),
            "series_metrics": ok[-1].get("series_metrics") if ok else None,
        }
    return summary


def run_flood_scenarios(args, tmp: Path, consumers: list[Consumer], results: dict) -> None:
    defs = scenario_defs(args.smoke, args.records)
    wanted = []
    for s in args.scenarios:
        wanted += ["c1", "c2"] if s == "c" else [s] if s in defs else []
    for key in wanted:
        sd = defs[key]
        if sd.get("multi"):
            # Scenario c is about nflogd's parallel groups; floor (one process per group) is the
            # reference. Same consumer set for c1 and c2 so the pair compares like with like.
            cs = [c for c in consumers if c.multi_group or c.name == "floor"]
            cs = [FloorMulti(tmp) if c.name == "floor" else c for c in cs]
        else:
            cs = [c for c in consumers if not isinstance(c, FloorMulti)]
        if "consumers" in sd:
            cs = [c for c in cs if c.name in sd["consumers"]]
        if "nflogd_config" in sd:
            cs = [Nflogd(tmp, extra_config=sd["nflogd_config"]) if c.name == "nflogd" else c
                  for c in cs]
        # A config this nflogd refuses (a label it does not know yet) fails its runs, saying why.
        refused = {c.name: f"nflogd refuses the scenario's config: {why}" for c in cs
                   if isinstance(c, Nflogd) and (why := c.check_config())}
        log(f"scenario {key}: {sd['title']}; consumers {[c.name for c in cs]}")
        runs: dict[str, list[dict]] = {c.name: [] for c in cs}
        # Registered before the first measurement, so an interrupted run still reports its rounds.
        results["scenarios"][key] = {"title": sd["title"], "runs": runs}
        for rnd in range(args.rounds):
            for c in cs:      # interleaved: A B C ... A B C ..., so drift hits all alike
                if c.name in refused:
                    log(f"  round {rnd + 1} {c.name}: FAILED: {refused[c.name]}")
                    runs[c.name].append({"error": refused[c.name]})
                    continue
                try:
                    r = measure(c, sd["groups"], sd["flood"], sd["expect"], perf=args.perf)
                except RuntimeError as e:
                    log(f"  round {rnd + 1} {c.name}: FAILED: {e}")
                    r = {"error": str(e)}
                else:
                    log(f"  round {rnd + 1} {c.name}: records {r['records']:,}/{r['logged']:,} "
                        f"loss {r['loss_pct']:.3f}% cpu {r['cpu_s']:.3f}s "
                        f"= {fmt(r['cpu_us_per_record'], 3)} us/rec, sender "
                        f"{r['sender_rate']:,.0f}/s")
                runs[c.name].append(r)
        results["scenarios"][key]["summary"] = summarize(runs)


def run_series(args, tmp: Path, results: dict) -> None:
    """Scrape time/size and RSS with N series: N distinct uids, one record each, logged in OUTPUT
    (where records carry the socket's uid). flood's uid sweep opens one socket per uid from one
    process, so 100k series cost ~1 s of sending and one nft rule."""
    c = Nflogd(tmp)
    why = c.unavailable()
    if why:
        results["series"] = {"not_available": why}
        log(f"series: not available: {why}")
        return
    sizes = [1000] if args.smoke else [1000, 10_000, 100_000]
    out = {}
    for n in sizes:
        c = Nflogd(tmp, extra_config=f"max_series: {n + 1000}\n")
        with Netns(NS_TAG) as ns:
            ns.nft(flood_ruleset([GROUP], hook="output"))
            try:
                c.start(ns, [GROUP])
                if not wait_until(lambda: c.ready([GROUP]), 30):
                    raise RuntimeError("nflogd not ready within 30 s")
                rss0 = rss_bytes(c.proc.pid)
                fl = run(ns.argv([str(BIN / "flood"), "-U", str(n), "-u", "100000",
                                  "-n", str(n)]), timeout=600)
                time.sleep(FLUSH_S + 0.1)
                wait_idle(c.proc.pid)
                rss_rec = rss_bytes(c.proc.pid)   # aggregated, not yet scraped
                # Bounded wait until every series shows (snapshots may lag the records).
                seen = None
                for _ in range(30):
                    seen = c.scrape(1, gzip=True)  # as Prometheus: the peak below is its own
                    if (seen.get("series") or 0) >= n:
                        break
                    time.sleep(0.5)
                repeats = 5 if args.smoke else (7 if n >= 100_000 else 21)
                # As Prometheus scrapes (gzip) first: the peak RSS a deployment sees; then plain
                # text, whose body is ~28x larger in flight, and its own peak.
                z = c.scrape(repeats, gzip=True)
                rss_z = rss_bytes(c.proc.pid)
                body = tmp / "scrape-body.txt"
                s = c.scrape(repeats, save=body)
                rss1 = rss_bytes(c.proc.pid)
                out[str(n)] = {
                    "series": s.get("series"), "records": sum(s["packets"].values()),
                    "logged": ns.counters().get(f"g{GROUP}", (0, 0))[0],
                    "scrape_ms_median": 1000 * statistics.median(s["times"]),
                    "scrape_ms_min": 1000 * min(s["times"]),
                    "scrape_bytes": statistics.median(s["sizes"]), "repeats": repeats,
                    "gzip_scrape_ms_median": 1000 * statistics.median(z["times"]),
                    "gzip_scrape_bytes": statistics.median(z["sizes"]),
                    "gzip_encoding": z.get("encoding"),
                    "gzip_levels": gzip_levels(body.read_bytes()),
                    "rss_before_mb": rss0.get("VmRSS", 0) / 2**20,
                    "rss_records_mb": rss_rec.get("VmRSS", 0) / 2**20,
                    "rss_gzip_mb": rss_z.get("VmRSS", 0) / 2**20,
                    "hwm_gzip_mb": rss_z.get("VmHWM", 0) / 2**20,
                    "rss_after_mb": rss1.get("VmRSS", 0) / 2**20,
                    "hwm_mb": rss1.get("VmHWM", 0) / 2**20,
                    "ready_s": c.ready_s, "sweep": fl.stdout.strip(),
                }
                body.unlink()
                log(f"series {n}: {json.dumps(out[str(n)])}")
            except RuntimeError as e:
                out[str(n)] = {"error": str(e)}
                log(f"series {n}: FAILED: {e}")
            finally:
                c.stop()
    results["series"] = out


def gzip_levels(body: bytes) -> dict[str, dict[str, float]]:
    """What each gzip level costs and saves on a real scrape body (best of 3, this process): the
    figures behind the server's choice of level."""
    out = {}
    for level in (1, 6, 9):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            size = len(gzip.compress(body, compresslevel=level, mtime=0))
            best = min(best, time.perf_counter() - t0)
        out[str(level)] = {"ms": 1000 * best, "bytes": size}
    return out


def run_ready(args, tmp: Path, results: dict) -> None:
    """Start to READY=1, repeated; plus what `ip netns exec` itself costs (included in it)."""
    c = Nflogd(tmp)
    why = c.unavailable()
    if why:
        results["ready"] = {"not_available": why}
        return
    times = []
    with Netns(NS_TAG) as ns:
        t0 = time.monotonic()
        run(ns.argv(["true"]))
        netns_exec_s = time.monotonic() - t0
        for _ in range(1 if args.smoke else 5):
            try:
                c.start(ns, [GROUP])
                if wait_until(lambda: c.ready([GROUP]), 30):
                    times.append(c.ready_s)
            except RuntimeError as e:
                log(f"ready: FAILED: {e}")
            finally:
                c.stop()
    results["ready"] = {"ready_s": times, "median_s": med(times), "netns_exec_s": netns_exec_s}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def fmt(v, digits=2, pct=False) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}{'%' if pct else ''}"


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    osr = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            k, _, v = line.partition("=")
            osr[k] = v.strip('"')
    except OSError:
        pass

    def ver(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception:
            return "not installed"

    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "mem_gb": round(int(mem) / 2**20, 1), "os": osr.get("PRETTY_NAME", ""),
            "python": platform.python_version(),
            "tcpdump": ver(["tcpdump", "--version"]), "ulogd": ver(["ulogd", "-V"]),
            "uacctd": ver(["uacctd", "-V"])}


def render(results: dict) -> str:
    m = results["machine"]
    lines = [f"# nflogd benchmark ({results['when']})", "",
             f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['mem_gb']} GB, "
             f"kernel {m['kernel']}, "
             f"{m['os']}. Rounds: {results['rounds']} (interleaved), medians.", ""]
    if results.get("interrupted"):
        lines += ["**Interrupted: partial results.**", ""]
    if results["not_available"]:
        lines.append("Not available in this run: " + "; ".join(
            f"{k}: {v}" for k, v in results["not_available"].items()))
        lines.append("")
    for key, sc in results["scenarios"].items():
        lines += [f"## Scenario {key}: {sc['title']}", "",
                  "| consumer | records seen | nft logged | loss % (median / max) | lost by seq "
                  "| CPU us/record | (10 ms ticks) | records/datagram | sender rate/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, s in sc["summary"].items():
            if not s["rounds"]:
                why = f"failed: {s['errors'][0]}" if s["errors"] else "not run"
                lines.append(f"| {name} | {why} ||||||||")
                continue
            lines.append(
                f"| {name} | {s['records']:,.0f} | {s['logged']:,.0f} | {fmt(s['loss_pct'], 3)} / "
                f"{fmt(s['loss_pct_max'], 3)} | {fmt(s['lost_by_seq'], 0)} | "
                f"{fmt(s['cpu_us_per_record'], 3)} | {fmt(s['cpu_ticks_us_per_record'], 3)} | "
                f"{fmt(s['records_per_datagram'], 1)} | {fmt(s['sender_rate'], 0)} |")
        su = sc["summary"]
        nf = su.get("nflogd", {}).get("cpu_us_per_record")
        for ref in ("floor", "tcpdump"):
            r = su.get(ref, {}).get("cpu_us_per_record")
            if nf and r:
                lines.append(f"\nnflogd/{ref} CPU per record: {nf / r:.2f}x")
        lines.append("")
    c1 = results["scenarios"].get("c1", {}).get("summary", {})
    c2 = results["scenarios"].get("c2", {}).get("summary", {})
    for name in c1:
        a, b = c1[name].get("cpu_us_per_record"), c2.get(name, {}).get("cpu_us_per_record")
        if a and b:
            lines.append(f"{name}: two groups / one group CPU per record = {b / a:.2f}x")
    lines.append("")
    ser = results.get("series")
    if ser:
        lines += ["## Scrape size and time, RSS (nflogd)", ""]
        if "not_available" in ser:
            lines.append(f"not available: {ser['not_available']}")
        else:
            lines += ["| series | scrape ms (median) | scrape bytes | gzip scrape ms | gzip bytes | "
                      "RSS MB idle / aggregated / after gzip scrapes | peak RSS MB (gzip scrapes) | "
                      "after plain scrapes: RSS / peak MB |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for n, s in ser.items():
                if "error" in s:
                    lines.append(f"| {n} | failed: {s['error']} |||||||")
                else:
                    lines.append(f"| {int(s['series'] or n):,} | {fmt(s['scrape_ms_median'], 1)} | "
                                 f"{s['scrape_bytes']:,.0f} | {fmt(s['gzip_scrape_ms_median'], 1)} | "
                                 f"{s['gzip_scrape_bytes']:,.0f} | {fmt(s['rss_before_mb'], 1)} / "
                                 f"{fmt(s['rss_records_mb'], 1)} / {fmt(s['rss_gzip_mb'], 1)} | "
                                 f"{fmt(s['hwm_gzip_mb'], 1)} | {fmt(s['rss_after_mb'], 1)} / "
                                 f"{fmt(s['hwm_mb'], 1)} |")
            big = max((s for s in ser.values() if "gzip_levels" in s),
                      key=lambda s: s["scrape_bytes"], default=None)
            if big:
                lines += ["", f"gzip of the {int(big['series'] or 0):,}-series body "
                          f"({big['scrape_bytes']:,.0f} bytes) by level: " + ", ".join(
                              f"{lv}: {v['ms']:.1f} ms, {v['bytes']:,} bytes"
                              for lv, v in big["gzip_levels"].items())]
        lines.append("")
    rd = results.get("ready")
    if rd:
        if "not_available" in rd:
            lines.append(f"Start to READY: not available: {rd['not_available']}")
        else:
            lines.append(f"Start to READY=1 (median of {len(rd['ready_s'])}): "
                         f"{fmt(rd['median_s'], 3)} s (includes `ip netns exec`, itself "
                         f"{rd['netns_exec_s'] * 1000:.0f} ms)")
    lines += ["", "## Targets (issue 15)", "", "| target | measured | met |", "|---|---:|---|"]
    for what, value, limit in targets(results):
        met = "-" if value is None else ("yes" if value <= limit else "**no**")
        lines.append(f"| {what} <= {limit:g} | {fmt(value, 3)} | {met} |")
    load = results.get("load")
    if load:
        lines += ["", f"Load average (1 min) at start {load['start'][0]:.2f}, at end "
                      f"{load['end'][0]:.2f} on {m['nproc']} CPUs."]
    return "\n".join(lines) + "\n"


def targets(results: dict) -> list[tuple[str, float | None, float]]:
    """(what, measured, limit) for every figure issue 15 asks of one run; None: not measured."""
    sc = results["scenarios"]

    def cpu(key: str, name: str) -> float | None:
        return sc.get(key, {}).get("summary", {}).get(name, {}).get("cpu_us_per_record")

    def ratio(key: str, name: str = "nflogd", ref: str = "floor") -> float | None:
        a, b = cpu(key, name), cpu(key, ref)
        return a / b if a and b else None

    def loss(key: str) -> float | None:
        return sc.get(key, {}).get("summary", {}).get("nflogd", {}).get("loss_pct_max")

    ser = results.get("series") or {}

    def series(n: str, field: str) -> float | None:
        return ser.get(n, {}).get(field)

    c1, c2 = cpu("c1", "nflogd"), cpu("c2", "nflogd")
    ready = (results.get("ready") or {}).get("median_s")
    return [
        ("(a) nflogd/floor CPU per record, 100k/s", ratio("a"), 2.5),
        ("(b) nflogd/floor CPU per record, 2 unpaced senders", ratio("b"), 2.5),
        ("(d) nflogd/floor, address labels, 1,000 sources", ratio("d"), 3.3),
        ("(e) nflogd/floor, address labels, random sources, budget full", ratio("e"), 4.0),
        ("(d) address labels / default labels, same flood (issue 11)",
         cpu("d", "nflogd") / cpu("d0", "nflogd") if cpu("d", "nflogd") and cpu("d0", "nflogd")
         else None, 1.3),
        ("(e) loss % at 100k/s, budget full", loss("e"), 0),
        ("(a) loss % at 100k/s", loss("a"), 0),
        ("(f) loss % with 4 unpaced senders", loss("f"), 0),
        ("(c) two groups / one group CPU per record", c2 / c1 if c1 and c2 else None, 1.0),
        ("scrape ms, 10k series", series("10000", "scrape_ms_median"), 8),
        ("scrape ms, 100k series", series("100000", "scrape_ms_median"), 80),
        ("peak RSS MB, 10k series", series("10000", "hwm_gzip_mb"), 45),
        ("peak RSS MB, 100k series", series("100000", "hwm_gzip_mb"), 100),
        ("start to READY s", ready, 0.3),
    ]


# ------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="20k records, 1 round: under a minute")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--records", type=int, default=None,
                    help="records per flood in scenario a (b sends twice as many)")
    ap.add_argument("--scenarios", default="a,b,c,d0,d,e,f,series,ready",
                    help="comma list of a,b,c,d,e,f,series,ready")
    ap.add_argument("--consumers",
                    default="floor,floor-default-batch,tcpdump,ulogd2,uacctd,python-loop,nflogd",
                    help="comma list (floor-default-batch: floor with the kernel's default "
                         "batching)")
    ap.add_argument("--nflogd", default=None, metavar="PATH",
                    help="nflogd executable to measure (default: the repo's .venv/bin/nflogd)")
    ap.add_argument("--perf", action="store_true",
                    help="also run `perf stat` on the consumer during each flood")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.smoke else 3)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not (1 <= args.rounds <= 20) or (args.records is not None and
                                         not 1000 <= args.records <= 20_000_000):
        ap.error("rounds must be 1-20, records 1000-20000000")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces, nft, NFLOG)")

    if args.nflogd:
        global NFLOGD_EXE
        NFLOGD_EXE = Path(args.nflogd).resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in delete_stale(NS_TAG):
        log(f"deleted stale namespace {name}")
    # Consumer output files go to tmpfs so disk speed never limits ulogd2 or uacctd.
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    tmp = Path(tempfile.mkdtemp(prefix="nflogd-bench-", dir=shm))
    results: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                     "rounds": args.rounds, "smoke": args.smoke, "argv": sys.argv[1:],
                     "scenarios": {}, "not_available": {},
                     "load": {"start": os.getloadavg()}}

    factories = {"floor": lambda: Floor(tmp), "floor-default-batch": lambda: Floor(tmp, True),
                 "tcpdump": lambda: Tcpdump(tmp), "ulogd2": lambda: Ulogd(tmp),
                 "uacctd": lambda: Uacctd(tmp), "python-loop": lambda: PyLoop(tmp),
                 "nflogd": lambda: Nflogd(tmp)}
    consumers = []
    for name in args.consumers.split(","):
        name = name.strip()
        if name not in factories:
            ap.error(f"unknown consumer {name}")
        c = factories[name]()
        why = c.unavailable()
        if why:
            log(f"{name}: not available: {why}")
            results["not_available"][name] = why
        else:
            consumers.append(c)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    code = 0
    try:
        if any(s in args.scenarios for s in ("a", "b", "c", "d0", "d", "e", "f")):
            run_flood_scenarios(args, tmp, consumers, results)
        if "series" in args.scenarios:
            run_series(args, tmp, results)
        if "ready" in args.scenarios:
            run_ready(args, tmp, results)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        results["interrupted"] = True
        for sc in results["scenarios"].values():
            sc.setdefault("summary", summarize(sc["runs"]))
        code = 130
    finally:
        for c in consumers:
            c.stop()   # each namespace is deleted by its `with` block, also on Ctrl-C/SIGTERM
        shutil.rmtree(tmp, ignore_errors=True)

    results["load"]["end"] = os.getloadavg()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = render(results)
    for name in (f"bench-{stamp}", "latest"):
        (OUT / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
        (OUT / f"{name}.md").write_text(md)
    print(md)
    log(f"written {OUT}/bench-{stamp}.json and .md (also latest.*)")
    return code


if __name__ == "__main__":
    sys.exit(main())
