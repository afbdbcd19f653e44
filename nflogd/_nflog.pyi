"""Read netfilter NFLOG groups through libnetfilter_log.

The low-level module under nflogd.nflog: Nflog handles give NflogData records (the nflogr API),
or fold records into an Aggregator entirely in C with the GIL released.
"""

# Checked, not trusted: tests/test_nflog_stub.py compares every name, signature and docstring here
# with the built module (its __text_signature__s and __doc__s).
from typing import Callable, Iterable, Iterator, Literal, TypeVar, final, overload

_H = TypeVar("_H", bound="Nflog")

# A value in an aggregation key: bytes (prefix), int, str (addresses, networks, ct_state),
# (proto, type) for icmp_type, or None (absent).
_KeyValue = int | bytes | str | tuple[int, int] | None

ENOBUFS_RAISE: int
"""enobufs mode: raise NflogDroppedError when the kernel dropped records (0)."""
ENOBUFS_HANDLE: int
"""enobufs mode: count the event in Nflog.drops and go on (1)."""
ENOBUFS_DISABLE: int
"""enobufs mode: NETLINK_NO_ENOBUFS, no error at all; count loss with seq=True (2)."""
COPY_NONE: int
"""copymode: copy no packet data (0)."""
COPY_META: int
"""copymode: copy metadata only (1)."""
COPY_PACKET: int
"""copymode: copy the packet, up to copyrange bytes (2)."""
COPY_RANGE_MAX: int
"""The largest copy range the kernel honours (65531)."""
NLBUF_MIN: int
"""The smallest nlbuf the kernel honours (one page, or 8192 on larger pages)."""
NLBUF_MAX: int
"""The largest nlbuf the kernel honours (131072)."""
PREFIX_MAX: int
"""The longest log prefix, without its NUL (127)."""
LIBNETFILTER_LOG_VERSION: str
"""The libnetfilter_log version built against."""
FIELDS: tuple[str, ...]
"""The record fields an Aggregator can key on, in their canonical order."""


class NflogError(OSError):
    """An NFLOG operation failed; errno says why when there is one."""


class NflogDroppedError(NflogError):
    """The kernel dropped messages (ENOBUFS) with enobufs=ENOBUFS_RAISE."""


class NflogClosedError(NflogError):
    """The handle was closed."""


class NflogRetryError(NflogError):
    """A transient failure: the call may be retried."""


class NflogPermissionError(NflogError, PermissionError):
    """Not permitted (EPERM): the group is bound by another socket, or root or CAP_NET_ADMIN is
    missing. Also a PermissionError."""


