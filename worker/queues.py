"""The queues chunk jobs go on, and how a batch's requests become RQ jobs.

One RQ job is a chunk of request ids (JSON, never pickle) that runs `worker.jobs.run_chunk`; its id
is `{batch}-{tag}-{n}`, so a repeat enqueue is visible. HTTP calls someone is waiting on go on an
interactive twin of the batch queue, which workers take first.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from .settings import Settings
from .store import Store

CHUNK_JOB = "worker.jobs.run_chunk"
CHUNK_RESULT_TTL = 3600  # how long RQ keeps a finished chunk job (ours are in the batch's own keys)


def queue_for(conn: redis.Redis, settings: Settings, *, interactive: bool = False) -> Queue:
    """The batch queue, or its interactive twin (HTTP calls someone is waiting on: taken first).

    Made once per client and name: RQ's Queue checks its serializer against a Protocol when made, which
    costs more than the claim that asks for the queues (a run claiming calls asks per call)."""
    name = interactive_name(settings) if interactive else settings.queue_name
    made = _queues.get(conn)
    if made is None:
        made = _queues[conn] = {}
    queue = made.get(name)
    if queue is None:
        queue = made[name] = Queue(name, connection=conn, serializer=JSONSerializer)
    return queue


_queues: weakref.WeakKeyDictionary[redis.Redis, dict[str, Queue]] = weakref.WeakKeyDictionary()


def interactive_name(settings: Settings) -> str:
    """`{queue}:interactive`: one-request batches of `otb serve`'s calls, ahead of every batch chunk."""
    return f"{settings.queue_name}:interactive"


def wait_for_call(conn: redis.Redis, settings: Settings, timeout: float) -> bool:
    """Block until the interactive queue holds a job, at most `timeout` seconds; True if it does.

    `BLMOVE q q RIGHT RIGHT` takes the last job id and puts it back where it was: the queue is
    unchanged, and a worker blocked on the same queue (RQ's BLPOP) is still served at once.
    """
    key = queue_for(conn, settings, interactive=True).key
    seconds = max(round(timeout, 3), 0.001)  # Redis takes fractions (0 would block for ever); redis-py types it int
    return conn.blmove(key, key, seconds, "RIGHT", "RIGHT") is not None  # type: ignore[arg-type]


def queues_for(conn: redis.Redis, settings: Settings) -> list[Queue]:
    """What a worker takes from, in order: RQ dequeues from the first non-empty queue, so a waiting
    HTTP call never queues behind a big batch's chunks."""
    return [queue_for(conn, settings, interactive=True), queue_for(conn, settings)]


def chunk_jobs(settings: Settings, bid: str, ids: list[str], tag: str, size: int | None = None) -> list[Any]:
    """RQ job data for `ids` in chunks; job ids `{bid}-{tag}-{n}` (stable, so a repeat is visible)."""
    size = size or settings.chunk_size
    return [Queue.prepare_data(
        CHUNK_JOB, args=(bid, ids[start : start + size]), job_id=f"{bid}-{tag}-{start // size}",
        timeout=settings.job_timeout, result_ttl=CHUNK_RESULT_TTL, failure_ttl=settings.result_ttl, retry=Retry(max=3),
        description=f"{bid} {tag}: {len(ids[start:start + size])} requests",
    ) for start in range(0, len(ids), size)]


def enqueue_chunks(conn: redis.Redis, settings: Settings, bid: str, ids: list[str], tag: str, *,
                   pipe: Any = None) -> list[str]:
    """Enqueue `ids` of batch `bid` again (retry, checkpoint, resume, rescue) and record the jobs on the
    batch; with `pipe`, as part of the caller's transaction."""
    jobs = chunk_jobs(settings, bid, ids, tag)
    store = Store.of(conn, settings)
    with contextlib.nullcontext(pipe) if pipe is not None else conn.pipeline() as p:
        queue_for(conn, settings).enqueue_many(jobs, pipeline=p)
        store.add_jobs(p, bid, [j.job_id for j in jobs])
        if pipe is None:
            p.execute()
    return [j.job_id for j in jobs]
