"""A chunk's lease (`otb:lease:{job}`): held while the chunk runs, and known to be lost once it is.

The lease's value is its holder's token (`{random}@{host}:{pid}`). A thread refreshes it every ttl/3
with a compare-and-set script (worker/lua/lease_refresh.lua), so a busy event loop cannot starve it
and a holder can only ever extend its own lease, never the one of the worker that took its chunk
over. When a refresh finds the key gone or another's, the lease is *lost*: a worker cut off (or
frozen) past its lease comes back to find its chunk re-queued by a janitor, and must then start no
new upstream call (the others ran or run those requests; a second call is paid twice). `confirm()`
is that gate, before every call: it lets a call through only while the lease is known to be held
(a refresh succeeded less than a ttl ago); after a freeze it asks for a refresh and waits for its
answer, so a resumed worker never sends before it knows whether it still holds the chunk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time

import redis

from .scripts import Scripts

log = logging.getLogger("otb.recovery")


class LeaseLost(Exception):
    """The chunk's lease lapsed and a janitor gave the chunk to another worker: no new call."""


class HeldElsewhere(Exception):
    """Another live run holds the chunk's lease (the job id was queued twice): this run must not run it."""


class Lease:
    """Holds `otb:lease:{job_id}` while a chunk runs, from a thread so a busy event loop cannot starve it."""

    def __init__(self, conn: redis.Redis, key: str, ttl: float) -> None:
        self.conn, self.key, self.ttl = conn, key, ttl
        self.owner = f"{secrets.token_hex(6)}@{socket.gethostname()}:{os.getpid()}"
        self.lost = threading.Event()
        self.held_until = 0.0  # monotonic: the lease lives at least until then (the send time of the last refresh + ttl)
        self.margin = min(1.0, ttl / 10)  # stop sending this long before it may lapse
        self._scripts = Scripts(conn)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="otb-lease", daemon=True)

    def take(self, *, wait: bool = True) -> None:
        """Take the lease if no one holds it. One held by another is waited for, up to a ttl and a
        second: a dead run's lapses in that time (RQ queues a chunk again as soon as its work horse
        dies); one still held after it is a live run's, kept fresh, and taking it would run the chunk
        twice at once (HeldElsewhere; at once without `wait`)."""
        give_up = time.monotonic() + (self.ttl + 1.0 if wait else 0.0)
        while True:
            sent = time.monotonic()
            if self.conn.set(self.key, self.owner, px=int(self.ttl * 1000), nx=True):
                self.held_until = sent + self.ttl
                return
            if sent >= give_up:
                raise HeldElsewhere(self.key)
            time.sleep(min(0.25, self.ttl / 10))

    def __enter__(self) -> "Lease":
        if not self.held_until:
            self.take()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if self.lost.is_set():
            return  # another's now, or gone
        try:
            self._scripts.lease_release(lease=self.key, owner=self.owner)
        except redis.RedisError:
            pass  # it lapses on its own

    def holds(self) -> bool:
        """Is the lease known to be held now (a refresh succeeded less than a ttl ago)?"""
        return not self.lost.is_set() and time.monotonic() < self.held_until - self.margin

    async def confirm(self) -> None:
        """Return while the lease is held; raise LeaseLost once it is lost. In between (a freeze or a
        cut outlived the last refresh), ask for a refresh now and wait for its answer."""
        while not self.holds():
            if self.lost.is_set():
                raise LeaseLost(self.key)
            self._wake.set()
            await asyncio.sleep(0.05)

    def refresh_now(self) -> None:
        """Ask the thread for a refresh at once (the lease may have lapsed while this process stood still)."""
        self._wake.set()

    def _refresh(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.ttl / 3)
            self._wake.clear()
            if self._stop.is_set():
                return
            sent = time.monotonic()
            try:
                held = self._scripts.lease_refresh(lease=self.key, owner=self.owner, ttl_ms=int(self.ttl * 1000))
            except redis.RedisError as exc:  # Redis restarting: try again next tick (no call starts meanwhile)
                log.warning("lease %s not refreshed: %s", self.key, exc)
                time.sleep(min(1.0, self.ttl / 10))
                continue
            if held:
                self.held_until = sent + self.ttl
                continue
            self.lost.set()
            log.warning("lease %s lost (lapsed while this worker was cut off or stalled; the chunk was given "
                        "to another worker): no new calls", self.key)
            return
