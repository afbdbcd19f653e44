"""The README's metric table names every metric a running nflogd exports, and nothing else
(issue 13: the nflogd_http_* ones were missing). Scraped from the real daemon with traffic, so the
record counters are there too.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def documented() -> tuple[set[str], set[str]]:
    """(metric names, name prefixes written as `prefix_*`) of the 'What it exports' table."""
    text = README.read_text()
    # The section's text up to its next heading (### Labels has a table of its own).
    section = re.split(r"\n#+ ", text.split("\n## What it exports\n", 1)[1], maxsplit=1)[0]
    names, prefixes = set(), set()
    for line in section.splitlines():
        m = re.match(r"\| `([a-z_:*]+)", line)
        if m:
            name = m.group(1)
            if name.endswith("*"):
                prefixes.add(name[:-1])
            else:
                names.add(name)
    return names, prefixes


def test_metric_table_matches_a_scrape(make_netns, start_daemon) -> None:
    ns = make_netns("readme")
    ns.nft("""
        table inet t {
            chain input {
                type filter hook input priority 0;
                udp dport 5555 counter log prefix "readme drop" group 7 drop comment "dropped"
            }
        }
    """)
    d = start_daemon(ns, "groups:\n  - group: 7\n    timeout: 0.1\n")
    ns.send_udp("127.0.0.1", 5555, 3)
    s = d.wait_for(lambda s: s.total("nflog_packets_total") == 3)
    d.get("/nope")  # a 404, so the request counter has a series of its own
    s = d.scrape()
    exported = {name for name, _ in s.samples}
    exported -= {n for n in exported if n.endswith("_created") and n[:-8] + "_total" in exported}
    names, prefixes = documented()
    assert names, "no metric table found in the README"
    undocumented = sorted(n for n in exported
                          if n not in names and not any(n.startswith(p) for p in prefixes))
    assert undocumented == [], f"exported but not in the README's table: {undocumented}"
    stale = sorted(names - exported)
    assert stale == [], f"in the README's table but not exported: {stale}"
    assert any(n.startswith("process_") for n in exported)
