"""Scrape nflogd's /metrics from inside the benchmark's namespace and print one JSON line.

Usage: scrape.py URL REPEATS
Times REPEATS full scrapes (a fresh connection each, body read to the end, as Prometheus does),
then parses the last body with prometheus_client's parser (outside the timing) and reports the
per-group totals the harness compares against the nft counter.
"""

import json
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

url, repeats = sys.argv[1], max(1, int(sys.argv[2]))
times, sizes, body = [], [], b""
for _ in range(repeats):
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()
    times.append(time.perf_counter() - t0)
    sizes.append(len(body))

packets: dict = {}
lost: dict = {}
received: dict = {}
series = None
for fam in text_string_to_metric_families(body.decode("utf-8")):
    for s in fam.samples:
        g = s.labels.get("group")
        if s.name == "nflog_packets_total":
            packets[g] = packets.get(g, 0) + s.value
        elif s.name == "nflogd_messages_lost_total":
            lost[g] = lost.get(g, 0) + s.value
        elif s.name == "nflogd_messages_received_total":
            received[g] = received.get(g, 0) + s.value
        elif s.name == "nflogd_series":
            series = s.value
print(json.dumps({"times": times, "sizes": sizes, "packets": packets, "lost": lost,
                  "received": received, "series": series}))
