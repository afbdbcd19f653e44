"""Read netfilter NFLOG groups through libnetfilter_log.

The low-level module under nflogd.nflog: Nflog handles give NflogData records (the nflogr API),
or fold records into an Aggregator entirely in C with the GIL released.
"""

from typing import Callable, Iterable, Iterator, Literal, Optional, Tuple, TypeVar, Union, final, overload

_H = TypeVar("_H", bound="Nflog")

# A value in an aggregation key: bytes (prefix), int, or None (absent).
_KeyValue = Union[int, bytes, None]

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
LIBNETFILTER_LOG_VERSION: str  # the libnetfilter_log version built against
"""The longest log prefix, without its NUL (127)."""
FIELDS: Tuple[str, ...]
"""The record fields an Aggregator can key on, in their canonical order."""


class NflogError(OSError):
    """An NFLOG operation failed; errno says why when there is one."""


class NflogDroppedError(NflogError):
    """The kernel dropped messages (ENOBUFS) with enobufs=ENOBUFS_RAISE."""


class NflogClosedError(NflogError):
    """The handle was closed."""


class NflogRetryError(NflogError):
    """A transient failure: the call may be retried."""


@final
class NflogData:
    """One NFLOG record. Read-only attributes; every attribute the kernel did not send is None.
    dict(data) gives all of them."""

    @property
    def proto(self) -> Optional[int]:
        """Layer 3 protocol (EtherType), or None."""
    @property
    def hwtype(self) -> Optional[int]:
        """Hardware type (if_arp.h ARPHRD_*), or None."""
    @property
    def nfmark(self) -> Optional[int]:
        """Packet mark, or None when the kernel sent none (mark 0)."""
    @property
    def timestamp(self) -> Optional[float]:
        """Time the packet was logged (float, s), or None (never in OUTPUT)."""
    @property
    def indev(self) -> Optional[str]:
        """Input interface name, or None."""
    @property
    def outdev(self) -> Optional[str]:
        """Output interface name, or None."""
    @property
    def physindev(self) -> Optional[str]:
        """Physical input interface name (bridges), or None."""
    @property
    def physoutdev(self) -> Optional[str]:
        """Physical output interface name (bridges), or None."""
    @property
    def indev_index(self) -> Optional[int]:
        """Input interface index, or None."""
    @property
    def outdev_index(self) -> Optional[int]:
        """Output interface index, or None."""
    @property
    def physindev_index(self) -> Optional[int]:
        """Physical input interface index, or None."""
    @property
    def physoutdev_index(self) -> Optional[int]:
        """Physical output interface index, or None."""
    @property
    def uid(self) -> Optional[int]:
        """Uid of the local socket that sent the packet, or None."""
    @property
    def gid(self) -> Optional[int]:
        """Gid of the local socket that sent the packet, or None."""
    @property
    def hwaddr(self) -> Optional[bytes]:
        """Layer 2 source address (bytes), or None."""
    @property
    def hwhdr(self) -> Optional[bytes]:
        """Layer 2 header (bytes), or None."""
    @property
    def payload(self) -> Optional[bytes]:
        """Layer 3 packet data, up to the copy range (bytes), or None."""
    @property
    def prefix(self) -> Optional[str]:
        """Log prefix of the rule (str; bytes not UTF-8 are escaped), or None."""
    @property
    def seq(self) -> Optional[int]:
        """Sequence number within the group (open with seq=True), or None."""
    @property
    def hook(self) -> Optional[int]:
        """Netfilter hook number (0 prerouting .. 4 postrouting), or None."""
    @property
    def family(self) -> int:
        """Protocol family of the hook (NFPROTO_*: 2 IPv4, 10 IPv6, 7 bridge ...)."""
    @property
    def group(self) -> int:
        """NFLOG group the record came from."""
    @property
    def l4proto(self) -> Optional[int]:
        """IP protocol number of the transport header (6 TCP, 17 UDP ...), or None."""
    @property
    def length(self) -> Optional[int]:
        """Packet length from the IP header (bytes), or None without payload."""
    def __iter__(self) -> Iterator[Tuple[str, object]]:
        """(name, value) for every attribute, so dict(data) works."""


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
    Nflog.aggregate() in C with the GIL released; read with snapshot(). A record whose key is new
    when max_keys keys exist, or when the shared budget is spent, is counted in `overflow`.
    Bytes are the IP header's total length, so they are right whatever the copy range, as long as
    the IP header is copied (COPY_PACKET with copyrange 0 or >= 40); a record without a payload
    (COPY_META, COPY_NONE) adds 0 bytes."""

    def __init__(self, fields: Iterable[str], max_keys: int = 65536,
                 budget: Optional[SeriesBudget] = None, *, ttl: int = 0, min_residency: int = 20,
                 admit_rate: int = 10, decay: int = 10) -> None: ...
    def read(self) -> Tuple[Tuple[str, ...], list[Tuple[Tuple[_KeyValue, ...], int, int]],
                            Tuple[int, int]]:
        """(fields, rows, (remainder_packets, remainder_bytes)), all taken at one instant: rows as in
        snapshot(), keyed by `fields` (which relabel() may change), the remainder as `overflow`."""
    def tick(self, now: Optional[int] = None) -> None:
        """Advance the clock (whole seconds) and, at most once a second, sweep: expire, decay, refill
        the displacement allowance, choose the next victims."""
    def relabel(self, fields: Iterable[str]) -> None:
        """Key by other fields from now on, atomically: every row's counts move into the remainder."""
    def set_policy(self, *, ttl: Optional[int] = None, min_residency: Optional[int] = None,
                   admit_rate: Optional[int] = None, decay: Optional[int] = None) -> None:
        """Change the budget policy (None keeps a value); the rows stay."""
    @property
    def churn(self) -> Tuple[int, int, int, int]:
        """(admitted, expired, displaced, remainder_records)."""
    @property
    def policy(self) -> dict[str, int]:
        """{'ttl', 'min_residency', 'admit_rate', 'decay'}."""
    def snapshot(self) -> list[Tuple[Tuple[_KeyValue, ...], int, int]]:
        """Counters so far: a list of (key, packets, bytes), key a tuple of the field values in the order
        given to the constructor: prefix as bytes; indev/outdev/physindev/physoutdev as interface
        indexes (None when absent; names belong to the handle's network namespace); uid, gid and proto
        None when the record had none; mark 0 when unmarked; group, family, hook and hwproto ints.
        Counters only grow, until clear()."""
    def clear(self) -> None:
        """Forget every key and counter (returning the keys to the budget)."""
    @property
    def keys(self) -> int:
        """Distinct keys held."""
    @property
    def overflow(self) -> Tuple[int, int]:
        """(packets, bytes) of the remainder: records whose key had no row, and the counts of rows
        that expired, were displaced or relabelled."""
    @property
    def records(self) -> int:
        """Records folded in all."""
    @property
    def fields(self) -> Tuple[str, ...]:
        """The key fields, in order."""
    @property
    def max_keys(self) -> int:
        """This aggregator's own key limit."""
    @property
    def budget(self) -> Optional[SeriesBudget]:
        """The shared SeriesBudget, or None."""


