"""NflogData without the kernel: nflogr's field conventions, pickling, and the constructor that
rebuilds a pickled record taking only well-formed NFLOG messages (and never crashing on others).

The messages are built here as the kernel lays them out (nfnetlink_log.c). No root needed.
"""

from __future__ import annotations

import copy
import pickle
import random
import struct
import subprocess
import sys

import pytest

from nflogd import nflog

NO_NAMES = (None, None, None, None)


def attr(atype: int, value: bytes) -> bytes:
    a = struct.pack("=HH", 4 + len(value), atype) + value
    return a + b"\0" * (-len(a) % 4)


def message(*attrs: bytes, family: int = 2, group: int = 7) -> bytes:
    body = struct.pack("!BBH", family, 0, group) + b"".join(attrs)
    # NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET
    return struct.pack("=IHHII", 16 + len(body), 4 << 8, 0, 0, 0) + body


PACKET_HDR = attr(1, struct.pack("!HBB", 0x0800, 1, 0))  # IPv4, hook INPUT
IP_UDP = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]),
                     bytes([10, 0, 0, 2])) + struct.pack("!HHHH", 1000, 53, 16, 0) + b"payload!"


def full_message() -> bytes:
    return message(
        PACKET_HDR,
        attr(2, struct.pack("!I", 0x2A)),                          # MARK
        attr(3, struct.pack("!QQ", 1700000000, 123456)),           # TIMESTAMP
        attr(4, struct.pack("!I", 3)),                             # IFINDEX_INDEV
        attr(8, struct.pack("!H2x", 6) + bytes(range(1, 7)) + b"\0\0"),  # HWADDR
        attr(9, IP_UDP),                                           # PAYLOAD
        attr(10, b"my prefix\0"),                                  # PREFIX
        attr(15, struct.pack("!H", 1)),                            # HWTYPE
        attr(16, b"\xaa" * 14),                                    # HWHEADER
        attr(17, struct.pack("!H", 14)),                           # HWLEN
    )


def test_a_record_reads_as_nflogr_would_and_keeps_nflogr_s_field_order() -> None:
    d = nflog.NflogData(full_message(), ("eth0", None, None, None))
    assert (d.proto, d.hwtype, d.nfmark, d.hook, d.family, d.group) == (0x0800, 1, 0x2A, 1, 2, 7)
    assert d.timestamp_us == 1700000000123456 and d.timestamp == 1700000000.123456
    assert d.indev == "eth0" and d.indev_index == 3 and d.outdev is None
    assert d.hwaddr == bytes(range(1, 7)) and d.hwhdr == b"\xaa" * 14
    assert d.payload == IP_UDP and d.length == 36 and d.l4proto == 17
    assert d.prefix == "my prefix" and d.uid is None and d.seq is None
    assert list(dict(d))[:15] == ["proto", "hwtype", "nfmark", "timestamp", "timestamp_us",
                                  "indev", "physindev", "outdev", "physoutdev", "uid", "gid",
                                  "hwaddr", "hwhdr", "payload", "prefix"]
    assert repr(d) == str(d) == f"<NflogData {dict(d)!r}>"


def test_what_the_kernel_leaves_out_is_0_or_empty_where_nflogr_says_so_else_none() -> None:
    d = nflog.NflogData(message(PACKET_HDR), NO_NAMES)
    assert (d.nfmark, d.hwtype, d.hwhdr) == (0, 0, b"")  # nflogr's values, and the truth for mark
    for name in ("timestamp", "timestamp_us", "uid", "gid", "hwaddr", "payload", "prefix",
                 "indev", "indev_index", "seq", "length", "l4proto"):
        assert getattr(d, name) is None, name
    bare = nflog.NflogData(message(), NO_NAMES)  # not even a packet header
    assert bare.proto == 0 and bare.hook is None


def test_records_pickle_copy_and_keep_their_interface_names() -> None:
    d = nflog.NflogData(full_message(), ("eth0", "eth1", None, "br0"))
    for p in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(d, protocol=p))
        assert dict(again) == dict(d) and type(again) is nflog.NflogData
    assert dict(copy.copy(d)) == dict(d) and dict(copy.deepcopy(d)) == dict(d)
    assert d.__reduce__() == (nflog.NflogData, (full_message(), ("eth0", "eth1", None, "br0")))


@pytest.mark.parametrize("msg, names, error", [
    (b"", NO_NAMES, ValueError),
    (b"\0" * 15, NO_NAMES, ValueError),
    (full_message()[:-1], NO_NAMES, ValueError),        # nlmsg_len says more than there is
    (full_message() + b"\0" * 4, NO_NAMES, ValueError),  # ... or less
    (struct.pack("=IHHII", 20, 0x403, 0, 0, 0) + b"\0" * 4, NO_NAMES, ValueError),  # not a packet
    (full_message(), (None,) * 3, ValueError),
    (full_message(), ("a", "b", "c", 4), TypeError),
    (full_message(), ["a", None, None, None], TypeError),
    ("text", NO_NAMES, TypeError),
])
def test_the_constructor_takes_only_an_nflog_packet_message_and_four_names(
        msg: object, names: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        nflog.NflogData(msg, names)  # type: ignore[arg-type]


FUZZ = r"""
import random, sys
from nflogd import nflog
base = bytes.fromhex(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
built = 0
for _ in range(20000):
    m = bytearray(base)
    for _ in range(rng.randint(1, 8)):
        m[rng.randrange(16, len(m))] = rng.randrange(256)  # keep the netlink header whole
    try:
        d = nflog.NflogData(bytes(m), (None,) * 4)
    except ValueError:
        continue
    built += 1
    dict(d); repr(d)
print(built)
"""


def test_mutated_messages_are_refused_or_read_never_a_crash() -> None:
    """Every length in an attribute is the attacker's: a crash would kill the child here."""
    proc = subprocess.run([sys.executable, "-c", FUZZ, full_message().hex(),
                           str(random.randrange(1 << 30))], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert int(proc.stdout) > 1000  # most mutations still parse: the readers ran on them