@final
class NflogData:
    """One NFLOG record. Read-only attributes; every attribute the kernel did not send is None, but
    nfmark, hwtype, proto (0) and hwhdr (b'') as in nflogr. dict(data) gives all of them, nflogr's
    first. Records pickle; the constructor rebuilds one from __reduce__'s parts (the message bytes
    and the four interface names), checking the message as one from the kernel."""

    def __new__(cls, message: bytes, devnames: tuple[str | None, str | None, str | None,
                                                     str | None]) -> NflogData: ...
    @property
    def proto(self) -> int:
        """Layer 3 protocol (EtherType, see the PROTO_* constants)."""
    @property
    def hwtype(self) -> int:
        """Hardware type (if_arp.h ARPHRD_*, see HWTYPE_*); 0 when the kernel sent none."""
    @property
    def nfmark(self) -> int:
        """Packet mark (0 when unmarked: the kernel sends none then)."""
    @property
    def timestamp(self) -> float | None:
        """Time the packet was logged (float, s), or None (never in OUTPUT)."""
    @property
    def timestamp_us(self) -> int | None:
        """Time the packet was logged (int, microseconds), or None."""
    @property
    def indev(self) -> str | None:
        """Input interface name, or None."""
    @property
    def physindev(self) -> str | None:
        """Physical input interface name (bridges), or None."""
    @property
    def outdev(self) -> str | None:
        """Output interface name, or None."""
    @property
    def physoutdev(self) -> str | None:
        """Physical output interface name (bridges), or None."""
    @property
    def uid(self) -> int | None:
        """Uid of the local socket that sent the packet, or None."""
    @property
    def gid(self) -> int | None:
        """Gid of the local socket that sent the packet, or None."""
    @property
    def hwaddr(self) -> bytes | None:
        """Layer 2 source address (bytes), or None."""
    @property
    def hwhdr(self) -> bytes:
        """Layer 2 header (bytes; empty when the kernel sent none)."""
    @property
    def payload(self) -> bytes | None:
        """Layer 3 packet data, up to the copy range (bytes), or None."""
    @property
    def prefix(self) -> str | None:
        """Log prefix of the rule (str; bytes not UTF-8 are escaped), or None."""
    @property
    def indev_index(self) -> int | None:
        """Input interface index, or None."""
    @property
    def outdev_index(self) -> int | None:
        """Output interface index, or None."""
    @property
    def physindev_index(self) -> int | None:
        """Physical input interface index, or None."""
    @property
    def physoutdev_index(self) -> int | None:
        """Physical output interface index, or None."""
    @property
    def seq(self) -> int | None:
        """Sequence number within the group (open with seq=True), or None."""
    @property
    def hook(self) -> int | None:
        """Netfilter hook number (0 prerouting .. 4 postrouting), or None."""
    @property
    def family(self) -> int:
        """Protocol family of the hook (NFPROTO_*: 2 IPv4, 10 IPv6, 7 bridge ...)."""
    @property
    def group(self) -> int:
        """NFLOG group the record came from."""
    @property
    def l4proto(self) -> int | None:
        """IP protocol number of the transport header (6 TCP, 17 UDP ...), or None."""
    @property
    def length(self) -> int | None:
        """Packet length from the IP header (bytes), or None without payload."""
    # labels: from the copied payload (record.c); None when the copy does not hold them
    @property
    def saddr(self) -> str | None:
        """Source address (str, RFC 5952 for IPv6), or None without an IP header."""
    @property
    def daddr(self) -> str | None:
        """Destination address (str, RFC 5952 for IPv6), or None without an IP header."""
    @property
    def sport(self) -> int | None:
        """TCP/UDP/UDP-Lite/SCTP/DCCP source port, or None (also for non-first fragments)."""
    @property
    def dport(self) -> int | None:
        """TCP/UDP/UDP-Lite/SCTP/DCCP destination port, or None (also for non-first fragments)."""
    @property
    def icmp_type(self) -> int | None:
        """ICMP or ICMPv6 type (l4proto tells which), or None."""
    @property
    def tcp_flags(self) -> int | None:
        """TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10 ...), or None."""
    @property
    def ct_state(self) -> str | None:
        """Conntrack state ('new', 'established', 'related'), or None when the kernel sent none."""
    def __iter__(self) -> Iterator[tuple[str, object]]:
        """(name, value) for every attribute, so dict(data) works."""
    def __reduce__(self, /) -> tuple[type[NflogData], tuple[bytes, tuple[str | None, ...]]]:
        """For pickle and copy: (NflogData, (message, devnames))."""


@final
class SeriesBudget:
    """A cap on distinct keys shared by several Aggregators (e.g. one per NFLOG group). A record whose
    new key would exceed it is counted in its aggregator's overflow instead."""

    def __init__(self, limit: int) -> None: ...
    @property
    def limit(self) -> int:
        """Most keys all aggregators sharing this budget may hold together."""
    @limit.setter
    def limit(self, value: int) -> None: ...
    @property
    def used(self) -> int:
        """Keys held now."""


