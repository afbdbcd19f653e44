"""Read netfilter NFLOG groups: the API of the PyPI package ``nflogr``, made right and extended.

Code written for nflogr 0.2.12 ports by changing the import (the README's "The Python API" lists
every remaining difference, and ``make test-compat`` runs both on the same packets)::

    from nflogd import nflog

    with nflog.open(5, seq=True) as h:
        for rec in h:
            print(rec.prefix, rec.indev, rec.uid, rec.length)

Beyond nflogr: ``seq=True`` gives ``NflogData.seq`` and an exact ``Nflog.lost`` count; every record
has ``hook`` and ``family``; ``Nflog.aggregate(Aggregator(...))`` counts packets and bytes by
chosen fields entirely in C, without a Python object per packet; and ``Nflog.configure(...)``
changes batching and copy settings of a bound group in place, losing nothing it was batching.
Interface names are those of the network namespace the handle was opened in.
"""

from __future__ import annotations

import builtins

from . import __version__ as __version__  # nflogr has __version__; this is nflogd's
from . import nflog_constants
from ._nflog import (
    COPY_META,
    COPY_NONE,
    COPY_PACKET,
    COPY_RANGE_MAX,
    ENOBUFS_DISABLE,
    ENOBUFS_HANDLE,
    ENOBUFS_RAISE,
    FIELDS,
    LIBNETFILTER_LOG_VERSION,
    NLBUF_MAX,
    NLBUF_MIN,
    PREFIX_MAX,
    Aggregator,
    CounterRenderer,
    Counts,
    Nflog,
    NflogClosedError,
    NflogData,
    NflogDroppedError,
    NflogError,
    NflogPermissionError,
    NflogRetryError,
    SeriesBudget,
)

# nflogr's PROTO_* and HWTYPE_* constants, at module level as in nflogr.
from .nflog_constants import *  # noqa: F403

__all__ = [
    "open", "Nflog", "NflogData", "Aggregator", "SeriesBudget", "Counts", "CounterRenderer", "FIELDS",
    "NflogError", "NflogDroppedError", "NflogClosedError", "NflogRetryError",
    "NflogPermissionError",
    "ENOBUFS_RAISE", "ENOBUFS_HANDLE", "ENOBUFS_DISABLE", "COPY_NONE", "COPY_META", "COPY_PACKET",
    "COPY_RANGE_MAX", "NLBUF_MIN", "NLBUF_MAX", "PREFIX_MAX", "LIBNETFILTER_LOG_VERSION",
    "FAMILY_NAMES", "HOOK_NAMES", "PROTO_NAMES", "NFLOGR_VERSION",
]
__all__ += nflog_constants.__all__

# nflogr's module metadata, telling the truth about this module. NFLOGR_VERSION is the nflogr
# release whose API this one follows (and ``make test-compat`` compares against).
__title__ = "nflogd.nflog"
__description__ = "Read netfilter NFLOG groups: nflogr's API, made right and extended"
__url__ = ""  # no public home yet
__author__ = "the nflogd authors"
__author_email__ = ""
__license__ = "GPL-2.0-or-later"
__build_debug__ = False
NFLOGR_VERSION = "0.2.12"

# Names for the numbers records carry, for labels and logs: defined with the labels.
from .labels import FAMILY_NAMES, HOOK_NAMES, PROTO_NAMES  # noqa: E402

_builtin_open = builtins.open


def open(group: int, *, timeout: float = 0.0, qthresh: int = 1, rcvbuf: int = 0, nlbuf: int = 0,
         enobufs: int = ENOBUFS_RAISE, copymode: int = COPY_PACKET, copyrange: int = 0,
         seq: bool = False, conntrack: bool = False) -> Nflog:
    """open(group, *, timeout=0.0, qthresh=1, rcvbuf=0, nlbuf=0, enobufs=ENOBUFS_RAISE,
    copymode=COPY_PACKET, copyrange=0, seq=False, conntrack=False) -> Nflog

    Bind NFLOG group ``group`` (0-65535) and return its handle; needs root or CAP_NET_ADMIN.

    - timeout: seconds (0.01 granularity) the kernel holds a batch before sending it.
    - qthresh: records per batch before the kernel sends it (0 works as 1).
    - rcvbuf: socket receive buffer in bytes, up to 2**30 - 1 (0: system default).
    - nlbuf: kernel batch buffer in bytes, NLBUF_MIN..NLBUF_MAX (0: kernel default, one page).
    - enobufs: ENOBUFS_RAISE (raise NflogDroppedError), ENOBUFS_HANDLE (count in ``drops``),
      ENOBUFS_DISABLE (NETLINK_NO_ENOBUFS: no error; count loss with seq=True).
    - copymode / copyrange: how much of each packet to copy (COPY_PACKET, up to copyrange bytes,
      0 meaning the whole packet up to COPY_RANGE_MAX).
    - seq: ask for sequence numbers, so ``NflogData.seq`` is set and ``Nflog.lost`` counts
      exactly the records lost between the kernel and this handle.
    - conntrack: ask for conntrack data (NFULNL_CFG_F_CONNTRACK), so ``NflogData.ct_state`` is
      set; a kernel built without CONFIG_NETFILTER_NETLINK_GLUE_CT refuses it (NflogError,
      errno EOPNOTSUPP) and binds nothing.

    Out-of-range values raise ValueError (the kernel would silently ignore them); a group bound
    by another socket, or a missing CAP_NET_ADMIN, raises NflogPermissionError (EPERM, both an
    NflogError and a PermissionError) naming where to look.
    """
    return Nflog(group, timeout=timeout, qthresh=qthresh, rcvbuf=rcvbuf, nlbuf=nlbuf,
                 enobufs=enobufs, copymode=copymode, copyrange=copyrange, seq=seq,
                 conntrack=conntrack)
