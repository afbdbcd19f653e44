"""Shared fixtures for the end-to-end tests: namespaces that are always deleted, and the real nflogd
process started inside one, scraped over HTTP and parsed with a real exposition parser.

- ``make_netns(tag)``: a new :class:`netns.Netns`, deleted at teardown (also when the test fails).
- ``start_daemon(ns, config_text, ...)``: the real ``nflogd --config FILE`` running inside ``ns``,
  listening on a free port of 127.0.0.1 there, returned once ``/metrics`` answers. At teardown it
  gets SIGTERM and must exit 0 (or is killed, and the teardown fails, saying why).
- ``promtool_check(text)``: ``promtool check metrics`` on a scrape; fails with promtool's words.

Two kinds of test, marked here by what they need (``pytest -m unit`` / ``pytest -m system``): a
test is ``system`` when it uses ``make_netns`` or ``start_daemon``, or its module imports the
namespace helpers (``netns``, ``nflog_support``: the real kernel, root, tools), or it is marked
``system`` itself; every other test is ``unit`` and runs as any user, without a kernel or systemd.

Nothing here skips: without root, nft, ip, setpriv or promtool the tests fail and say what is
missing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import NFLOGD, Netns, require_tools  # noqa: E402

STOP_TIMEOUT = 5.0


# --- the two kinds of test -----------------------------------------------------------------

SYSTEM_FIXTURES = frozenset({"make_netns", "start_daemon"})
SYSTEM_HELPERS = frozenset({"netns", "nflog_support"})


def _needs_system(item: pytest.Item) -> bool:
    if item.get_closest_marker("system") is not None:
        return True
    if SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    return any(getattr(v, "__module__", getattr(v, "__name__", None)) in SYSTEM_HELPERS
               for v in vars(module).values()) if module is not None else False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.system if _needs_system(item) else pytest.mark.unit)


# --- parsed scrapes ------------------------------------------------------------------------

class Scrape:
    """One /metrics body parsed by prometheus_client's exposition parser.

    ``samples`` maps (sample name, frozenset of label pairs) to the value; a duplicate series in
    the body is an error, since Prometheus would reject the scrape.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in self.samples, f"duplicate series {s.name}{s.labels}"
                self.samples[key] = s.value

    def series(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        """Every (labels, value) of ``name`` whose labels include ``match``."""
        out = []
        for (n, labels), value in self.samples.items():
            d = dict(labels)
            if n == name and all(d.get(k) == v for k, v in match.items()):
                out.append((d, value))
        return out

    def value(self, name: str, **labels: str) -> float:
        """The value of the one series of ``name`` with exactly these labels."""
        key = (name, frozenset(labels.items()))
        if key not in self.samples:
            have = [dict(lb) for n, lb in self.samples if n == name]
            raise AssertionError(f"no series {name}{labels}; present: {have}")
        return self.samples[key]

    def total(self, name: str, **match: str) -> float:
        return sum(v for _, v in self.series(name, **match))


def promtool_check(text: str) -> None:
    """``promtool check metrics`` must accept the scrape without a single complaint."""
    require_tools("promtool")
    proc = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30)
    out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    assert proc.returncode == 0 and not out, f"promtool check metrics: rc {proc.returncode}: {out}"


# --- the daemon ----------------------------------------------------------------------------

