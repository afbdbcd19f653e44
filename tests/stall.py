"""Reach into a running nflogd from outside: find a group's worker thread, fault or stall it with
strace (syscall fault injection and delays), as a kernel or a hung syscall would.

No hook in the daemon: the thread is found from /proc alone. Each worker waits in
poll([netlink socket, wake fd], 2, 500 ms); the socket's inode leads to its netlink portid
(/proc/PID/net/netlink) and the portid to the NFLOG group (/proc/PID/net/netfilter/nfnetlink_log),
both as the daemon's own network namespace sees them.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import time
from pathlib import Path

from netns import require_tool

POLL_NR = 7  # x86_64 poll(2)
WAIT_MS = 500  # worker.WAIT_SECONDS, restated: a test must not take its numbers from the daemon


def _polling_threads(pid: int) -> dict[int, int]:
    """tid -> first fd polled, for threads waiting in poll() on 2 fds for WAIT_MS."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
            if not fields or fields[0] != str(POLL_NR) or int(fields[2], 16) != 2 \
                    or int(fields[3], 16) != WAIT_MS:
                continue
            with open(f"/proc/{pid}/mem", "rb") as mem:  # struct pollfd {int fd; short; short;}
                mem.seek(int(fields[1], 16))
                found[int(tid)] = struct.unpack("i", mem.read(4))[0]
        except (OSError, ValueError, struct.error):
            continue  # the thread moved on: look again
    return found


def _group_of_fd(pid: int, fd: int) -> int | None:
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    m = re.fullmatch(r"socket:\[(\d+)\]", link)
    if not m:
        return None
    rows = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]
    # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; Eth 12 is NETLINK_NETFILTER
    portids = [int(f[2]) for f in (r.split() for r in rows) if f[1] == "12" and f[9] == m.group(1)]
    if not portids:
        return None
    for line in Path(f"/proc/{pid}/net/netfilter/nfnetlink_log").read_text().splitlines():
        f = line.split()
        if f and int(f[1]) == portids[0]:
            return int(f[0])
    return None


def worker_tid(pid: int, group: int, timeout: float = 10.0) -> int:
    """The thread id of the worker reading NFLOG group ``group`` in process ``pid``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for tid, fd in _polling_threads(pid).items():
            try:
                if _group_of_fd(pid, fd) == group:
                    return tid
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no worker thread of pid {pid} found reading group {group}")


class Strace:
    """strace attached to one thread, injecting until stop() (strace then detaches and the thread
    runs on: a pending delay ends, the syscall proceeds)."""

    def __init__(self, tid: int, *inject: str) -> None:
        args = [require_tool("strace"), "-p", str(tid), "-o", "/dev/null"]
        for spec in inject:
            args += ["-e", f"inject={spec}"]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "strace: Process N attached"
        assert "attached" in line, f"strace did not attach: {line}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


def stall(pid: int, group: int, seconds: int = 120) -> Strace:
    """Make the group's worker hang: its next poll() does not even start for ``seconds``, as a
    worker stuck in the kernel would. The rest of the daemon runs on."""
    return Strace(worker_tid(pid, group), f"poll:delay_enter={seconds * 1_000_000}")