@final
class Aggregator:
    """Packet and byte counters keyed by the record fields named in `fields` (see FIELDS). Filled by
    Nflog.aggregate() in C with the GIL released; read with read() or snapshot(). A record whose
    key is new when max_keys keys exist, or when the shared budget is spent, is counted in
    `overflow` (the remainder), unless its key is heavy enough to displace a row (see README:
    series budget). Rows idle for ttl seconds (0: never) expire into the remainder at a tick(). A
    row admitted min_residency seconds ago or more may be displaced by a key whose estimated rate
    is more than twice its own, at most admit_rate times a second (0: never); rates decay by half
    every decay s. With a ttl, once a key was refused for want of room, free places fill at most
    admit_rate a second until no new key was refused or kept waiting for 60 s. Bytes are the IP
    header's total length, so they are right whatever the copy range, as long as the IP header is
    copied (COPY_PACKET with copyrange 0 or >= 40); a record without a payload (COPY_META,
    COPY_NONE) adds 0 bytes. saddr/daddr are reduced to address_mask (IPv4, IPv6 prefix lengths)
    before keying; src_net and dst_net are the longest match of the full address among networks,
    (name, cidr) pairs with the host bits clear; the payload is parsed for these only when one of
    them is a field."""

    def __init__(self, fields: Iterable[str], max_keys: int = 65536,
                 budget: SeriesBudget | None = None, *,
                 address_mask: tuple[int, int] = (32, 128),
                 networks: Iterable[tuple[str, str]] = (), ttl: int = 0, min_residency: int = 20,
                 admit_rate: int = 10, decay: int = 10) -> None: ...
    def read(self) -> tuple[tuple[str, ...], list[tuple[tuple[_KeyValue, ...], int, int]],
                            tuple[int, int]]:
        """(fields, rows, (remainder_packets, remainder_bytes)), all taken at one instant: rows as
        in snapshot(), keyed by `fields` (which relabel() may change), the remainder as
        `overflow`. The packets (and bytes) of rows plus remainder are everything folded, and
        only grow until clear()."""
    def tick(self, now: int | None = None) -> None:
        """Advance the aggregator's clock (whole seconds; None: CLOCK_MONOTONIC_COARSE since it was
        made, as aggregate() reads it once per datagram; a number: a test's clock from then on,
        which aggregate() leaves alone; never backwards) and, at most once a second, sweep:
        expire entries idle for ttl, decay the rate estimates every `decay` seconds, refill the
        admission allowances, choose the next victims. A reader calls it between aggregate()
        calls."""
    def relabel(self, fields: Iterable[str], /) -> None:
        """Key by other fields from now on, atomically: every row's counts move into the remainder
        (the overflow), so no record is lost and no sum goes down; records folded after it use
        the new key. The same fields in another order keep the rows (their keys are only
        reordered)."""
    def add_remainder(self, packets: int, nbytes: int, /) -> None:
        """Add counts to the remainder (the overflow) without a record: what another aggregator
        counted when it is replaced by this one, so the group's sum carries over and never goes
        down."""
    def set_policy(self, *, ttl: int | None = None, min_residency: int | None = None,
                   admit_rate: int | None = None, decay: int | None = None) -> None:
        """Change the budget policy (None keeps a value); the rows stay."""
    @property
    def churn(self) -> tuple[int, int, int, int]:
        """(admitted, expired, displaced, remainder_records): rows made, rows expired, rows
        displaced by a heavier key, records counted in the remainder on arrival."""
    @property
    def policy(self) -> dict[str, int]:
        """The budget policy: {'ttl', 'min_residency', 'admit_rate', 'decay'} in seconds
        (admit_rate: displacements per second)."""
    def snapshot(self) -> list[tuple[tuple[_KeyValue, ...], int, int]]:
        """Counters so far: a list of (key, packets, bytes), key a tuple of the field values in the order
        given to the constructor: prefix as bytes; indev/outdev/physindev/physoutdev as interface
        indexes (None when absent; names belong to the handle's network namespace); uid, gid and proto
        None when the record had none; mark 0 when unmarked; group, family, hook and hwproto ints;
        saddr/daddr as str ('203.0.113.7', '2001:db8::/48' when address_mask cut it); sport/dport and
        tcp_flags ints; icmp_type (proto, type) with proto 1 (ICMP) or 58 (ICMPv6); src_net/dst_net the
        network's name; ct_state 'new', 'established' or 'related'; each None when the packet has none.
        Counters only grow, until clear()."""
    def counts(self) -> Counts:
        """The counters now as a frozen Counts (one copy under the lock, no Python object per key): what
        CounterRenderer renders, and rows() gives snapshot()'s list when Python wants the rows."""
    def clear(self) -> None:
        """Forget every key and counter (returning the keys to the budget)."""
    @property
    def keys(self) -> int:
        """Distinct keys held."""
    @property
    def overflow(self) -> tuple[int, int]:
        """(packets, bytes) of the remainder: records whose key had no row, and the counts of rows
        that expired, were displaced or relabelled."""
    @property
    def records(self) -> int:
        """Records folded in all."""
    @property
    def fields(self) -> tuple[str, ...]:
        """The key fields, in order."""
    @property
    def max_keys(self) -> int:
        """This aggregator's own key limit."""
    @property
    def budget(self) -> SeriesBudget | None:
        """The shared SeriesBudget, or None."""
    @property
    def address_mask(self) -> tuple[int, int]:
        """(ipv4, ipv6): the prefix lengths saddr and daddr are reduced to."""
    @property
    def networks(self) -> tuple[tuple[str, str], ...]:
        """The named networks src_net/dst_net match, as (name, cidr) pairs."""


