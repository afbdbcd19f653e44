"""Interface index -> name, resolved at scrape time, never per record.

Records carry interface indexes; names are looked up once per scrape from the kernel's current
table, so a renamed interface shows its new name at the next scrape, and a deleted one that some
series named keeps the last name it had (its counted packets still belong to it). An index never
seen gets "ifindex:N".

Memory stays bounded however many interfaces come and go: the table is the kernel's current one,
and of deleted interfaces only those whose name a series asked for are kept, at most KEEP_DELETED
of them (the longest gone are forgotten first).
"""

from __future__ import annotations

import os
import socket
import threading

# Deleted interfaces whose names stay known for the series that carry them. Beyond this many the
# longest-deleted one is forgotten (its series then show "ifindex:N").
KEEP_DELETED = 4096


def _exportable(name: str) -> str:
    """The name as valid UTF-8 text: bytes that are not UTF-8 become \\xNN, as in prefixes.

    Linux allows any byte but '/', ':' and whitespace in a name; Python hands non-UTF-8 bytes
    over as lone surrogates, which cannot be encoded into the exposition text.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class InterfaceNames:
    """A cache of the kernel's interface table, refreshed explicitly (once per scrape)."""

    def __init__(self, keep_deleted: int = KEEP_DELETED) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, str] = {}  # the kernel's table at the last refresh
        self._deleted: dict[int, str] = {}  # gone, but named by a series; oldest first
        self._asked: set[int] = set()  # live indexes whose name a series used
        self._keep = keep_deleted
        self.generation = 0  # bumped whenever a name changed, so dependent caches can drop

    def __len__(self) -> int:
        """Names held: live interfaces plus the deleted ones kept."""
        return len(self._live) + len(self._deleted)

    def refresh(self) -> bool:
        """Re-read the interface table; True when any name a series may show changed."""
        try:
            current = {i: _exportable(n) for i, n in socket.if_nameindex()}
        except OSError:
            return False
        with self._lock:
            changed = any(self._known(i) != n for i, n in current.items())
            for i in sorted(self._live.keys() - current.keys()):  # older (lower) indexes first
                if i in self._asked:
                    self._deleted[i] = self._live[i]  # newest last
            for i in current.keys() & self._deleted.keys():
                del self._deleted[i]  # the index was reused: the kernel's name counts
            while len(self._deleted) > self._keep:
                del self._deleted[next(iter(self._deleted))]
                changed = True
            self._asked &= current.keys()
            self._live = current
            if changed:
                self.generation += 1
            return changed

    def _known(self, ifindex: int) -> str | None:
        return self._live.get(ifindex) or self._deleted.get(ifindex)

    def name(self, ifindex: int | None) -> str:
        """The interface's name; "" when the record had none."""
        if not ifindex:
            return ""
        name = self._live.get(ifindex)
        if name is not None:
            self._asked.add(ifindex)
            return name
        name = self._deleted.get(ifindex)
        if name is None:
            return f"ifindex:{ifindex}"
        return name
