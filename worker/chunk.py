"""The chunk run: a chunk's open requests, concurrently on one event loop, and the chunks it claims.

Each request skips if already final, else runs to its committed result (request.py). While fewer
than half a concurrency's worth of requests wait for a slot, the run claims the next chunk job from
the queue (read in a thread) and its requests join the same loop, so calls stay in flight across chunk
boundaries instead of draining to zero. A stop (SIGTERM) starts nothing new, gives calls in flight `stop_grace` seconds and
reports the rest as leftover. What the RQ job must do after the loop (hand back, park, mark claimed
chunks done) comes back as a `ChunkSummary`; jobs.run_chunk does it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from . import http
from .batch import Batch, ParkedRequest
from .commits import Committer
from .errors import InvalidRequest
from .lease import Lease
from .ratelimit import Limiter, load_limits
from .recovery import finish_claimed
from .registry import current_registry
from .request import Context, Record, run_request
from .settings import Settings
from .store import Store
from .upstream import Upstream
from .writes import Writes

log = logging.getLogger("otb.worker")

Claim = Callable[[], tuple[str, str, list[str]] | None]  # the next queued chunk: (job id, batch, custom ids)


@dataclass
class ChunkSummary:
    """What a chunk run did, and what its RQ job must still do once the event loop is done."""

    outcomes: dict[str, int]  # requests by outcome; `skipped`: committed already (earlier, or by another run)
    leftover: dict[str, list[str]]  # batch -> requests a stop left unstarted (uncommitted, safe to run again)
    parked: dict[str, list[ParkedRequest]]  # batch -> requests set aside until the provider takes them
    claimed: list[str]  # claimed chunk jobs not yet marked finished

    def job_result(self) -> dict[str, int]:
        """What the RQ job returns (kept as its result): counts by outcome, handed back and parked."""
        return {**self.outcomes, "checkpointed": sum(len(ids) for ids in self.leftover.values()),
                "parked": sum(len(items) for items in self.parked.values())}


async def process_chunk(conn: redis.Redis, settings: Settings, batch_id: str, custom_ids: list[str], *,
                        drain: threading.Event | None = None, claim: Claim | None = None,
                        lease: Lease | None = None) -> ChunkSummary:
    """Run a chunk's open requests concurrently, `concurrency` at a time, and those of the chunks
    `claim` takes while its tail drains. With `drain` set mid-way, nothing new starts, calls in flight
    get `stop_grace` seconds, and the rest is reported as leftover (uncommitted, safe to re-run). Once
    `lease` is lost, nothing new starts either, and what waited is dropped (a janitor re-queued it)."""
    writes = Writes(conn, settings.key_prefix)
    async with http.make_client(concurrency=settings.concurrency, timeout=settings.request_timeout) as client:
        upstream = Upstream(settings, client, writes, Limiter(conn, settings.key_prefix, settings.rate_burst),
                            load_limits(settings.limits_path), lease=lease)
        store = Store.of(conn, settings)
        committer = Committer(store, writes)
        ctx = Context(settings, current_registry(settings.registry_path), store, upstream, committer)
        run = ChunkRun(ctx, drain or threading.Event(), lease)
        committer.quiet = run.quiet
        try:
            await run.work(batch_id, custom_ids, claim)
        finally:
            await committer.close()
    return run.summary()


class ChunkRun:
    """One chunk job's run: its own requests and those of the chunks it claims, on one event loop.

    A finished request is forgotten at once: one run may claim chunk after chunk for half an hour, and
    keeping every task (as this once did) grew a work horse by ~0.8 KB per request and made each pass
    over them slower. Only counts per claimed job are kept.
    """

    def __init__(self, ctx: Context, stop: threading.Event, lease: Lease | None = None) -> None:
        self.ctx, self.stop, self.lease = ctx, stop, lease
        self.settings, self.store = ctx.settings, ctx.store
        self.outcomes: dict[str, int] = {"skipped": 0, "succeeded": 0, "errored": 0}
        self.leftover: dict[str, list[str]] = {}
        self.batches: dict[str, Batch] = {}
        self.active: collections.Counter[str] = collections.Counter()  # batch -> its requests waiting or calling
        self.pending: set[asyncio.Future[None]] = set()
        self.open_of: dict[str | None, int] = {}  # claimed job id (None: the chunk itself) -> requests not done
        self.finished: list[str] = []  # claimed jobs whose requests are all done, not yet marked so
        # Launched requests wait here for a slot, in order, as plain entries: a task is made only when a
        # slot is free (a task per waiting request, parked on a semaphore, cost its creation, a future and
        # a wake-up through the loop for each of the hundreds a claimed chunk puts behind the calls).
        self.queued: collections.deque[tuple[str | None, Batch, str, Record]] = collections.deque()
        self.calling = 0  # holding a slot: calls not over (a request waiting for its commit holds none)
        self.ahead = max(self.settings.concurrency // 2, 1)  # claim while fewer requests than this wait for a slot
        self.changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.claim_until = 0.0  # stop claiming then: stay well inside RQ's job timeout
        self.quiet_until = 0.0  # the queue was empty: do not ask again before then
        self.held_back = False  # requests wait for the lease to be confirmed (after a freeze or a cut)

    async def work(self, batch_id: str, custom_ids: list[str], claim: Claim | None) -> None:
        """Run until every request launched (the chunk's, the claimed chunks') is done, or a stop."""
        self.launch(self.load(None, batch_id, custom_ids))
        self.claim_until = time.monotonic() + self.settings.job_timeout / 2
        while True:
            self.changed.clear()
            if self.held_back and self.may_start():
                self.held_back = False
                self.start_more()  # the lease is confirmed again: what waited starts
            if self.stop.is_set():
                self.leave_queued()
                if self.pending:
                    await self.drain()
                    break
            await self.mark_finished()
            if claim is not None and await self.claim_next(claim):
                continue
            if not self.pending and not self.finished and not self.queued:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.05)
        await asyncio.gather(*self.pending, return_exceptions=True)

    def load(self, job_id: str | None, bid: str, ids: list[str]) -> Loaded:
        """What a chunk needs from Redis before its requests start: its batch (once per run), which of
        `ids` are committed already, the others' stored requests. Blocking: a claimed chunk is loaded
        in a thread, so the calls in flight are never held up by these round trips."""
        batch = None if bid in self.batches else Batch.load(self.store, bid)
        done = self.store.done_ids(bid, ids)
        todo = [cid for cid in ids if cid not in done]
        return Loaded(job_id, bid, batch, len(done), load_records(self.store, bid, todo))

    def launch(self, loaded: Loaded) -> None:
        """Start the open requests of a loaded chunk; a request already committed is skipped, never
        called again."""
        job_id, bid = loaded.job_id, loaded.bid
        if loaded.batch is not None:
            self.forget_idle_batches()
            self.batches.setdefault(bid, loaded.batch)
        batch = self.batches[bid]
        self.active[bid] += len(loaded.records)
        self.outcomes["skipped"] += loaded.skipped
        self.open_of[job_id] = len(loaded.records)
        self.queued.extend((job_id, batch, cid, record) for cid, record in loaded.records.items())
        if not loaded.records:
            self.landed(job_id, None)
        self.start_more()

    def forget_idle_batches(self) -> None:
        """Drop the batches none of whose requests wait or run (and that parked none): a run serving
        HTTP calls claims a one-request batch per call for up to half an hour, and keeping each
        (~1 KB) grew the horse by ~0.5 GB at 300 calls/s. One claimed again later is read again."""
        for bid in [bid for bid, batch in self.batches.items() if self.active[bid] <= 0 and not batch.parked]:
            del self.batches[bid]
            self.active.pop(bid, None)

    def start_more(self) -> None:
        """Give the free slots to the requests waiting longest (a stop starts none); ask for more
        work while few wait."""
        if not self.may_start():
            self.held_back = bool(self.queued)  # the loop starts them once the lease is confirmed
            return
        while self.queued and self.calling < self.settings.concurrency and not self.stop.is_set():
            job_id, batch, cid, record = self.queued.popleft()
            self.calling += 1
            task = self.loop.create_task(self.one(batch, cid, record))  # not ensure_future: its checks, per request
            self.pending.add(task)
            task.add_done_callback(functools.partial(self.landed, job_id))
        if len(self.queued) < self.ahead and time.monotonic() >= self.quiet_until:
            self.changed.set()  # claim more (not while the queue is known empty: the loop looks again anyway)

    def may_start(self) -> bool:
        """May a request start now? Not before the lease is confirmed (after a freeze or a cut outlived
        its last refresh); once the lease is lost, the requests waiting for a slot are dropped: a janitor
        has given them to other workers with the chunk, so they are neither run nor handed back."""
        if self.lease is None or self.lease.holds():
            return True
        if not self.lease.lost.is_set():
            self.lease.refresh_now()
            return False
        while self.queued:
            job_id, batch, _cid, _record = self.queued.popleft()
            self.active[batch.id] -= 1
            self.outcomes["taken_over"] = self.outcomes.get("taken_over", 0) + 1
            self.open_of[job_id] -= 1
            self.landed(job_id, None)
        return False

    def leave_queued(self) -> None:
        """A stop: the requests still waiting for a slot are left over (never started: safe to run again)."""
        while self.queued:
            job_id, batch, cid, _record = self.queued.popleft()
            self.active[batch.id] -= 1
            self.leftover.setdefault(batch.id, []).append(cid)
            self.open_of[job_id] -= 1
            self.landed(job_id, None)

    def landed(self, job_id: str | None, task: asyncio.Future[None] | None) -> None:
        """A request is done (or a claimed chunk had none open): forget it, note a chunk that is through."""
        if task is not None:
            self.pending.discard(task)
            self.open_of[job_id] -= 1
        if self.open_of[job_id] <= 0:
            del self.open_of[job_id]
            if job_id is not None:
                self.finished.append(job_id)
            self.changed.set()  # a claimed chunk to mark finished
        elif not self.pending:
            self.changed.set()  # nothing in flight: the run may be over

    async def one(self, batch: Batch, cid: str, record: Record) -> None:
        """One request in the slot start_more gave it (held until its calls are over, not until its
        commit); counted by outcome, or left over when a stop's grace cuts it off."""
        held = True

        def calls_done() -> None:
            nonlocal held
            if held:
                held = False
                self.calling -= 1
                self.start_more()

        try:
            try:
                outcome = await run_request(self.ctx, batch, cid, record, calls_done)
            except asyncio.CancelledError:
                self.leftover.setdefault(batch.id, []).append(cid)  # cut off by the stop grace: runs again later
                raise
            except Exception:  # not even its error could be stored: say so; a re-run of the chunk retries it
                log.exception("request %s/%s has no result", batch.id, cid)
                outcome = "unstored"
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        finally:
            calls_done()
            self.active[batch.id] -= 1

    def quiet(self) -> bool:
        """No call in flight: no other result is coming soon, so a waiting commit need not wait."""
        return self.calling == 0

    async def mark_finished(self) -> None:
        """A claimed chunk is done: say so now, not when this whole run ends."""
        if self.lease is not None and self.lease.lost.is_set():
            self.finished = []  # not ours to mark: a janitor re-queues them (their dropped requests with them)
            return
        if self.finished:
            done, self.finished = self.finished, []
            await asyncio.to_thread(finish_claimed, self.store.conn, self.settings, done, self.lease)

    async def claim_next(self, claim: Claim) -> bool:
        """Take the next queued chunk, read in a thread, while fewer than `ahead` requests wait for a
        slot: a slot that frees up always has a request ready for it. (Claiming only once every
        request had a slot left the slots that freed meanwhile empty for a round trip and a load:
        at the default chunk size, 100 requests, that cost ~15% of the throughput.)"""
        now = time.monotonic()
        if len(self.queued) >= self.ahead or self.stop.is_set() or now >= self.claim_until or now < self.quiet_until:
            return False
        if self.lease is not None and not self.lease.holds():
            return False

        def claimed() -> Loaded | None:
            got = claim()
            return None if got is None else self.load(*got)

        loaded = await asyncio.to_thread(claimed)
        if loaded is None:
            self.quiet_until = now + 0.5
            return False
        self.launch(loaded)
        return True

    async def drain(self) -> None:
        """A stop: calls in flight get `stop_grace` seconds; those cut off are left over, to run again."""
        grace = self.settings.stop_grace
        log.warning("stop requested: letting calls in flight finish (up to %.0f s)", grace)
        _, late = await asyncio.wait(list(self.pending), timeout=grace)
        for task in late:
            task.cancel()

    def summary(self) -> ChunkSummary:
        parked = {bid: batch.parked for bid, batch in self.batches.items() if batch.parked}
        claimed = [job for job in self.open_of if job is not None] + self.finished
        return ChunkSummary(self.outcomes, self.leftover, parked, claimed)


@dataclass
class Loaded:
    """A chunk's open requests as read from Redis, ready to start."""

    job_id: str | None  # the claimed job (None: the run's own chunk)
    bid: str
    batch: Batch | None  # its batch, read for the first chunk of that batch in this run
    skipped: int  # requests committed already
    records: dict[str, Record]  # the others, in order


def load_records(store: Store, bid: str, ids: list[str]) -> dict[str, Record]:
    """The stored requests; one that cannot be decoded (nested too deeply, not JSON) fails only itself."""
    records: dict[str, Record] = {}
    try:
        records.update(store.load_requests(bid, ids))
        return records
    except (ValueError, RecursionError):
        pass
    for cid in ids:
        try:
            records.update(store.load_requests(bid, [cid]))
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
            records[cid] = InvalidRequest(f"the stored request cannot be read ({reason}); it was not sent")
    return records
