"""The C underneath nflogd.nflog, tested in C: bounds of every length the kernel sends (and of the
label fields parsed from the payload: addresses, ports, ICMP type, TCP flags, conntrack state,
named networks), truncated datagrams from the real kernel, and a clean -Wall -Wextra -Werror build.

The harnesses are compiled here with gcc against csrc/{record,sock,agg_table,netmatch}.c and run under
AddressSanitizer and UndefinedBehaviorSanitizer (leaks included: LeakSanitizer runs at exit).
Without gcc or libnetfilter_log's headers the tests fail, saying so.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from netns import REPO, Netns
from nflog_support import require_root, require_tool

SRC = REPO / "csrc"
TESTS = REPO / "tests"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
WARN = ["-std=gnu11", "-Wall", "-Wextra", "-Werror"]
FUZZ_SECONDS = 3


def build(tmp_path: Path, name: str, *sources: Path) -> Path:
    gcc = require_tool("gcc")
    out = tmp_path / name
    proc = subprocess.run([gcc, *WARN, "-O1", "-g", *SANITIZE, f"-I{SRC}", *map(str, sources),
                           "-lnetfilter_log", "-lmnl", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"building {name} failed (gcc, libnetfilter-log-dev and " \
        f"libmnl-dev are needed; `make test` installs them):\n{proc.stderr}"
    return out


def test_record_parser_and_datagram_walker_bound_every_length(tmp_path: Path) -> None:
    exe = build(tmp_path, "fuzz_record", TESTS / "fuzz_record.c", SRC / "record.c",
                SRC / "sock.c", SRC / "agg_table.c", SRC / "netmatch.c")
    seed = int(time.time())
    proc = subprocess.run([str(exe), str(FUZZ_SECONDS), str(seed)], capture_output=True,
                          text=True, timeout=FUZZ_SECONDS + 60,
                          env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
                               "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert proc.returncode == 0, f"seed {seed}:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.startswith("ok "), proc.stdout
    cases = int(proc.stdout.split()[1])
    assert cases > 100_000, proc.stdout  # the random phase really ran
    print(proc.stdout.strip())


def test_a_truncated_datagram_from_the_kernel_is_counted_and_never_parsed(tmp_path: Path) -> None:
    require_root()
    exe = build(tmp_path, "trunc_sock", TESTS / "trunc_sock.c", SRC / "record.c", SRC / "sock.c")
    os.chmod(tmp_path, 0o755)
    with Netns("trunc") as ns:
        ns.nft("""
        table ip t {
          chain out { type filter hook output priority 0;
            udp dport 7300 counter log group 1 comment "trunc"
          }
        }""")
        proc = ns.run(str(exe), check=False, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
        assert proc.stdout == b"ok\n"
        assert ns.counters()["trunc"][0] == 3


@pytest.mark.parametrize("source", sorted(p.name for p in SRC.glob("*.c")))
def test_the_extension_compiles_clean_with_all_warnings_as_errors(source: str) -> None:
    gcc = require_tool("gcc")
    include = sysconfig.get_paths()["include"]
    # A real -O2 compile (as setup.py does): some warnings only come from the optimiser.
    proc = subprocess.run([gcc, *WARN, "-O2", "-fPIC", "-fvisibility=hidden", f"-I{include}",
                           f"-I{SRC}", "-c", str(SRC / source), "-o", os.devnull],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
