"""Basic auth as exporter-toolkit does it: bcrypt hashes, one check at a time, successes cached.

Where the time goes: a bcrypt check costs tens of milliseconds (cost 10) to seconds (cost 16), so
it never runs on the event loop, and runs one at a time (`bcrypt_pool` has one thread) so password
guessing costs at most one CPU. A scraper whose credentials were checked before is answered from
the cache on the event loop and never waits behind the guessers.
"""

from __future__ import annotations

import base64
import binascii
import collections
import concurrent.futures
import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping

import bcrypt

BCRYPT_MAX = 72  # bcrypt uses at most 72 bytes of a password
CACHE_SIZE = 1024


def credentials(value: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an Authorization header, or None when it is not valid Basic."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


class SuccessCache:
    """Successful checks, keyed by an HMAC (per-process random key) of user, stored hash and
    password: the plaintext never stays in memory, and a changed hash never matches an old entry.
    Only successes are cached, so a wrong password always costs one full bcrypt."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def digest(self, user: bytes, stored: bytes, password: bytes) -> bytes:
        msg = b"".join(len(x).to_bytes(4, "big") + x for x in (user, stored, password))
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            if digest in self._entries:
                self._entries.move_to_end(digest)
                return True
            return False

    def add(self, digest: bytes) -> None:
        with self._lock:
            self._entries[digest] = None
            while len(self._entries) > CACHE_SIZE:
                self._entries.popitem(last=False)


def _dummy_hash(cost: int) -> bytes:
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))


class BasicAuth:
    """The users of one web config. Built on the caller's thread without any bcrypt work: the
    dummy hash an unknown user is checked against is made on `bcrypt_pool`, queued ahead of any
    check, so start and reload never wait for it (cost 16 took 4.8 s)."""

    def __init__(self, users: Mapping[str, str], excluded: tuple[str, ...],
                 bcrypt_pool: concurrent.futures.Executor,
                 previous: BasicAuth | None = None) -> None:
        self.users = {u.encode(): h.encode() for u, h in users.items()}
        self.excluded = excluded
        self.cache = SuccessCache()
        # the most common cost among the users, so an unknown name takes as long as a known one
        costs = collections.Counter(int(h[4:6]) for h in self.users.values())
        self.dummy_cost = max(costs, key=lambda c: (costs[c], c)) if costs else 0
        self._dummy: concurrent.futures.Future[bytes] | None = None
        if self.users:
            if previous is not None and previous.dummy_cost == self.dummy_cost and \
                    previous._dummy is not None:
                self._dummy = previous._dummy
            else:
                self._dummy = bcrypt_pool.submit(_dummy_hash, self.dummy_cost)

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def required(self, path: str) -> bool:
        return bool(self.users) and path not in self.excluded

    def cached(self, user: bytes, password: bytes) -> bool:
        """True when this exact user and password passed before (cheap: no bcrypt)."""
        stored = self.users.get(user)
        return stored is not None and self.cache.digest(user, stored, password) in self.cache

    def check(self, user: bytes, password: bytes) -> bool:
        """The full check; blocking, for the bcrypt thread. An unknown user costs one bcrypt
        against the dummy hash of the same cost, so the answer takes as long as for a wrong
        password. Like Go's bcrypt (which exporter-toolkit uses), only the first 72 bytes count:
        bcrypt 5 raises on longer ones instead of truncating, and htpasswd -B hashes the first 72
        bytes of a longer password."""
        stored = self.users.get(user)
        if stored is None:
            assert self._dummy is not None
            hashed = self._dummy.result()  # already made: it was queued first on this thread
        else:
            hashed = stored
        try:
            ok = bcrypt.checkpw(password[:BCRYPT_MAX], hashed)
        except ValueError:
            ok = False
        if ok and stored is not None:
            self.cache.add(self.cache.digest(user, stored, password))
            return True
        return False
