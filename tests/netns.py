"""Real network namespaces for tests: traffic, nft rules and their counters, other uids.

Every test that touches the kernel builds its own namespace(s) here, so NFLOG groups, interfaces and
rules never collide with the host or with each other, and every namespace is deleted afterwards.
Traffic never leaves the namespaces a test made.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = str(Path(sys.executable))
# Debian's interpreter: readable by any uid, unlike a venv under /root (mode 700).
SYSTEM_PYTHON = "/usr/bin/python3"
NFLOGD = str(Path(sys.executable).with_name("nflogd"))

_counter = itertools.count()
CLONE_NEWNET = 0x40000000


def require_root() -> None:
    """Fail loudly (never skip) when the tests cannot do what they must."""
    if os.geteuid() != 0:
        raise RuntimeError("these tests need root (network namespaces, nft, NFLOG groups)")
    for tool in ("ip", "nft", "setpriv"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: run `make test`, which installs it")


def require_tool(name: str) -> str:
    """The path of a tool a test needs; fail (never skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make test`, which installs it")
    return path


def require_tools(*tools: str) -> None:
    """Root, the real tools and the built daemon, or a loud failure (never a skip)."""
    require_root()
    for tool in tools:
        require_tool(tool)
    if not os.access(NFLOGD, os.X_OK):
        raise RuntimeError(f"{NFLOGD} is missing: build the venv with `make venv`")


def run(cmd: Sequence[str], *, check: bool = True, input: bytes | str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its stderr, so the test says what broke."""
    proc = subprocess.run(list(cmd), input=input.encode() if isinstance(input, str) else input,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)!r} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


class Netns:
    """A private network namespace with loopback up; a context manager that deletes it.

    Named ``nflogd-TAG-PID-N`` so that :func:`delete_stale` can find the ones a killed process
    left behind. The tests and ``bench/`` both use this class.
    """

    def __init__(self, tag: str = "t") -> None:
        require_root()
        self.name = f"nflogd-{tag}-{os.getpid()}-{next(_counter)}"
        run(["ip", "netns", "add", self.name])
        try:
            self.ip("link", "set", "lo", "up")
        except Exception:
            self.delete()
            raise

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def delete(self) -> None:
        # Kill whatever still runs inside, then remove the namespace itself.
        pids = run(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            if pid == str(os.getpid()).encode():
                continue
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        run(["ip", "netns", "delete", self.name], check=False)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into this namespace (sockets made meanwhile stay in it)."""
        libc = ctypes.CDLL(None, use_errno=True)  # os.setns needs Python 3.12
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name} failed")
            try:
                yield
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back home failed")
        finally:
            os.close(home)
            os.close(target)

    def free_port(self) -> int:
        """A TCP port on 127.0.0.1 that nothing in this namespace listens on now."""
        with self.entered():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]
            finally:
                s.close()

    # -- running things inside ----------------------------------------------------------------
    def argv(self, cmd: Sequence[str], uid: int | None = None) -> list[str]:
        """The argv that runs cmd inside this namespace, as uid (and gid = uid) when given."""
        prefix = ["ip", "netns", "exec", self.name]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return prefix + list(cmd)

    def run(self, *cmd: str, uid: int | None = None, check: bool = True,
            input: bytes | str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(self.argv(cmd, uid), check=check, input=input, timeout=timeout)

    def popen(self, cmd: Sequence[str], uid: int | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd, uid), **kwargs)

    def ip(self, *args: str) -> None:
        self.run("ip", *args)

    # -- nftables ----------------------------------------------------------------------------
    def nft(self, ruleset: str) -> None:
        """Load a ruleset (nft -f syntax)."""
        self.run("nft", "-f", "-", input=textwrap.dedent(ruleset))

    def counters(self) -> dict[str, tuple[int, int]]:
        """{rule comment: (packets, bytes)} for every rule that has a comment and a counter."""
        data = json.loads(self.run("nft", "-j", "list", "ruleset").stdout)
        found: dict[str, tuple[int, int]] = {}
        for item in data.get("nftables", []):
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    c = expr["counter"]
                    found[rule["comment"]] = (c["packets"], c["bytes"])
        return found

    # -- traffic ------------------------------------------------------------------------------
    def send_udp(self, dst: str, port: int, count: int, size: int = 100, *, uid: int | None = None,
                 src: str | None = None, tos: int = 0) -> None:
        """Send `count` UDP datagrams of `size` payload bytes to dst:port from inside the namespace."""
        assert 0 < count <= 1_000_000, "bounded load only"
        script = (
            "import socket,sys\n"
            "dst,port,count,size,src=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]),sys.argv[5]\n"
            "fam=socket.AF_INET6 if ':' in dst else socket.AF_INET\n"
            "s=socket.socket(fam,socket.SOCK_DGRAM)\n"
            "if src: s.bind((src,0))\n"
            "data=b'x'*size\n"
            "for _ in range(count):\n"
            "    try: s.sendto(data,(dst,port))\n"
            "    except (ConnectionRefusedError, OSError): pass\n"
        )
        self.run(SYSTEM_PYTHON, "-c", script, dst, str(port), str(count), str(size), src or "",
                 uid=uid, timeout=120)


def delete_stale(tag: str) -> list[str]:
    """Delete the namespaces ``Netns(tag)`` made in processes that are gone (SIGKILLed, so their
    context managers never ran); returns their names."""
    pattern = re.compile(rf"nflogd-{re.escape(tag)}-(\d+)-\d+")
    stale = []
    for line in run(["ip", "netns", "list"], check=False).stdout.decode().splitlines():
        m = pattern.fullmatch(line.split()[0]) if line.split() else None
        if m and not Path(f"/proc/{m.group(1)}").exists():
            stale.append(m.group(0))
    for name in stale:
        for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        run(["ip", "netns", "delete", name], check=False)
    return stale


def veth_pair(a: Netns, b: Netns, name_a: str, name_b: str, addr_a: str, addr_b: str,
              prefixlen: int = 24) -> None:
    """Connect two namespaces with a veth pair and address both ends (IPv4)."""
    tmp = f"vt{os.getpid() % 100000}{next(_counter)}"
    run(["ip", "link", "add", tmp + "a", "type", "veth", "peer", "name", tmp + "b"])
    run(["ip", "link", "set", tmp + "a", "netns", a.name])
    run(["ip", "link", "set", tmp + "b", "netns", b.name])
    a.ip("link", "set", tmp + "a", "name", name_a)
    b.ip("link", "set", tmp + "b", "name", name_b)
    a.ip("addr", "add", f"{addr_a}/{prefixlen}", "dev", name_a)
    b.ip("addr", "add", f"{addr_b}/{prefixlen}", "dev", name_b)
    a.ip("link", "set", name_a, "up")
    b.ip("link", "set", name_b, "up")


def unused_uids(n: int) -> list[int]:
    """Uids that no account uses, for traffic that must carry a distinct uid."""
    import pwd
    used = {p.pw_uid for p in pwd.getpwall()}
    return [u for u in range(23000, 24000) if u not in used][:n]


