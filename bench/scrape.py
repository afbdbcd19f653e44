"""Scrape nflogd's /metrics from inside the benchmark's namespace and print one JSON line.

Usage: scrape.py URL REPEATS [gzip] [SAVE_FILE]
Times REPEATS full scrapes (a fresh connection each, body read to the end, as Prometheus does;
with "gzip" asking for `Accept-Encoding: gzip` as Prometheus does, the time and size then being
the compressed response's), then parses the last body with prometheus_client's parser (outside the
timing) and reports the per-group totals the harness compares against the nft counter, and the
`nflogd_series*` figures. SAVE_FILE, if given, receives the last (uncompressed) body.
"""

import gzip
import json
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

url, repeats = sys.argv[1], max(1, int(sys.argv[2]))
want_gzip = len(sys.argv) > 3 and sys.argv[3] == "gzip"
save = sys.argv[4] if len(sys.argv) > 4 else None
headers = {"Accept-Encoding": "gzip"} if want_gzip else {}
times, sizes, body, encoding = [], [], b"", None
for _ in range(repeats):
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
        body = resp.read()
        encoding = resp.headers.get("Content-Encoding")
    times.append(time.perf_counter() - t0)
    sizes.append(len(body))
if encoding == "gzip":
    body = gzip.decompress(body)
if save:
    with open(save, "wb") as f:
        f.write(body)

packets: dict = {}
lost: dict = {}
received: dict = {}
series: dict = {}
for fam in text_string_to_metric_families(body.decode("utf-8")):
    for s in fam.samples:
        g = s.labels.get("group")
        if s.name == "nflog_packets_total":
            packets[g] = packets.get(g, 0) + s.value
        elif s.name == "nflogd_messages_lost_total":
            lost[g] = lost.get(g, 0) + s.value
        elif s.name == "nflogd_messages_received_total":
            received[g] = received.get(g, 0) + s.value
        elif s.name.startswith("nflogd_series") and not s.labels:
            series[s.name] = s.value
print(json.dumps({"times": times, "sizes": sizes, "packets": packets, "lost": lost,
                  "received": received, "series": series.get("nflogd_series"),
                  "series_metrics": series, "encoding": encoding}))