@final
class Counts:
    """An Aggregator's counters frozen at one instant (also Aggregator.counts()): len() keys, fields,
    overflow, sum, rows(). CounterRenderer renders it without a Python object per key."""

    def __init__(self, aggregator: Aggregator) -> None: ...

    def rows(self) -> list[tuple[tuple[_KeyValue, ...], int, int]]:
        """The counters as Aggregator.snapshot() lists them: (key, packets, bytes) per key."""
    def __len__(self) -> int: ...
    @property
    def overflow(self) -> tuple[int, int]:
        """(packets, bytes) of the aggregator's overflow when copied."""
    @property
    def fields(self) -> tuple[str, ...]:
        """The key fields, in the order the keys were copied in."""
    @property
    def sum(self) -> tuple[int, int]:
        """(packets, bytes) over every key (overflow not included)."""
    @property
    def aggregator(self) -> Aggregator:
        """The Aggregator these counts were copied from."""


@final
class CounterRenderer:
    """Writes the record counters of Aggregators as Prometheus text in C, with each key's label string
    built once (by a Python callable) and cached while the key lives. See render()."""

    def __init__(self) -> None: ...
    def render(self, parts: Iterable[tuple[object, ...]],
               tag: object, families: tuple[tuple[bytes, bytes], tuple[bytes, bytes]],
               tail: bytes = b"", /) -> bytes:
        """The record counters as Prometheus text, followed by tail, as one bytes object.
        parts: (counts, labels, overflow_labels) per aggregator, counts an Aggregator.counts() (or the
        Aggregator, copied now, or rows as snapshot() lists them, their label strings then built every
        time, with the overflow as an optional fourth item (packets, bytes)); labels(key) returns the
        label string of a key (as in snapshot(), e.g. '{group="5"}') and is called once per new key, the
        result cached per aggregator entry; overflow_labels (str or None) names the aggregator's
        overflow series. Keys whose label strings are equal, in any part, are one series: their counts
        add up. Every cached label is dropped when tag differs from the previous render's (interface
        names or the configuration changed). families: ((head, sample_name), (head, sample_name)) as
        bytes, for packets and for bytes: each head (HELP/TYPE lines) then one line per series."""
    @property
    def labels(self) -> int:
        """Distinct label strings held since the last render."""


