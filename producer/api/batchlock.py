"""A lease on one API batch, so one server at a time creates it or writes its output files.

`SET key owner NX PX`, refreshed from a thread while the work runs (a busy server cannot starve it)
and deleted at the end if still ours. A server killed mid-work leaves it to lapse within `TTL_MS`;
then another server's finalizer takes the batch over. The lock saves work, and guards the one step
that must not run twice at once (a submit under the batch's fixed id); writing output files stays
correct without it: they become visible only in a transaction that checks the record.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from types import TracebackType

import redis

from .codec import text

log = logging.getLogger("otb.api.batches")
TTL_MS = 30_000


class BatchLock:
    def __init__(self, conn: redis.Redis, key: str, ttl_ms: int = TTL_MS) -> None:
        self.conn, self.key, self.ttl_ms = conn, key, ttl_ms
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it."""
        return bool(self.conn.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def __enter__(self) -> "BatchLock":
        """Hold it (taken by `acquire`, or set with `owner` in the caller's own transaction) until the block ends."""
        self._thread = threading.Thread(target=self._refresh, name="otb-batch-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._if_ours(release=True)
        except redis.RedisError:
            pass  # it lapses on its own

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._if_ours(release=False):
                    log.warning("lost the lock %s (another server took the batch over)", self.key)
                    return
            except redis.RedisError as exc:  # Redis restarting: try again next tick
                log.warning("lock %s not refreshed: %s", self.key, exc)

    def _if_ours(self, *, release: bool) -> bool:
        """Refresh or delete the lock, only while it is still ours."""
        with self.conn.pipeline() as pipe:
            try:
                pipe.watch(self.key)
                held = pipe.get(self.key)
                if held is None or text(held) != self.owner:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.delete(self.key) if release else pipe.pexpire(self.key, self.ttl_ms)
                pipe.execute()
                return True
            except redis.WatchError:
                return False
