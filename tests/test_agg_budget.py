"""The series budget of the C counter table (csrc/agg_table.c), tested in C against a model.

tests/agg_budget.c folds synthetic records with a synthetic clock and checks, after every step,
that rows plus remainder equal everything folded, that each row counts exactly from its admission,
that the hash index is intact after deletes, and the budget's promises (a steady key at 1 % gets a
row within min_residency + 10 s under a random flood, displacements within admit_rate per second,
expiry at the ttl, memory bounded by the budget). Built with AddressSanitizer and UBSan.
tests/agg_threads.c checks the locking (displacement across tables sharing a budget, a reader
copying them meanwhile) under ThreadSanitizer.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from netns import REPO, require_tool

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def test_series_budget_against_a_model(tmp_path: Path) -> None:
    gcc = require_tool("gcc")
    exe = tmp_path / "agg_budget"
    proc = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", *SANITIZE,
                           f"-I{REPO / 'csrc'}", str(REPO / "tests" / "agg_budget.c"),
                           str(REPO / "csrc" / "agg_table.c"), str(REPO / "csrc" / "record.c"),
                           str(REPO / "csrc" / "netmatch.c"), "-o", str(exe)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"building agg_budget failed (gcc and libnetfilter-log-dev are " \
        f"needed; `make test` installs them):\n{proc.stderr}"
    for seed in (int(time.time()), 1):
        run = subprocess.run([str(exe), str(seed)], capture_output=True, text=True, timeout=300,
                             check=False,
                             env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
                                  "UBSAN_OPTIONS": "print_stacktrace=1"})
        assert run.returncode == 0, f"seed {seed}:\n{run.stdout}\n{run.stderr}"
        assert run.stdout.splitlines()[-1].startswith("ok "), run.stdout
        print(run.stdout.strip())


def test_series_budget_locking_under_threads(tmp_path: Path) -> None:
    """tests/agg_threads.c under ThreadSanitizer: four tables sharing a budget, a writer thread
    each (displacing across tables), a reader copying them as a scrape does; sums exact."""
    gcc = require_tool("gcc")
    exe = tmp_path / "agg_threads"
    proc = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
                           "-fsanitize=thread", f"-I{REPO / 'csrc'}",
                           str(REPO / "tests" / "agg_threads.c"), str(REPO / "csrc" / "agg_table.c"),
                           str(REPO / "csrc" / "record.c"), str(REPO / "csrc" / "netmatch.c"),
                           "-lpthread", "-o", str(exe)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"building agg_threads failed:\n{proc.stderr}"
    seed = int(time.time())
    run = subprocess.run([str(exe), str(seed)], capture_output=True, text=True, timeout=300,
                         check=False, env={**os.environ, "TSAN_OPTIONS": "halt_on_error=1"})
    assert run.returncode == 0 and "WARNING: ThreadSanitizer" not in run.stderr, \
        f"seed {seed}:\n{run.stdout}\n{run.stderr}"
    assert run.stdout.splitlines()[-1].startswith("ok "), run.stdout
    print(run.stdout.strip())
