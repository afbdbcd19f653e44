"""The benchmark still runs: a short smoke run of bench/run on the real kernel.

Speed is not asserted here (CI machines are shared and noisy; the full bench/run reports ratios).
What a user of the benchmark relies on is: it builds, floods inside its own namespace, cleans up,
and every consumer it measures sees exactly what the nft rule counted, also in the many-source and
random-source floods of the address labels (d, e).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import REPO, require_tool, require_tools  # noqa: E402

CONSUMERS = ("floor", "python-loop", "nflogd")


def namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              check=True).stdout.split())


def test_bench_smoke_run_counts_exactly_and_cleans_up() -> None:
    require_tools()
    require_tool("gcc")
    env = dict(os.environ, NFLOGD_BENCH_SKIP_INSTALL="1")
    # bench/run execs the harness, so its namespaces are nflogd-bench-<this pid>-N.
    bench = subprocess.Popen([str(REPO / "bench" / "run"), "--smoke", "--scenarios", "a,d0,d,e",
                              "--consumers", ",".join(CONSUMERS)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = bench.communicate(timeout=400)
    assert bench.returncode == 0, stderr[-3000:]
    result = json.loads((REPO / "bench" / "out" / "latest.json").read_text())
    runs = [("a", c) for c in CONSUMERS] + [(k, c) for k in ("d0", "d", "e")
                                                  for c in ("floor", "nflogd")]
    for scenario, consumer in runs:
        s = result["scenarios"][scenario]["summary"][consumer]
        assert not s["errors"], (scenario, consumer, s["errors"])
        assert s["logged"] > 0 and s["records"] == s["logged"], (scenario, consumer, s)
        assert s["loss_pct"] == 0 and s["lost_by_seq"] == 0, (scenario, consumer, s)
        assert s["cpu_us_per_record"] > 0, (scenario, consumer, s)
    # Its own namespaces are gone (another bench run's may come and go meanwhile).
    own = f"nflogd-bench-{bench.pid}-"
    assert not {n for n in namespaces() if n.startswith(own)}, namespaces()