@final
class Nflog:
    """A handle on one NFLOG group, bound on creation (use nflog.open(), which documents the arguments;
    enobufs=0 is ENOBUFS_RAISE, copymode=2 is COPY_PACKET). Iterating yields records until the
    handle is closed; it is a context manager that closes on exit."""

    def __init__(self, group: int, *, timeout: float = 0.0, qthresh: int = 1, rcvbuf: int = 0,
                 nlbuf: int = 0, enobufs: int = 0, copymode: int = 2, copyrange: int = 0,
                 seq: bool = False, conntrack: bool = False) -> None: ...
    @overload
    def next(self, /, wait: Literal[True] = True) -> NflogData:
        """The next record (NflogData). With wait=False, None when none is waiting. Records queued before
        close() are still returned; then a closed handle gives None with wait=False and raises
        NflogClosedError with wait=True (also when close() is called from another thread while waiting)."""
    @overload
    def next(self, /, wait: bool) -> NflogData | None: ...
    def queue(self, /, wait: bool = True) -> int:
        """Read one datagram from the socket and queue its records for next(). Returns how many records were
        queued: 0 when nothing is waiting and wait=False or records are queued already (it only waits
        when none are), when 65536 are queued already, or once the handle is closed."""
    def loop(self, fn: Callable[[NflogData], object], /, count: int = -1) -> None:
        """Call fn(data) for each record, count times (-1: until the handle is closed and the records
        queued before are done). An exception raised by fn stops the loop and propagates. Returns None."""
    def aggregate(self, aggregator: Aggregator, /, timeout: float | None = None,
                  linger: float = 0.0) -> int:
        """Wait up to timeout seconds (None: until data or close) for records, then drain what the socket
        holds (up to 256 datagrams) and fold every record into aggregator, all in C without the GIL.
        With linger > 0, go on waiting for and folding more for up to linger seconds after the first
        data (a steady flow then returns to Python a few times a second, not once per datagram).
        Returns the number of records folded (0 on timeout). Sequence gaps, truncated datagrams, decode
        errors and ENOBUFS are counted on the handle as in next()."""
    def configure(self, /, *, timeout: float | None = None, qthresh: int | None = None,
                  nlbuf: int | None = None, copymode: int | None = None,
                  copyrange: int | None = None) -> None:
        """Change the group's batching and copy settings in place (None keeps a value). The group stays
        bound, so nothing the kernel is batching is lost and sequence numbers continue. Ranges as in
        open(); the receive buffer is the rcvbuf attribute. The kernel applies the settings before this
        returns; should it refuse them (EPERM once CAP_NET_ADMIN is dropped), the refusal arrives with
        the data and the next read (next, queue, aggregate, ...) raises NflogError."""
    def close(self, /) -> None:
        """Unbind the group and close the socket; wakes a thread blocked in next(), queue() or aggregate(),
        which then raises NflogClosedError. Records already queued stay readable (next(), iteration,
        loop()), as in nflogr. Closing twice is harmless."""
    def getfd(self, /) -> int | None:
        """The socket's file descriptor, or None once closed."""
    def fileno(self, /) -> int:
        """The socket's file descriptor, for selectors and asyncio. Raises ValueError once closed, as a
        closed file does."""
    def getgroup(self, /) -> int:
        """The NFLOG group number."""
    def __enter__(self: _H, /) -> _H:
        """Return the handle itself."""
    def __exit__(self, /, *exc_info: object) -> Literal[False]:
        """Close the handle (see close()); an exception in the block propagates."""
    def __iter__(self: _H) -> _H: ...
    def __next__(self) -> NflogData: ...
    def __len__(self) -> int:
        """Records queued (as nflogr: an empty queue makes the handle false)."""
    @property
    def rcvbuf(self) -> int | None:
        """Socket receive buffer in bytes as asked for (the kernel keeps twice as much, see
        kernel_rcvbuf), None once closed; set it to grow or shrink the buffer (0: no change)."""
    @rcvbuf.setter
    def rcvbuf(self, value: int) -> None: ...
    @property
    def kernel_rcvbuf(self) -> int:
        """Socket receive buffer in bytes as the kernel reports it (twice rcvbuf)."""
    @property
    def drops(self) -> int:
        """ENOBUFS errors seen (the kernel dropped messages); can only be set to 0."""
    @drops.setter
    def drops(self, value: Literal[0]) -> None: ...
    @property
    def queued(self) -> int:
        """Records read from the socket, not yet returned."""
    @property
    def received(self) -> int:
        """Records received from the kernel."""
    @property
    def lost(self) -> int:
        """Records lost between kernel and reader, exact from sequence gaps (seq=True); a loss at the
        tail shows when the next record arrives."""
    @property
    def truncated(self) -> int:
        """Datagrams larger than the receive buffer, discarded."""
    @property
    def decode_errors(self) -> int:
        """Malformed messages skipped."""
    @property
    def datagrams(self) -> int:
        """Datagrams received."""
    @property
    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped at this socket's full receive queue (sk_drops)."""
    @property
    def last_message_time(self) -> float | None:
        """Unix time the last record was received, or None."""
    @property
    def closed(self) -> bool:
        """True once closed."""
