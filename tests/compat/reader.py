"""The same script under nflogr and under nflogd.nflog: read records, poke the handle, report.

    python reader.py nflogr|nflogd GROUP OTHER_GROUP COPYMODE [TAIL_GROUP]

Run by run.py inside the router namespace, one process per library, each reading its own group of
the same nft rules (every rule logs each packet to both groups). It talks to run.py in lockstep
over stdin/stdout, one JSON object a line: it asks ({"step": ...}) and waits for the answer, so
both readers see the same packets at the same points. Everything it saw goes into the final
{"step": "report", ...} line: every record as dict(data), repr(data), the handle's attributes and
the exceptions (their class names and whether they are an OSError/PermissionError/ValueError ...).
TAIL_GROUP (nflogd only) is a group of OUTPUT records, which nflogr cannot read (it crashes on a
record without a timestamp): their messages go into the report, and run.py has nflogr's decoding
rules (nflogr_model.py) say what it should have returned.

Only the library's import differs between the two runs; nflogr's README examples are executed as
nflogr's README has them (for nflogd with `import nflogr` read as `from nflogd import nflog as
nflogr`, the port the README promises).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import select
import signal
import sys
import threading
import time
from typing import Any, Callable

from values import plain

LIB, GROUP, OTHER_GROUP, COPYMODE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
TAIL_GROUP = int(sys.argv[5]) if len(sys.argv) > 5 else None
if LIB == "nflogr":
    import nflogr as nflog  # type: ignore[import-not-found]
else:
    from nflogd import nflog  # type: ignore[no-redef]

WAIT = 10.0  # seconds any expected record may take before the run fails
# A call that must return at once but would block (holding the GIL, in nflogr) ends the process.
signal.signal(signal.SIGALRM, signal.SIG_DFL)


def ask(step: str, **kw: Any) -> Any:
    """One lockstep exchange with run.py (stderr says how far a reader got, should it die)."""
    print(f"{LIB}: {step} {kw}", file=sys.stderr, flush=True)
    print(json.dumps({"step": step, **kw}), flush=True)
    line = sys.stdin.readline()
    if not line:
        sys.exit(f"{LIB}: run.py went away during {step}")
    return json.loads(line)


def record(d: Any) -> dict[str, Any]:
    items = list(d)
    us = d.timestamp_us
    r = {"items": [[k, plain(v)] for k, v in items], "repr": repr(d), "str": str(d),
         "keys_match_getattr": all(getattr(d, k) == v for k, v in items),
         "timestamp_from_us": d.timestamp == (None if us is None else us / 1e6)}
    if LIB == "nflogd":
        r["message"] = d.__reduce__()[1][0].hex()  # the netlink message, as the kernel sent it
    return r


def outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    """What a call did: its value, or its exception described by what code would catch."""
    try:
        return {"value": plain(fn())}
    except BaseException as e:  # noqa: BLE001 - the kind is what is compared
        return exc(e)


def isolated(fn: Callable[[], Any]) -> dict[str, Any]:
    """outcome(fn) in a forked child: a crash (nflogr segfaults pickling a record) is a result."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        os.write(wfd, json.dumps(outcome(fn)).encode())
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"crashed": signal.Signals(os.WTERMSIG(status)).name}
    return json.loads(data)


def exc(e: BaseException) -> dict[str, Any]:
    return {"raised": type(e).__name__,
            "catches": sorted(c.__name__ for c in (OSError, PermissionError, ValueError, TypeError,
                                                   RuntimeError, nflog.NflogError,
                                                   nflog.NflogClosedError, nflog.NflogRetryError)
                              if isinstance(e, c)),
            "errno": getattr(e, "errno", None)}


def read_records(h: Any, n: int) -> list[Any]:
    """n records, never blocking in C (nflogr would hold the GIL): select, then next(False)."""
    out: list[Any] = []
    deadline = time.monotonic() + WAIT
    while len(out) < n and time.monotonic() < deadline:
        d = h.next(False)
        if d is None:
            select.select([h.getfd()], [], [], 0.2)
        else:
            out.append(d)
    if len(out) != n:
        sys.exit(f"{LIB}: got {len(out)} of {n} records within {WAIT} s")
    return out


