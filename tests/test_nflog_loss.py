"""Loss between the kernel and nflogd, counted exactly: sequence gaps, each ENOBUFS mode.

A tiny receive buffer, one record per datagram (qthresh 1) and a flood nobody reads overrun the
socket for real; then everything left is read, and one marker record reveals a loss at the tail
(a gap shows only when the next record arrives). received + lost must equal the nft rule counter.
"""

from __future__ import annotations

import errno

import pytest

from netns import Netns
from nflog_support import aggregate_until, open_in, read_n, require_root, rule_counts
from nflogd import nflog

FLOOD = 3000

RULES = """
table ip t {
  chain out { type filter hook output priority 0;
    udp dport 7100 counter log prefix "flood" group 1 comment "flood"
  }
}"""


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def drain(h: nflog.Nflog) -> tuple[list[nflog.NflogData], list[nflog.NflogDroppedError]]:
    """Everything the socket holds now, without blocking; ENOBUFS raised on the way is collected."""
    recs: list[nflog.NflogData] = []
    raised: list[nflog.NflogDroppedError] = []
    for _ in range(100_000):  # bounded
        try:
            d = h.next(wait=False)
        except nflog.NflogDroppedError as e:
            raised.append(e)
            continue
        if d is None:
            return recs, raised
        recs.append(d)
    raise AssertionError("the socket never ran dry")


@pytest.mark.parametrize("mode", ["ENOBUFS_DISABLE", "ENOBUFS_HANDLE", "ENOBUFS_RAISE"])
def test_received_plus_lost_equals_the_nft_counter(mode: str) -> None:
    with Netns("loss") as ns:
        ns.nft(RULES)
        with open_in(ns, 1, seq=True, rcvbuf=4096, qthresh=1,
                     enobufs=getattr(nflog, mode)) as h:
            ns.send_udp("127.0.0.1", 7100, FLOOD, 20)  # nobody reads meanwhile
            recs, raised = drain(h)
            ns.send_udp("127.0.0.1", 7100, 1, 20)  # the marker: shows a loss at the tail
            try:
                recs += read_n(h, 1)
            except nflog.NflogDroppedError as e:  # pragma: no cover - only if marker dropped
                raised.append(e)
            more, raised2 = drain(h)
            recs += more
            raised += raised2
            packets, _ = rule_counts(ns, "flood")

            assert packets == FLOOD + 1
            assert h.received == len(recs)
            assert h.lost > 0, "the flood did not overrun the buffer: the test proves nothing"
            assert h.received + h.lost == packets
            # One record per datagram: records lost == datagrams the kernel dropped (sk_drops).
            assert h.lost == h.kernel_drops
            seqs = [d.seq for d in recs]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert seqs[0] == 0 and seqs[-1] == packets - 1  # the marker is the last record
            assert h.truncated == 0 and h.decode_errors == 0

            if mode == "ENOBUFS_DISABLE":  # NETLINK_NO_ENOBUFS: no error at all
                assert raised == [] and h.drops == 0
            elif mode == "ENOBUFS_HANDLE":  # counted, never raised
                assert raised == [] and h.drops >= 1
            else:  # raised (once per overrun episode), counted too, and reading goes on
                assert len(raised) >= 1 and h.drops == len(raised)
                e = raised[0]
                assert isinstance(e, nflog.NflogError) and e.errno == errno.ENOBUFS
                assert "receive buffer overflowed" in str(e) and "rcvbuf" in str(e)


@pytest.mark.parametrize("mode", ["ENOBUFS_DISABLE", "ENOBUFS_HANDLE"])
def test_aggregate_counts_loss_the_same_way(mode: str) -> None:
    with Netns("aggloss") as ns:
        ns.nft(RULES)
        with open_in(ns, 1, seq=True, rcvbuf=4096, qthresh=1,
                     enobufs=getattr(nflog, mode)) as h:
            agg = nflog.Aggregator(["prefix"])
            ns.send_udp("127.0.0.1", 7100, FLOOD, 20)
            while h.aggregate(agg, timeout=0):
                pass
            ns.send_udp("127.0.0.1", 7100, 1, 20)
            aggregate_until(h, agg, agg.records + 1)
            packets, octets = rule_counts(ns, "flood")
            assert h.lost > 0 and agg.records + h.lost == packets == FLOOD + 1
            assert agg.snapshot() == [((b"flood",), agg.records, agg.records * 48)]
            assert (h.drops >= 1) == (mode == "ENOBUFS_HANDLE")


def test_aggregate_raises_nflogdroppederror_with_enobufs_raise() -> None:
    with Netns("aggraise") as ns:
        ns.nft(RULES)
        with open_in(ns, 1, seq=True, rcvbuf=4096, qthresh=1) as h:
            agg = nflog.Aggregator(["prefix"])
            ns.send_udp("127.0.0.1", 7100, FLOOD, 20)
            with pytest.raises(nflog.NflogDroppedError) as info:
                for _ in range(1000):
                    h.aggregate(agg, timeout=0)
            assert info.value.errno == errno.ENOBUFS and h.drops == 1
            # What was folded before the error stays folded; reading goes on afterwards.
            while h.aggregate(agg, timeout=0):
                pass
            ns.send_udp("127.0.0.1", 7100, 1, 20)
            aggregate_until(h, agg, agg.records + 1)
            assert agg.records + h.lost == rule_counts(ns, "flood")[0]