@final
class Nflog:
    """A handle on one NFLOG group, bound on creation (use nflog.open(), which documents the arguments;
    enobufs=0 is ENOBUFS_RAISE, copymode=2 is COPY_PACKET). Iterating yields records until the
    handle is closed; it is a context manager that closes on exit."""

    def __init__(self, group: int, *, timeout: float = 0.0, qthresh: int = 1, rcvbuf: int = 0,
                 nlbuf: int = 0, enobufs: int = 0, copymode: int = 2, copyrange: int = 0,
                 seq: bool = False) -> None: ...
    @overload
    def next(self, /, wait: Literal[True] = True) -> NflogData:
        """The next record (NflogData). With wait=False, None when none is waiting. Raises NflogClosedError
        once the handle is closed (also when close() is called from another thread while waiting)."""
    @overload
    def next(self, /, wait: bool) -> Optional[NflogData]: ...
    def queue(self, /, wait: bool = True) -> int:
        """Read one datagram from the socket and queue its records for next(). Returns how many records were
        queued (0 when wait=False and nothing is waiting, or when 65536 are queued already)."""
    def loop(self, fn: Callable[[NflogData], object], /, count: int = -1) -> None:
        """Call fn(data) for each record, count times (-1: until the handle is closed). An exception raised
        by fn stops the loop and propagates. Returns None."""
    def aggregate(self, aggregator: Aggregator, /, timeout: Optional[float] = None) -> int:
        """Wait up to timeout seconds (None: until data or close) for records, then drain what the socket
        holds (up to 256 datagrams) and fold every record into aggregator, all in C without the GIL.
        Returns the number of records folded (0 on timeout). Sequence gaps, truncated datagrams, decode
        errors and ENOBUFS are counted on the handle as in next()."""
    def configure(self, /, *, timeout: Optional[float] = None, qthresh: Optional[int] = None,
                  nlbuf: Optional[int] = None, copymode: Optional[int] = None,
                  copyrange: Optional[int] = None) -> None:
        """Change the group's batching and copy settings in place (None keeps a value). The group stays
        bound, so nothing the kernel is batching is lost and sequence numbers continue. Ranges as in
        open(); the receive buffer is the rcvbuf attribute. The kernel applies the settings before this
        returns; should it refuse them (EPERM once CAP_NET_ADMIN is dropped), the refusal arrives with
        the data and the next read (next, queue, aggregate, ...) raises NflogError."""
    def close(self, /) -> None:
        """Unbind the group and close the socket; wakes a thread blocked in next() or aggregate(), which then
        raises NflogClosedError. Queued records are discarded. Closing twice is harmless."""
    def getfd(self, /) -> Optional[int]:
        """The socket's file descriptor, or None once closed."""
    def fileno(self, /) -> int:
        """The socket's file descriptor, for selectors and asyncio. Raises NflogClosedError once closed."""
    def getgroup(self, /) -> int:
        """The NFLOG group number."""
    def __enter__(self: _H, /) -> _H:
        """Return the handle itself."""
    def __exit__(self, /, *exc_info: object) -> Literal[False]:
        """Close the handle (see close()); an exception in the block propagates."""
    def __iter__(self: _H) -> _H: ...
    def __next__(self) -> NflogData: ...
    @property
    def rcvbuf(self) -> int:
        """Socket receive buffer in bytes as the kernel reports it (twice what was asked, for its
        bookkeeping); set it to grow or shrink the buffer."""
    @rcvbuf.setter
    def rcvbuf(self, value: int) -> None: ...
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
    def last_message_time(self) -> Optional[float]:
        """Unix time the last record was received, or None."""
    @property
    def closed(self) -> bool:
        """True once closed."""
