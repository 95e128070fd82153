"""The chunk run: a chunk's open requests, concurrently on one event loop, and the chunks it claims.

Each request skips if already final, else runs to its committed result (request.py). When every
request of the chunk has started and slots are free, the run claims the next chunk job from the queue
and its requests join the same loop, so calls stay in flight across chunk boundaries instead of
draining to zero. A stop (SIGTERM) starts nothing new, gives calls in flight `stop_grace` seconds and
reports the rest as leftover. What the RQ job must do after the loop (hand back, park, mark claimed
chunks done) comes back as a `ChunkSummary`; jobs.run_chunk does it.
"""

from __future__ import annotations

import asyncio
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
from .errors import InvalidRequest
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
                        drain: threading.Event | None = None, claim: Claim | None = None) -> ChunkSummary:
    """Run a chunk's open requests concurrently, `concurrency` at a time, and those of the chunks
    `claim` takes while its tail drains. With `drain` set mid-way, nothing new starts, calls in flight
    get `stop_grace` seconds, and the rest is reported as leftover (uncommitted, safe to re-run)."""
    writes = Writes(conn, settings.key_prefix)
    async with http.make_client(concurrency=settings.concurrency, timeout=settings.request_timeout) as client:
        upstream = Upstream(settings, client, writes, Limiter(conn, settings.key_prefix, settings.rate_burst),
                            load_limits(settings.limits_path))
        ctx = Context(settings, current_registry(settings.registry_path), Store.of(conn, settings), upstream)
        run = ChunkRun(ctx, drain or threading.Event())
        await run.work(batch_id, custom_ids, claim)
    return run.summary()


class ChunkRun:
    """One chunk job's run: its own requests and those of the chunks it claims, on one event loop.

    A finished request is forgotten at once: one run may claim chunk after chunk for half an hour, and
    keeping every task (as this once did) grew a work horse by ~0.8 KB per request and made each pass
    over them slower. Only counts per claimed job are kept.
    """

    def __init__(self, ctx: Context, stop: threading.Event) -> None:
        self.ctx, self.stop = ctx, stop
        self.settings, self.store = ctx.settings, ctx.store
        self.outcomes: dict[str, int] = {"skipped": 0, "succeeded": 0, "errored": 0}
        self.leftover: dict[str, list[str]] = {}
        self.batches: dict[str, Batch] = {}
        self.pending: set[asyncio.Future[None]] = set()
        self.open_of: dict[str | None, int] = {}  # claimed job id (None: the chunk itself) -> requests not done
        self.finished: list[str] = []  # claimed jobs whose requests are all done, not yet marked so
        self.waiting = 0  # launched, not yet past the concurrency gate
        self.gate = asyncio.Semaphore(self.settings.concurrency)
        self.changed = asyncio.Event()
        self.claim_until = 0.0  # stop claiming then: stay well inside RQ's job timeout
        self.quiet_until = 0.0  # the queue was empty: do not ask again before then

    async def work(self, batch_id: str, custom_ids: list[str], claim: Claim | None) -> None:
        """Run until every request launched (the chunk's, the claimed chunks') is done, or a stop."""
        self.launch(None, batch_id, custom_ids)
        self.claim_until = time.monotonic() + self.settings.job_timeout / 2
        while True:
            self.changed.clear()
            if self.stop.is_set() and self.pending:
                await self.drain()
                break
            await self.mark_finished()
            if claim is not None and await self.claim_next(claim):
                continue
            if not self.pending and not self.finished:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.05)
        await asyncio.gather(*self.pending, return_exceptions=True)

    def launch(self, job_id: str | None, bid: str, ids: list[str]) -> None:
        """Start the open requests of `ids`; a request already committed is skipped, never called again."""
        if bid not in self.batches:
            self.batches[bid] = Batch.load(self.store, bid)
        done = self.store.done_ids(bid, ids)
        self.outcomes["skipped"] += len(done)
        todo = [cid for cid in ids if cid not in done]
        records = load_records(self.store, bid, todo)
        self.open_of[job_id] = len(todo)
        self.waiting += len(todo)
        for cid in todo:
            task = asyncio.ensure_future(self.one(self.batches[bid], cid, records[cid]))
            self.pending.add(task)
            task.add_done_callback(functools.partial(self.landed, job_id))
        if not todo:
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
        self.changed.set()

    async def one(self, batch: Batch, cid: str, record: Record) -> None:
        """One request within the concurrency gate; counted by outcome, or left over by a stop."""
        async with self.gate:
            self.waiting -= 1
            if not self.waiting:
                self.changed.set()  # all launched requests started: the run may claim more now
            if self.stop.is_set():
                self.leftover.setdefault(batch.id, []).append(cid)
                return
            try:
                outcome = await run_request(self.ctx, batch, cid, record)
            except asyncio.CancelledError:
                self.leftover.setdefault(batch.id, []).append(cid)  # cut off by the stop grace: runs again later
                raise
            except Exception:  # not even its error could be stored: say so; a re-run of the chunk retries it
                log.exception("request %s/%s has no result", batch.id, cid)
                outcome = "unstored"
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def mark_finished(self) -> None:
        """A claimed chunk is done: say so now, not when this whole run ends."""
        if self.finished:
            done, self.finished = self.finished, []
            await asyncio.to_thread(finish_claimed, self.store.conn, self.settings, done)

    async def claim_next(self, claim: Claim) -> bool:
        """Take the next queued chunk when this run's requests have all started and slots are free."""
        now = time.monotonic()
        if self.waiting or len(self.pending) >= self.settings.concurrency or self.stop.is_set() \
                or now >= self.claim_until or now < self.quiet_until:
            return False
        got = await asyncio.to_thread(claim)
        if got is None:
            self.quiet_until = now + 0.5
            return False
        self.launch(*got)
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
