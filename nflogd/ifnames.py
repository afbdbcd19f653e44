"""Interface index -> name, resolved at scrape time, never per record.

Records carry interface indexes; names are looked up once per scrape from the kernel's current
table, so a renamed interface shows its new name at the next scrape, and a deleted one keeps the
last name it had (its counted packets still belong to it). An index never seen gets "ifindex:N".
"""

from __future__ import annotations

import os
import socket
import threading


def _exportable(name: str) -> str:
    """The name as valid UTF-8 text: bytes that are not UTF-8 become \\xNN, as in prefixes.

    Linux allows any byte but '/', ':' and whitespace in a name; Python hands non-UTF-8 bytes
    over as lone surrogates, which cannot be encoded into the exposition text.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class InterfaceNames:
    """A cache of the kernel's interface table, refreshed explicitly (once per scrape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[int, str] = {}
        self.generation = 0  # bumped whenever a name changed, so dependent caches can drop

    def refresh(self) -> bool:
        """Re-read the interface table; True when any name changed."""
        try:
            current = {i: _exportable(n) for i, n in socket.if_nameindex()}
        except OSError:
            return False
        with self._lock:
            changed = any(self._names.get(i) != n for i, n in current.items())
            if changed:
                # Deleted interfaces keep their last name; live ones take the kernel's.
                self._names.update(current)
                self.generation += 1
            return changed

    def name(self, ifindex: int | None) -> str:
        """The interface's name; "" when the record had none."""
        if not ifindex:
            return ""
        name = self._names.get(ifindex)
        if name is None:
            return f"ifindex:{ifindex}"
        return name