def queue_until(h: Any, n: int) -> list[int]:
    """queue() (blocking) until n records are queued; the counts it returned."""
    counts = []
    signal.alarm(int(WAIT))
    while len(h) < n:
        counts.append(h.queue())
    signal.alarm(0)
    return counts


def main() -> None:
    report: dict[str, Any] = {"lib": LIB}
    report["constants"] = {k: getattr(nflog, k) for k in dir(nflog)
                           if re.fullmatch(r"(PROTO|HWTYPE|COPY|ENOBUFS)_[A-Z0-9_]+", k)}
    report["metadata"] = {k: type(getattr(nflog, k)).__name__ for k in dir(nflog)
                          if re.fullmatch(r"__(title|description|url|version|author|author_email|"
                                          r"license|build_debug)__", k)}
    report["classes"] = {k: [c.__name__ for c in getattr(nflog, k).__mro__]
                         for k in ("NflogError", "NflogRetryError", "NflogDroppedError",
                                   "NflogClosedError")}
    report["bad_open"] = {name: outcome(call) for name, call in {
        "group 70000": lambda: nflog.open(70000), "group -1": lambda: nflog.open(-1),
        "copymode 7": lambda: nflog.open(9, copymode=7),
        "enobufs 9": lambda: nflog.open(9, enobufs=9),
        "qthresh -1": lambda: nflog.open(9, qthresh=-1),
        "timeout -1": lambda: nflog.open(9, timeout=-1.0),
        "rcvbuf -1": lambda: nflog.open(9, rcvbuf=-1), "group str": lambda: nflog.open("9"),
        "positional timeout": lambda: nflog.open(9, 1.0),
    }.items()}
    q0 = nflog.open(GROUP + 10, qthresh=0)
    report["qthresh0"] = {"open": True, "queue": q0.queue(False), "next": plain(q0.next(False))}
    q0.close()

    h = nflog.open(GROUP, copymode=getattr(nflog, COPYMODE))
    tail = None if TAIL_GROUP is None else nflog.open(TAIL_GROUP, copymode=getattr(nflog, COPYMODE))
    ask("ready")  # both readers hold their group now
    report["open_taken_group"] = outcome(lambda: nflog.open(OTHER_GROUP))
    counts = ask("read")
    report["records"] = [record(d) for d in read_records(h, counts["count"])]
    if tail is not None:
        report["tail"] = [record(d) for d in read_records(tail, counts["tail"])]
        tail.close()

    # The handle, open and empty.
    report["open_handle"] = {
        "getgroup_is_group": outcome(lambda: h.getgroup() == GROUP),
        "getfd_is_int": isinstance(h.getfd(), int),
        "fileno_is_getfd": outcome(lambda: h.fileno() == h.getfd()), "len": outcome(lambda: len(h)),
        "bool": bool(h), "queued": outcome(lambda: bool(h.queued)),
        "queue_nowait": outcome(lambda: h.queue(False)),
        "next_nowait": outcome(lambda: h.next(False)),
        "drops": outcome(lambda: h.drops), "set_drops_0": outcome(lambda: setattr(h, "drops", 0)),
        "set_drops_5": outcome(lambda: setattr(h, "drops", 5)),
        "set_drops_str": outcome(lambda: setattr(h, "drops", "x")),
        "set_rcvbuf_65536": outcome(lambda: setattr(h, "rcvbuf", 65536)),
        "rcvbuf_after_65536": outcome(lambda: h.rcvbuf),
        "set_rcvbuf_0": outcome(lambda: setattr(h, "rcvbuf", 0)),
        "rcvbuf_after_0": outcome(lambda: h.rcvbuf),
        "set_rcvbuf_-1": outcome(lambda: setattr(h, "rcvbuf", -1)),
        "set_rcvbuf_str": outcome(lambda: setattr(h, "rcvbuf", "x")),
        "queued_type": type(h.queued).__name__,
        "next_keyword": outcome(lambda: h.next(wait=False)),
        "queue_keyword": outcome(lambda: h.queue(wait=False)),
    }

    report["blocked_next"] = gil_while_blocked(h)

    # Records queued, the socket empty: queue() returns at once; close() keeps them readable.
    ask("burst", count=3)
    counts = queue_until(h, 3)
    signal.alarm(5)
    report["queued_handle"] = {
        "queue_counts": counts, "len": len(h), "bool": bool(h), "queued": bool(h.queued),
        "queue_with_records_queued": outcome(h.queue),  # blocks forever if it waits for the socket
        "loop_callback_raises": outcome(lambda: h.loop(lambda d: 1 / 0, 1)),
        "len_after_loop": len(h),
    }
    signal.alarm(0)
    h.close()
    closed = report["closed_handle"] = {
        "len": outcome(lambda: len(h)), "rcvbuf": outcome(lambda: h.rcvbuf),
        "getfd": outcome(h.getfd), "getgroup_is_group": outcome(lambda: h.getgroup() == GROUP),
        "fileno": outcome(h.fileno), "queue": outcome(h.queue),
        "queue_nowait": outcome(lambda: h.queue(False)),
        "drops": outcome(lambda: h.drops), "close_again": outcome(h.close),
        "set_rcvbuf": isolated(lambda: setattr(h, "rcvbuf", 65536)),
    }
    buffered = []
    for _ in range(4):
        d = h.next(False)
        buffered.append(None if d is None else record(d))
    closed["next_nowait_x4"] = buffered
    closed["next_wait_when_drained"] = outcome(h.next)

    # Pickling: a record rebuilt from its pickle reads the same.
    p = nflog.open(GROUP)
    ask("burst", count=1)
    signal.alarm(int(WAIT))
    d = p.next()
    signal.alarm(0)
    p.close()
    report["pickle"] = isolated(lambda: [k for k, v in dict(d).items()
                                         if dict(pickle.loads(pickle.dumps(d)))[k] != v])

    report["examples"] = run_examples()
    print(json.dumps({"step": "report", "report": report}), flush=True)


