"""Whatever bytes the config or the web config hold: one located line, exit 2, in bounded time.

Thousands of mutated files go through both loaders in-process (fast); the exact cases that once
crashed or hung nflogd (3000-deep nesting, `a{99999999999}`, merge-key bombs, control characters)
also go through the real `nflogd --check-config` and start, and through a reload of a running
daemon, which must keep its old config. The seed is printed; NFLOGD_TEST_SEED replays a run.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from conftest import RunningDaemon
from netns import NFLOGD, REPO

from nflogd.config import ConfigError, load_config
from nflogd.webconfig import load_web_config

PER_FILE = 1.0  # seconds: the bound for any file
# A warning while loading (re.compile's FutureWarning was one) would reach the daemon's stderr as
# lines of its source: here it is an error, so the fuzzers find each one.
pytestmark = pytest.mark.filterwarnings("error")
HASH = "$2y$04$FGnePhNSDYoKt12WawlioORHhKw6MYvLQ9ek6GScNyy.GnJ7p3vbu"


def _bomb(levels: int, fan: int = 4) -> str:
    """Merge keys nested `levels` deep, each merging the previous level `fan` times: the shape
    that took 9 s at 432 bytes and 4x longer per 2 more levels."""
    lines = ["groups:", "  - &l0 {group: 1}"]
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * fan)
        lines.append(f"  - &l{i} {{<<: [{refs}], group: {i + 1}}}")
    return "\n".join(lines) + "\n"


CONFIG_CASES = {
    "labels-3000-deep-flow": "labels: " + "[" * 3000 + "]" * 3000 + "\n",
    "labels-3000-deep-block": "labels:\n" + "- " * 3000 + "group\n",
    "mapping-3000-deep":
        "groups:\n  - group: 1\n    labels: " + "{a: " * 3000 + "b" + "}" * 3000 + "\n",
    "regex-overflow": "actions: [{match: 'a{99999999999}', action: drop}]\n",
    "regex-3000-groups": "actions: [{match: '" + "(" * 3000 + ")" * 3000 + "', action: drop}]\n",
    "merge-key-bomb": _bomb(12),
    "merge-key-bomb-small": _bomb(6),
    "alias-laughs": "".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}" if i else "x"] * 10) + "]\n"
                            for i in range(9)),
    "alias-contains-itself": "labels: &a [*a]\n",
    "merge-contains-itself": "groups:\n  - &g\n    <<: *g\n    group: 1\n",
    "control-char-bel": "log_level: info\nmetrics_path: /a\x07b\n",
    "control-char-esc": "log_level: info\x1b\n",
    "nul": "groups:\n  - group: 1\x00\n",
    "huge-int": "max_series: 1" + "0" * 5000 + "\n",
    "huge-int-tagged": "max_series: !!int 1" + "0" * 5000 + "\n",
    "bad-timestamp": "log_level: !!timestamp 2001-13-99\n",
    "python-tag": "log_level: !!python/object/apply:os.system [id]\n",
    "not-utf8": "log_level: info\n# caf\xe9\n",
    "two-documents": "log_level: info\n---\nlog_level: debug\n",
    "half-megabyte-value": "log_level: " + "a" * 500_000 + "\n",
    "half-megabyte-key": "x" * 500_000 + ": 1\n",
}
WEB_CASES = {
    "tls-3000-deep": "tls_server_config: " + "{a: " * 3000 + "b" + "}" * 3000 + "\n",
    "users-3000-deep-list": "basic_auth_users:\n  a: " + "[" * 3000 + "]" * 3000 + "\n",
    "merge-key-bomb": _bomb(12),  # refused before the schema sees `groups:`
    "alias-laughs": CONFIG_CASES["alias-laughs"],
    "control-char-bel": "basic_auth_users:\n  a\x07: x\n",
    "control-char-esc": "http_server_config:\n  headers:\n    X-Frame-Options: \x1b[0m\n",
    "nul": "tls_server_config:\n  cert_file: \x00\n",
    "alias-contains-itself": "basic_auth_excluded_paths: &a [*a]\n",
}

LOCATED = r"{path}:\d+(:\d+)?: \S"


def _seed() -> int:
    seed = int(os.environ.get("NFLOGD_TEST_SEED", "0")) or random.randrange(1, 2**31)
    print(f"\nNFLOGD_TEST_SEED={seed}")
    return seed


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    return path


def _check(load: Callable[[str], object], path: Path, what: str) -> str | None:
    """Load in-process: a value or a located one-line ConfigError, under PER_FILE seconds.
    Returns the error text (None if the file was valid)."""
    start = time.monotonic()
    try:
        load(str(path))
        message = None
    except ConfigError as e:
        message = str(e)
    except Exception as e:  # noqa: BLE001 - exactly what must never happen
        raise AssertionError(f"{what}: {type(e).__name__}: {e}\n{path.read_bytes()[:2000]!r}"
                             ) from e
    took = time.monotonic() - start
    assert took < PER_FILE, f"{what}: {took:.2f} s\n{path.read_bytes()[:2000]!r}"
    if message is not None:
        assert "\n" not in message, message
        assert len(message) <= len(str(path)) + 520, f"{what}: a {len(message)}-character line"
        assert re.match(LOCATED.format(path=re.escape(str(path))), message), \
            f"{what}: not located: {message}"
    return message


# --- the exact cases, in-process --------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_config_case_is_one_located_line(tmp_path: Path, name: str) -> None:
    text = CONFIG_CASES[name]
    path = _write(tmp_path / "nflogd.yaml", text.encode("latin-1") if name == "not-utf8"
                  else text)
    message = _check(load_config, path, name)
    if name == "merge-key-bomb-small":  # 4**5 merged mappings: a valid file, read in time
        assert message is None, message
        return
    assert message is not None, f"{name} was accepted"
    print(f"\n{message[:160]}")


@pytest.mark.parametrize("name", list(WEB_CASES))
def test_web_config_case_is_one_located_line(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / "web.yml", WEB_CASES[name])
    message = _check(load_web_config, path, name)
    assert message is not None, f"{name} was accepted"
    assert "position" not in message, message
    print(f"\n{message[:160]}")


def test_a_file_over_2_mib_is_refused_unread(tmp_path: Path) -> None:
    path = _write(tmp_path / "nflogd.yaml", "log_level: info\n" + "#" * (3 << 20) + "\n")
    for load in (load_config, load_web_config):
        start = time.monotonic()
        with pytest.raises(ConfigError) as e:
            load(str(path))
        assert time.monotonic() - start < PER_FILE
        assert str(e.value) == f"{path}: larger than 2 MiB: refused (nflogd's files are a few " \
                               "kilobytes)"


# --- thousands of mutations, in-process -------------------------------------------------------

_TOKENS = [b"&a ", b"*a", b"<<: ", b"<<: *a", b"[", b"]", b"{", b"}", b": ", b"- ", b"\n", b"  ",
           b"!!int ", b"!!str ", b"!!float ", b"!!binary ", b"!!timestamp ", b"!!python/name:x ",
           b"%YAML 1.1\n", b"---\n", b"...\n", b"?", b"|", b">", b"'", b'"', b"#", b",", b"~",
           b"\x00", b"\x07", b"\x1b", b"\x7f", b"\xc3\xa9", b"\xff", b"\t", b"\r", b"\\", b"1e999",
           b"99999999999999999999", b"-1", b".nan", b"a{99999999999}", b"(?P<x>", b"*", b"0x",
           b"yes", b"null", b"\xef\xbb\xbf"]


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(6)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:  # insert a YAML-ish token
            data[at:at] = rng.choice(_TOKENS)
        elif op == 2:  # delete a run
            del data[at:at + rng.randrange(1, 20)]
        elif op == 3:  # repeat a run (nesting, anchors, lists grow)
            end = min(len(data), at + rng.randrange(1, 40))
            data[at:at] = data[at:end] * rng.randrange(2, 30)
        elif op == 4:  # splice a line of another seed
            lines = rng.choice(seeds).splitlines(keepends=True)
            data[at:at] = rng.choice(lines) if lines else b""
        else:  # swap two lines
            lines = bytes(data).splitlines(keepends=True)
            if len(lines) > 1:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
                data = bytearray(b"".join(lines))
    return bytes(data[:200_000])


def _config_seeds() -> list[bytes]:
    return [(REPO / "config" / "nflogd.yaml").read_bytes(), *(
        t.encode("latin-1", "replace") for t in CONFIG_CASES.values() if len(t) < 2000), b"""\
