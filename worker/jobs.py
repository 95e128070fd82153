"""The RQ entry point: `run_chunk`, the one job function `otb worker` runs (rqworker.JOB_FUNCTIONS).

One RQ job is a chunk of requests (batch id and custom ids, JSON-serialised). This module is the edge
between RQ and the chunk run: it holds the chunk's lease, runs it on asyncio (chunk.py), then does
what only the job may do once the loop is done: hand back what a stop left unstarted, park what must
wait, mark the chunks it claimed finished. A re-run of the chunk (crash, duplicate execution) finds
committed requests and neither calls nor bills them again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis

from . import clock
from .chunk import ChunkSummary, process_chunk
from .connection import connect
from .lease import HeldElsewhere, Lease
from .linger import claimer
from .queues import enqueue_chunks, interactive_name
from .recovery import finish_claimed, park, wait_taken_over
from .settings import Settings
from .store import Store

__all__ = ["DRAIN", "configure", "current_settings", "horse_gc", "process_chunk", "run_chunk"]

log = logging.getLogger("otb.worker")

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Set by `otb worker` / `otb run` before work starts; forked job processes inherit it."""
    global _settings
    _settings = settings


def current_settings() -> Settings:
    """The configured settings; a bare `rq worker` never called configure(): then the job is the edge and reads the env."""
    return _settings if _settings is not None else Settings.from_env()


# Set in a work horse when its worker is asked to stop (SIGTERM): finish or checkpoint, then return.
DRAIN = threading.Event()

T = TypeVar("T")
# Chunk jobs whose run lost its lease, in this process: job id -> taken over (queued again, or another
# worker's) or not yet. Their RQ record belongs to the chunk's next run, so RQ must not mark them finished.
GIVEN_UP: dict[str, bool] = {}
HORSE_GC_THRESHOLD = 20_000  # allocations between young collections in a work horse (Python's default: 700)


def horse_gc() -> None:
    """In a freshly forked work horse: what it inherited (imports, registry, pydantic schemas: tens of
    MB) is frozen out of the garbage collector's scans, and young collections run 30x less often.

    A chunk run allocates a few dozen objects per request and keeps thousands of requests alive at
    once; with the defaults the collector walked the inherited heap every few hundred requests and
    took ~15% of the horse's CPU (bench/README.md, "At the defaults"). Freezing also keeps those pages
    shared with the parent (no copy-on-write from the collector's bookkeeping). The horse exits when
    its run ends, so nothing frozen needs collecting later.
    """
    gc.freeze()
    gc.set_threshold(HORSE_GC_THRESHOLD, 10, 10)


def run_loop(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """Run the chunk's event loop: uvloop's where installed and chosen (OTB_EVENT_LOOP), the standard one
    otherwise. The loop, its transports and its timers are a third of a horse's CPU per request; uvloop's
    are C (bench/README.md, *What changed*)."""
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def run_chunk(batch_id: str, custom_ids: list[str]) -> dict[str, int]:
    """RQ entry point: hold the chunk's lease, run it (and the chunks it claims from the queue while
    its own tail drains), then hand back what a graceful stop left undone and park what must wait."""
    from rq import get_current_job

    settings = current_settings()
    job = get_current_job()
    if job is None:  # called directly, outside RQ: no lease to hold, no chunk to claim
        conn = connect(settings.redis_url or "")
        summary = run_loop(settings, process_chunk(conn, settings, batch_id, custom_ids, drain=DRAIN))
    else:
        conn = job.connection
        lease_key = Store.of(conn, settings).keys.lease(job.id)
        lease = Lease(conn, lease_key, settings.lease_ttl)
        try:
            lease.take()
        except HeldElsewhere:  # the job id was queued twice and another run has it: leave it to that run
            log.warning("chunk %s: another worker runs it (its lease is held and kept fresh); this second run "
                        "of it does nothing", job.id)
            GIVEN_UP[job.id] = True  # its RQ record is that run's
            return {"held_elsewhere": 1}
        with lease:
            claim = claimer(conn, settings, lease_key, lease.owner, interactive=job.origin == interactive_name(settings),
                            stop=DRAIN, lost=lease.lost)
            summary = run_loop(settings, process_chunk(conn, settings, batch_id, custom_ids, drain=DRAIN, lease=lease,
                                                claim=claim))
            if not lease.lost.is_set():  # while the lease is held: the claims named under it are still its own
                settle(conn, settings, summary, lease)
        if lease.lost.is_set():  # a janitor gave the chunk (and those it claimed) to others: hand back nothing
            taken = wait_taken_over(conn, settings, job.id, lease.owner)
            if not taken:
                log.error("chunk %s: lease lost but not yet taken over after %.0f s; its open requests wait for "
                          "the janitor's rescue", job.id, settings.lease_ttl * 2)
            GIVEN_UP[job.id] = taken  # RQ's bookkeeping of the job is no longer this run's (rqworker.ChunkJobs)
        return summary.job_result()
    settle(conn, settings, summary)
    return summary.job_result()


def settle(conn: redis.Redis, settings: Settings, summary: ChunkSummary, lease: Lease | None = None) -> None:
    """After the run: a stopping worker hands its unstarted requests back to the queue, parked requests
    are set aside until their time, and the chunks the run claimed (under `lease`) are marked finished."""
    for bid, ids in summary.leftover.items():
        jobs = enqueue_chunks(conn, settings, bid, ids, f"continue{int(clock.now() * 1000)}")
        log.info("stopping: %d requests of %s handed back as %s", len(ids), bid, ", ".join(jobs))
    for bid, items in summary.parked.items():
        park(conn, settings, bid, items)
    finish_claimed(conn, settings, summary.claimed, lease)