def gil_while_blocked(h: Any) -> dict[str, Any]:
    """Does another thread run while next() waits for a record (sent 0.6 s later)?"""
    count, stop = [0], [False]

    def spin() -> None:
        while not stop[0]:
            count[0] += 1

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    time.sleep(0.2)
    c0 = count[0]
    time.sleep(0.3)
    free_rate = (count[0] - c0) / 0.3
    ask("burst_later", count=1, delay=0.6)
    c1, t0 = count[0], time.monotonic()
    signal.alarm(int(WAIT))
    d = h.next()
    signal.alarm(0)
    blocked = time.monotonic() - t0
    ran = count[0] - c1
    stop[0] = True
    t.join()
    return {"got_record": d is not None, "waited": blocked > 0.3,
            "other_thread_ran": ran > 0.2 * free_rate * blocked}


def run_examples() -> list[dict[str, Any]]:
    """nflogr's README examples, run as written against a handle holding two queued records and
    closed (so no example can block): what each did, and what it left queued."""
    import importlib.metadata
    readme = importlib.metadata.metadata("nflogr").get_payload()  # type: ignore[attr-defined]
    results = []
    for code in re.findall(r"```python\n(.*?)```", readme, re.DOTALL):
        if LIB != "nflogr":
            code = code.replace("import nflogr", "from nflogd import nflog as nflogr")
        h = nflog.open(GROUP)
        ask("burst", count=2)
        queue_until(h, 2)
        h.close()
        env: dict[str, Any] = {"nflog": h, "__name__": "__example__"}
        ask("turn")  # one reader at a time: an example may open a group (123) of its own
        try:
            exec(compile(code, "<nflogr README>", "exec"), env)  # noqa: S102 - nflogr's own text
            res: dict[str, Any] = {"value": None}
        except SyntaxError as e:
            res = {"syntax_error": e.msg}
        except BaseException as e:  # noqa: BLE001
            res = exc(e)
        ask("turn_done")
        res["left_queued"] = len(h)
        results.append(res)
    return results


if __name__ == "__main__":
    main()