listen: "127.0.0.1:10040"
defaults: &d {qthresh: 100, timeout: 0.5}
groups:
  - {<<: *d, group: 1, labels: {site: a}}
  - <<: [*d]
    group: 2
    rcvbuf: 1048576
actions:
  - {match: "^drop", action: drop}
  - {match: 'acc(ept)?', action: accept}
labels: [group, prefix, action, uid]
max_series: 500
"""]


def _web_seeds() -> list[bytes]:
    return [(f"""\
tls_server_config:
  cert_file: a.pem
  key_file: a.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.pem
  min_version: TLS12
  client_allowed_sans: [a, b]
http_server_config:
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=1
basic_auth_users:
  alice: {HASH}
basic_auth_excluded_paths: [/health]
rate_limit: {{interval: 1s, burst: 10}}
""").encode(), f"basic_auth_users: {{a: '{HASH}', b: '{HASH}'}}\nrate_limit:\n  interval: 250ms\n"
                .encode(), *(t.encode() for t in WEB_CASES.values() if len(t) < 2000)]


def test_thousands_of_mutated_configs(tmp_path: Path) -> None:
    rng = random.Random(_seed())
    seeds = _config_seeds()
    path = tmp_path / "nflogd.yaml"
    valid = 0
    start = time.monotonic()
    for i in range(5000):
        _write(path, _mutate(rng, seeds))
        if _check(load_config, path, f"config mutation {i}") is None:
            valid += 1
    print(f"5000 configs in {time.monotonic() - start:.1f} s, {valid} valid")
    assert valid < 5000  # the mutations did produce bad files


def test_thousands_of_mutated_web_configs(tmp_path: Path) -> None:
    rng = random.Random(_seed())
    seeds = _web_seeds()
    path = tmp_path / "web.yml"
    for name in ("a.pem", "a.key", "ca.pem"):
        (tmp_path / name).write_text("not a PEM\n")  # read, refused with the key's line
    start = time.monotonic()
    messages = [_check(load_web_config, _write(path, _mutate(rng, seeds)), f"web mutation {i}")
                for i in range(3000)]
    print(f"3000 web configs in {time.monotonic() - start:.1f} s, "
          f"{messages.count(None)} valid")
    assert all(m is None or "position" not in m for m in messages)


# --- the real program: --check-config and start -------------------------------------------

def _run(args: list[str]) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run([NFLOGD, *args], capture_output=True, timeout=30)
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace"), \
        time.monotonic() - start


@pytest.mark.parametrize("name", ["labels-3000-deep-flow", "regex-overflow", "merge-key-bomb",
                                  "control-char-bel", "alias-contains-itself"])
def test_check_config_and_start_exit_2_with_one_line(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / "nflogd.yaml", CONFIG_CASES[name])
    for args in (["--check-config", str(path)], ["--config", str(path)]):
        rc, out, took = _run(args)
        assert rc == 2, f"{args}: exit {rc}: {out}"
        assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
        assert re.match(rf"nflogd: {re.escape(str(path))}:\d+(:\d+)?: ", out), out
        assert took < 5.0, f"{took:.1f} s (interpreter start included)"


@pytest.mark.parametrize("name", ["tls-3000-deep", "merge-key-bomb", "control-char-esc"])
def test_check_config_of_a_bad_web_config_exits_2(tmp_path: Path, name: str) -> None:
    web = _write(tmp_path / "web.yml", WEB_CASES[name])
    cfg = _write(tmp_path / "nflogd.yaml", "log_level: info\n")
    rc, out, took = _run(["--check-config", str(cfg), "--web.config.file", str(web)])
    assert rc == 2, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert re.match(rf"nflogd: {re.escape(str(web))}:\d+(:\d+)?: ", out), out
    assert took < 5.0


# --- reload: the old config stays -----------------------------------------------------------

def test_reload_with_each_bad_file_keeps_the_old_config(make_netns, start_daemon,
                                                        tmp_path: Path) -> None:
    ns = make_netns("fuzzreload")
    web = tmp_path / "web.yml"
    web.write_text("")
    d: RunningDaemon = start_daemon(ns, f"web_config_file: {web}\ngroups:\n  - group: 50\n")
    good = d.config_path.read_text()
    cases = [(name, "config", text) for name, text in CONFIG_CASES.items()
             if name != "merge-key-bomb-small"]  # that one is valid
    cases += [(name, "web", text) for name, text in WEB_CASES.items()]
    for name, which, text in cases:
        d.config_path.write_text(good)
        web.write_text("")
        bad = web if which == "web" else d.config_path
        if which == "web":
            web.write_text(text)
        elif name == "not-utf8":
            d.config_path.write_bytes(good.encode() + b"# caf\xe9\n")
        else:
            d.config_path.write_text(good + text if not text.startswith("groups:") else
                                     good.split("groups:")[0] + text)
        before = d.stderr().count("reload refused")
        d.send(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while d.stderr().count("reload refused") == before and time.monotonic() < deadline:
            assert d.proc.poll() is None, f"{name}: nflogd died: {d.stderr()}"
            time.sleep(0.02)
        line = d.stderr().splitlines()[-1]
        assert "reload refused" in line and re.search(rf"{re.escape(str(bad))}:\d+", line), \
            f"{which} {name}: {line}"
        s = d.scrape()
        assert s.value("nflogd_config_last_reload_successful") == 0, name
        assert s.value("nflogd_group_bound", group="50") == 1, name
    assert "Traceback" not in d.stderr(), d.stderr()
    d.config_path.write_text(good)
    web.write_text("")
    d.send(signal.SIGHUP)
    d.wait_for(lambda s: s.value("nflogd_config_last_reload_successful") == 1)
    assert d.scrape().value("nflogd_config_last_reload_successful") == 1
