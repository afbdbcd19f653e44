"""sd_notify(3) for a Type=notify service: READY, RELOADING, STOPPING, STATUS and the watchdog.

The sending is sdnotify's public API: ``SystemdNotifier(debug=True)`` connects to $NOTIFY_SOCKET
(raising, with debug=True, instead of staying silent) and ``notify(state)`` sends one datagram.
Added here is only what it lacks:
- checking $NOTIFY_SOCKET first: libsystemd accepts only absolute paths and "@abstract" names,
  sdnotify would connect a relative path against the working directory;
- connecting lazily, and again after any failure (sdnotify connects once, in its constructor), so a
  manager that binds its socket later, or binds it again, is still reached;
- WATCHDOG_USEC/WATCHDOG_PID and MONOTONIC_USEC, which sdnotify knows nothing of;
- UTF-8 text (below, in _send) and one-line, bounded STATUS values;
- errors logged once (then at debug level), never raised: a notification that cannot be sent must
  not take the daemon down, but the operator must be able to see why systemd timed it out.
Like sdnotify and libsystemd, it reads the process environment (os.environ).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Mapping

import sdnotify

log = logging.getLogger("nflogd.notify")


def _address(value: str) -> str | None:
    """The AF_UNIX address for a NOTIFY_SOCKET value, or None when it is not one we can use.

    "@name" is an abstract socket (a leading NUL byte); otherwise libsystemd accepts only absolute
    paths.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


# systemd drops a whole notification longer than 4096 bytes (PIPE_BUF); 1000 characters of at most 4
# UTF-8 bytes each keep a STATUS= line and READY=1 well under that.
_STATUS_MAX = 1000


def _one_line(text: str) -> str:
    # A newline would end STATUS= and start a new assignment: text taken from the data (e.g. a log
    # prefix) must never be able to send READY=1 or WATCHDOG=1 on its own.
    return " ".join(text.splitlines())[:_STATUS_MAX]


class Notifier:
    """Talks to the service manager named by NOTIFY_SOCKET; does nothing when that is unset.

    Thread-safe: the watchdog pings from its own thread while the main thread reports reloads.
    """

    def __init__(self) -> None:
        env = os.environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._addr = _address(raw) if raw else None
        if raw and self._addr is None:
            log.warning("NOTIFY_SOCKET=%r is neither an absolute path nor an abstract name (@...): "
                        "not notifying the service manager", raw)
        self.enabled: bool = self._addr is not None
        self.watchdog_interval: float | None = self._interval(env) if self.enabled else None
        self._sender: sdnotify.SystemdNotifier | None = None
        self._lock = threading.Lock()
        self._warned = False

    @staticmethod
    def _interval(env: Mapping[str, str]) -> float | None:
        """Seconds between watchdog pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.

        None when the watchdog is off, malformed, or meant for another process (WATCHDOG_PID: a
        child that inherited the environment must not ping for its parent).
        """
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid is not None:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 2 / 1_000_000

    # -- the messages --------------------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status is not None:
            lines.append("STATUS=" + _one_line(status))
        return self._send("\n".join(lines))

    def reloading(self) -> bool:
        # systemd >= 253 requires MONOTONIC_USEC with RELOADING=1 (to tell this reload from a later
        # one); older versions ignore it. Both in one datagram, so they are never seen apart.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self._send("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        return self._send("WATCHDOG=1")

    # -- sending -------------------------------------------------------------------------------
    def _send(self, state: str) -> bool:
        """Send one datagram; True when it was handed to the kernel. Never raises."""
        if self._addr is None:
            return False
        # systemd reads the datagram as UTF-8; sdnotify encodes the str it is given as latin-1
        # (codecs.latin_1_encode), which maps code points 0-255 one to one onto the bytes 0-255. The
        # UTF-8 bytes decoded as latin-1 are therefore exactly the str that sdnotify turns back into
        # those bytes: text outside latin-1 is sent intact instead of raising UnicodeEncodeError,
        # and é goes out as UTF-8 rather than as the invalid single byte 0xe9.
        wire = state.encode("utf-8", "backslashreplace").decode("latin-1")
        with self._lock:
            try:
                if self._sender is None:
                    # Connected lazily and again after a failure; debug=True makes sdnotify raise
                    # what went wrong instead of keeping a dead notifier.
                    self._sender = sdnotify.SystemdNotifier(debug=True)
                self._sender.notify(wire)
                return True
            except Exception as exc:  # OSError mostly; anything from sdnotify alike
                self._drop()
                name = self._addr.replace("\0", "@", 1)
                first = state.splitlines()[0]
                if not self._warned:
                    self._warned = True
                    log.warning("cannot notify the service manager at %s (%s): %s; "
                                "further failures are logged at debug level", name, first, exc)
                else:
                    log.debug("cannot notify the service manager at %s (%s): %s", name, first, exc)
                return False

    def _drop(self) -> None:
        # SystemdNotifier has no close(); its socket attribute is the connection it made (None
        # when its constructor failed).
        if self._sender is not None and self._sender.socket is not None:
            self._sender.socket.close()
        self._sender = None

    def close(self) -> None:
        with self._lock:
            self._drop()