class RunningDaemon:
    """The real nflogd process inside a namespace; stderr goes to a file that tests can read."""

    def __init__(self, ns: Netns, workdir: Path, config_text: str | None, *,
                 args: Sequence[str] = (), port: int | None = None,
                 argv: Sequence[str] | None = None, switch_interval: float | None = None,
                 wait: bool = True) -> None:
        # switch_interval: the daemon's sys.setswitchinterval(); a tiny one interleaves its threads
        # at almost every bytecode, so a race between a scrape and a reload shows in a few tries.
        self.ns = ns
        self.port = port or ns.free_port()
        self.config_path = workdir / f"nflogd-{self.port}.yaml"
        self.stderr_path = workdir / f"nflogd-{self.port}.stderr"
        if argv is None:
            assert config_text is not None
            self.write_config(config_text)
            argv = [NFLOGD, "--config", str(self.config_path), *args]
            if switch_interval is not None:
                argv[:1] = [sys.executable, "-c", "import runpy, sys; "
                            f"sys.setswitchinterval({switch_interval!r}); "
                            "runpy.run_module('nflogd', run_name='__main__')"]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = ns.popen(list(argv), stdin=subprocess.DEVNULL, stdout=self._stderr,
                             stderr=self._stderr)
        self.stopped_rc: int | None = None
        if wait:
            self.wait_ready()

    # -- config and signals ---------------------------------------------------------------------
    def write_config(self, text: str) -> str:
        """Write the config, adding our listen address unless the text sets one; returns it."""
        text = textwrap.dedent(text)
        if not any(line.startswith("listen:") for line in text.splitlines()):
            text = f'listen: "127.0.0.1:{self.port}"\n' + text
        self.config_path.write_text(text)
        return text

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
        """Send ``sig``; returns (exit code, seconds from the signal to the exit)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"nflogd did not exit within {timeout} s of signal {sig}; "
                                 f"stderr:\n{self.stderr()}") from None
        self.stopped_rc = rc
        return rc, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        self._stderr.close()

    # -- scraping -------------------------------------------------------------------------------
    def get(self, path: str = "/metrics", timeout: float = 5.0) -> tuple[int, str, str]:
        """(status, content type, body) of a GET on the daemon, made from inside the namespace."""
        with self.ns.entered():
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return resp.status, resp.headers.get("Content-Type", ""), \
                        resp.read().decode("utf-8")
            except urllib.error.HTTPError as e:
                body = e.read().decode("utf-8", "replace")
                return e.code, e.headers.get("Content-Type", ""), body

    def scrape_text(self) -> str:
        status, ctype, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {body[:500]}"
        assert ctype.startswith("text/plain"), ctype
        return body

    def scrape(self) -> Scrape:
        return Scrape(self.scrape_text())

    def wait_ready(self, timeout: float = 10.0) -> Scrape:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nflogd exited {self.proc.returncode} during start-up; "
                                     f"stderr:\n{self.stderr()}")
            try:
                return self.scrape()
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"/metrics did not answer within {timeout} s; "
                                         f"stderr:\n{self.stderr()}") from None
                time.sleep(0.05)

    def wait_for(self, condition: Callable[[Scrape], bool], timeout: float = 5.0) -> Scrape:
        """Scrape until ``condition`` holds (e.g. the kernel flushed its batch); return that scrape.

        On the deadline the last scrape is returned anyway, so the caller's exact assertions say
        what differs rather than a bare timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            s = self.scrape()
            if condition(s) or time.monotonic() > deadline:
                return s
            assert self.proc.poll() is None, f"nflogd died: {self.stderr()}"
            time.sleep(0.1)


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], Netns]]:
    """Factory of namespaces, every one deleted at teardown."""
    made: list[Netns] = []

    def make(tag: str = "t") -> Netns:
        require_tools("ip", "nft", "setpriv")
        ns = Netns(tag)
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.delete()


@pytest.fixture
def start_daemon(make_netns: Callable[[str], Netns], tmp_path: Path
                 ) -> Iterator[Callable[..., RunningDaemon]]:
    """Factory: ``start_daemon(ns, config_text, args=(), wait=True)`` -> RunningDaemon.

    Torn down before the namespaces (it depends on make_netns): each daemon still running gets
    SIGTERM and must exit 0; one that does not is killed and the teardown fails with its stderr.
    """
    started: list[RunningDaemon] = []

    def start(ns: Netns, config_text: str | None, *, wait: bool = True,
              **kwargs: object) -> RunningDaemon:
        require_tools("ip", "nft")
        d = RunningDaemon(ns, tmp_path, config_text, wait=False, **kwargs)  # type: ignore[arg-type]
        started.append(d)
        if wait:
            d.wait_ready()
        return d

    yield start
    problems = []
    for d in started:
        try:
            if d.proc.poll() is None:
                rc, _ = d.stop(signal.SIGTERM)
                if rc != 0:
                    problems.append(f"nflogd exited {rc} on SIGTERM; stderr:\n{d.stderr()}")
        except AssertionError as e:
            problems.append(str(e))
        finally:
            d.kill()
            d.close()
    assert not problems, "\n".join(problems)
