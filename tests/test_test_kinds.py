"""The two kinds of test hold what they promise: `pytest -m unit` needs no privilege.

conftest.py marks a test `unit` unless it needs the kernel (namespaces, NFLOG, nft). A test that
needs root but is marked `unit` by mistake would break `pytest -m unit` for a maintainer without
root; here the unit tests run with every capability dropped (uid 0 still reads the repository
wherever it lives, but cannot make a namespace, bind a group or load a ruleset), and must pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from netns import REPO, require_root, require_tool

pytestmark = pytest.mark.system


def test_unit_tests_pass_without_any_capability_within_seconds() -> None:
    require_root()
    setpriv = require_tool("setpriv")
    start = time.monotonic()
    proc = subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "pytest", "-m",
         "unit", "-q", "-p", "no:cacheprovider", str(REPO / "tests")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    took = time.monotonic() - start
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    passed = int(tail.rsplit(" passed", 1)[0].split()[-1])
    assert passed >= 150, tail  # the unit kind really holds the config, CLI, HTTP, notify tests
    assert "skipped" not in tail.splitlines()[-1], tail
    assert took < 120, f"the unit tests took {took:.0f} s: {tail}"


def test_every_test_has_exactly_one_kind() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:cacheprovider", str(REPO / "tests")], cwd=REPO,
                         capture_output=True, text=True, timeout=120).stdout
    total = int(out.strip().splitlines()[-1].split()[0])
    counts = {}
    for kind in ("unit", "system"):
        o = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", kind,
                            "-p", "no:cacheprovider", str(REPO / "tests")], cwd=REPO,
                           capture_output=True, text=True, timeout=120).stdout
        counts[kind] = int(o.strip().splitlines()[-1].split("/")[0])
    assert counts["unit"] + counts["system"] == total and min(counts.values()) > 0, (counts, total)
