"""The plain Python loop over nflogd.nflog record objects: one object per record, count += 1.

Shows what nflogd's C aggregation path saves over handing Python one object per packet.
Run inside the benchmark's namespace: pyloop.py GROUP COUNTFILE.
Prints "ready" once bound. The count goes to COUNTFILE from a reporter thread every 0.2 s,
because the main thread may sit in a blocking recv that a signal cannot interrupt; the harness
reads the file once the loop is idle and then kills this process.
"""

import os
import sys
import threading
import time

from nflogd import nflog  # the harness checks this import first and reports "not available"

group, countfile = int(sys.argv[1]), sys.argv[2]
count = 0


def report() -> None:
    tmp = countfile + ".tmp"
    # Bounded: the harness kills this process within minutes; daemon thread dies with it.
    for _ in range(10_000_000):
        with open(tmp, "w") as f:
            f.write(f"{count} {getattr(h, 'lost', -1)}")
        os.replace(tmp, countfile)
        time.sleep(0.2)


# nflogd's default group settings (SPEC): large batches are the main lever (issue 6), and a
# receive buffer big enough that a burst does not overflow it while Python is busy.
kwargs = dict(qthresh=10000, nlbuf=131072, timeout=1.0, rcvbuf=8388608, copyrange=128,
              copymode=nflog.COPY_PACKET, seq=True, enobufs=nflog.ENOBUFS_DISABLE)
try:
    h = nflog.open(group, **kwargs)
except TypeError:
    # An API without some optional keyword: the brief's minimal set.
    for k in ("timeout", "rcvbuf", "copyrange"):
        del kwargs[k]
    h = nflog.open(group, **kwargs)

threading.Thread(target=report, daemon=True).start()
print("ready", flush=True)
for rec in h:
    count += 1
