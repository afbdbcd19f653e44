"""Which connections may stay when there are too many: the eviction policy.

Two bounded sets, because a connection that has not yet sent a request has shown nothing:
- *pending*: accepted, not yet a complete request (TLS handshake or request head under way), at
  most `max_pending`. A newcomer beyond that evicts the pending connection accepted longest ago:
  a real client finishes its handshake and request in milliseconds, so only those that stall for
  longer than it takes `max_pending` newer connections to arrive are ever evicted, and a flood of
  idle, half-open or slowloris connections never stops new ones from being accepted.
- *admitted*: has sent a complete request (being answered, writing, or idle keep-alive), at most
  `max_connections`. A connection whose request completes when the set is full evicts the member
  that made no progress longest (handshake done, an answer below 400 drained, bytes of an answer
  taken by the client: asking for things is no progress, so a client that only sends bad
  passwords goes first), except members whose answer is being rendered; when all are rendering,
  it waits (in the pending set, so bounded) for the next one to finish, up to `admit_wait`, and
  is answered 503 after that.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Protocol

from .limits import Limits
from .stats import Tally


class Member(Protocol):
    """What the policy needs to know of a connection."""

    @property
    def rendering(self) -> bool: ...

    def progress(self, now: float) -> float:
        """When it last made progress (monotonic seconds)."""

    def evict(self) -> None:
        """Close it now; the table has already let it go."""


class Admission:
    def __init__(self, limits: Limits, tally: Tally) -> None:
        self.limits = limits
        self._tally = tally
        self._pending: collections.OrderedDict[Member, None] = collections.OrderedDict()
        self._admitted: set[Member] = set()
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def arrive(self, conn: Member) -> None:
        """A connection was accepted."""
        while len(self._pending) >= self.limits.max_pending:
            victim, _ = self._pending.popitem(last=False)  # the oldest
            self._evict(victim)
        self._pending[conn] = None

    def admit(self, conn: Member, now: float) -> bool:
        """Its request is complete: may it be answered? False: answer 503."""
        if conn in self._admitted:
            return True
        if len(self._admitted) >= self.limits.max_connections:
            victim = min((c for c in self._admitted if not c.rendering),
                         key=lambda c: c.progress(now), default=None)
            if victim is None:
                return False
            self._admitted.discard(victim)
            self._evict(victim)
        self._pending.pop(conn, None)
        self._admitted.add(conn)
        return True

    async def admit_soon(self, conn: Member) -> bool:
        """admit(), waiting up to `admit_wait` for a member to finish rendering or leave."""
        deadline = time.monotonic() + self.limits.admit_wait
        while not self.admit(conn, time.monotonic()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            fut = asyncio.get_running_loop().create_future()
            self._waiting.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except (asyncio.TimeoutError, TimeoutError):
                return False
        return True

    def wake(self) -> None:
        """A member finished rendering or left: the first waiter may try again."""
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def leave(self, conn: Member) -> None:
        self._pending.pop(conn, None)
        if conn in self._admitted:
            self._admitted.discard(conn)
            self.wake()

    def _evict(self, victim: Member) -> None:
        self._tally.add("evicted")
        victim.evict()
