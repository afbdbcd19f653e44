"""TLS policy: the server context, re-read when its files change, and client_allowed_sans."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import ssl
import threading
import time
from typing import Any

from ..webconfig import WebConfig, WebConfigError, build_ssl_context

log = logging.getLogger("nflogd.http")

FileSig = tuple[tuple[Any, ...], ...]


def file_sig(config: WebConfig | None) -> FileSig:
    """What the TLS files look like now (identity, size, mtime): a change means re-read them."""
    if config is None or config.tls is None:
        return ()
    sig: list[tuple[Any, ...]] = []
    for path in config.tls.files:
        try:
            st = os.stat(path)
            sig.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError as e:
            sig.append((path, e.errno))
    return tuple(sig)


def sans_match(cert: dict[str, Any], allowed: tuple[str, ...]) -> bool:
    """exporter-toolkit's client_allowed_sans: any DNS, e-mail, IP or URI SAN listed exactly."""
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address":
            # Python prints IPv6 uncompressed; Go compares the compressed form
            with contextlib.suppress(ValueError):
                value = str(ipaddress.ip_address(value.strip()))
        if kind in ("DNS", "email", "IP Address", "URI") and value in allowed:
            return True
    return False


class TLSContexts:
    """The context for new connections. `current()` re-reads the certificate files when they
    changed (looked at most every `check_interval`), so rotation needs no restart; a new file that
    does not load keeps the old context, logs one line and counts a failure (once per change)."""

    def __init__(self, config: WebConfig | None, check_interval: float) -> None:
        self._lock = threading.Lock()
        self._interval = check_interval
        self.reloads = 0
        self.reload_failures = 0
        self.last_ok = True
        self.last_time = 0.0
        self._config: WebConfig | None = None
        self._ctx: ssl.SSLContext | None = None
        self._sig: FileSig = ()
        self._failed_sig: FileSig | None = None
        self._next_check = 0.0
        self.replace(config, count=False)

    def replace(self, config: WebConfig | None, count: bool = True) -> None:
        """Use `config` from now on. Raises WebConfigError, keeping the old context."""
        sig = file_sig(config)
        ctx = build_ssl_context(config) if config is not None else None
        with self._lock:
            self._config, self._ctx, self._sig, self._failed_sig = config, ctx, sig, None
            if ctx is not None:
                self.reloads += count
                self.last_ok = True
                self.last_time = time.time()

    @property
    def enabled(self) -> bool:
        return self._ctx is not None

    @property
    def allowed_sans(self) -> tuple[str, ...] | None:
        cfg = self._config
        return cfg.tls.client_allowed_sans if cfg is not None and cfg.tls is not None else None

    def current(self) -> ssl.SSLContext | None:
        now = time.monotonic()
        with self._lock:
            ctx, config, old_sig = self._ctx, self._config, self._sig
            if ctx is None or config is None or now < self._next_check:
                return ctx
            self._next_check = now + self._interval
        sig = file_sig(config)
        if sig == old_sig or sig == self._failed_sig:
            return ctx
        try:
            new = build_ssl_context(config)
        except WebConfigError as e:
            with self._lock:
                self._failed_sig = sig
                self.reload_failures += 1
                self.last_ok = False
            log.error("new TLS certificate not loaded, still serving the previous one: %s", e)
            return ctx
        with self._lock:
            if self._config is config:  # not replaced by a reload meanwhile
                self._ctx, self._sig, self._failed_sig = new, sig, None
            self.reloads += 1
            self.last_ok = True
            self.last_time = time.time()
        log.info("TLS certificate files changed: reloaded")
        return new
