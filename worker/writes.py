"""Redis refusing writes: tell it apart, say so once, and wait it out without losing a paid answer.

Near its memory limit (maxmemory), read-only after a failover, loading, unable to persist (MISCONF) or
unreachable, Redis will take the same write later, unchanged. A worker must then neither die nor drop a
result: `Writes` stops new calls (an answer that cannot be stored is paid for nothing) and `persist`
keeps a result until it is stored. `Refusals` is the logging both the work horse and `otb worker` use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from .keys import Keys

log = logging.getLogger("otb.worker")

T = TypeVar("T")


def refused_write(exc: BaseException) -> bool:
    """Redis will take this write later, unchanged: it is full (maxmemory), read-only, loading, cannot
    persist (MISCONF) or cannot be reached."""
    return isinstance(exc, (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
                            redis.exceptions.BusyLoadingError, redis.ConnectionError, redis.TimeoutError)) \
        or str(exc).startswith(("MISCONF", "OOM"))


class Refusals:
    """Tells the log that Redis refuses writes (once a minute at most: near its memory limit it flaps
    between refusing and taking them) and, at INFO, when it takes them again."""

    def __init__(self, waiting: str) -> None:
        self.waiting = waiting  # what we do meanwhile, for the message
        self.since: float | None = None
        self._said = -60.0

    def refused(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self._said >= 60:
            self._said = now
            log.error("Redis refuses writes (%s: %s): %s", type(exc).__name__, exc, self.waiting)

    def taken(self) -> None:
        if self.since is not None:
            log.info("Redis takes writes again after %.1f s", time.monotonic() - self.since)
            self.since = None


class Writes(Refusals):
    """Does Redis take writes? Once one is refused, no new call starts until a write succeeds again:
    an answer that cannot be stored is paid for nothing. One waiter at a time probes with a tiny SET."""

    def __init__(self, conn: redis.Redis, prefix: str) -> None:
        super().__init__("no new calls until it takes them again; answers in hand wait to be stored")
        self.conn, self.probe_key = conn, Keys(prefix).writable
        self._probing = asyncio.Lock()

    async def ready(self) -> None:
        """Return at once while writes work; otherwise once a probe write succeeds."""
        delay = 0.2
        while self.since is not None:
            async with self._probing:
                if self.since is None:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await asyncio.to_thread(self.conn.set, self.probe_key, "1", px=10_000)
                except redis.RedisError as exc:
                    if not refused_write(exc):
                        raise
                    continue
                self.taken()

    async def persist(self, write: Callable[[], T]) -> T:
        """Run `write` off the event loop until Redis takes it. For a result: it is done only once
        stored, and dropping it would lose a paid answer and leave its batch open."""
        delay = 0.2
        while True:
            try:
                done = await asyncio.to_thread(write)
            except redis.RedisError as exc:
                if not refused_write(exc):
                    raise
                self.refused(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.taken()
            return done
