"""What nflogr should have returned for records it cannot read: its decoding rules in Python.

    python nflogr_model.py < messages.json > records.json

nflogr crashes on a record without a timestamp (every OUTPUT record), and its own ways to decode a
message handed to it (NflogData(devnames, raw), _from_iter) crash or never yield in 0.2.12. So this
restates what its new_nflogdataobject() does with each libnetfilter_log getter, field by field, in
nflogr's order; run.py first proves it equal to nflogr on every record nflogr did read, then uses it
for the OUTPUT records, where the only change is the fix: no timestamp gives None, not a crash.
Runs inside the namespace the records came from, so interface names resolve there.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from typing import Any

from values import plain

NLMSG_HDRLEN, NFGENMSG_LEN = 16, 4
(PACKET_HDR, MARK, TIMESTAMP, INDEV, OUTDEV, PHYSINDEV, PHYSOUTDEV, HWADDR, PAYLOAD, PREFIX, UID,
 SEQ, SEQ_GLOBAL, GID, HWTYPE, HWHEADER, HWLEN) = range(1, 18)


def attributes(msg: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    off = NLMSG_HDRLEN + NFGENMSG_LEN
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4 or off + alen > len(msg):
            raise ValueError(f"bad attribute at byte {off}")
        attrs[atype & 0x3FFF] = msg[off + 4:off + alen]
        off += (alen + 3) & ~3
    return attrs


def devname(a: dict[int, bytes], attr: int) -> str | None:
    """_devname(): None for index 0 or absent, else if_indextoname, else "unkn/N"."""
    idx = struct.unpack("!I", a[attr][:4])[0] if attr in a else 0
    if not idx:
        return None
    try:
        return socket.if_indextoname(idx)
    except OSError:
        return f"unkn/{idx}"


def u32(a: dict[int, bytes], attr: int) -> int | None:
    return struct.unpack("!I", a[attr][:4])[0] if attr in a else None


def decode(msg: bytes) -> list[tuple[str, Any]]:
    a = attributes(msg)
    ts_us = None
    if TIMESTAMP in a:  # nflogr raises "no timestamp data" (and crashes) here; None is the fix
        sec, usec = struct.unpack("!QQ", a[TIMESTAMP][:16])
        ts_us = sec * 1000000 + usec
    hwaddr = None
    if HWADDR in a:
        (addrlen,) = struct.unpack("!H", a[HWADDR][:2])
        hwaddr = a[HWADDR][4:4 + addrlen]
    hwlen = struct.unpack("!H", a[HWLEN][:2])[0] if HWLEN in a else 0
    prefix = a[PREFIX].split(b"\0", 1)[0].decode() if PREFIX in a else None
    return [
        ("proto", struct.unpack("!H", a[PACKET_HDR][:2])[0] if PACKET_HDR in a else 0),
        ("hwtype", struct.unpack("!H", a[HWTYPE][:2])[0] if HWTYPE in a else 0),
        ("nfmark", u32(a, MARK) or 0),
        ("timestamp", None if ts_us is None else
         float(ts_us // 1000000) if ts_us % 1000000 == 0 else ts_us / 1e6),
        ("timestamp_us", ts_us),
        ("indev", devname(a, INDEV)), ("physindev", devname(a, PHYSINDEV)),
        ("outdev", devname(a, OUTDEV)), ("physoutdev", devname(a, PHYSOUTDEV)),
        ("uid", u32(a, UID)), ("gid", u32(a, GID)),
        ("hwaddr", hwaddr),
        ("hwhdr", a.get(HWHEADER, b"")[:hwlen]),
        ("payload", a.get(PAYLOAD)),
        ("prefix", prefix),
    ]


def main() -> None:
    out = [[[k, plain(v)] for k, v in decode(bytes.fromhex(m))] for m in json.load(sys.stdin)]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
