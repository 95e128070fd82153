"""Cancel and retry a batch. Both keep every finished result; neither can lose or duplicate one."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from rq import Queue, Retry

from worker.recovery import close_unstarted, queue_for
from worker.settings import Settings
from worker.store import Store

from .submit import CHUNK_JOB


def cancel(conn: redis.Redis, settings: Settings, bid: str) -> dict[str, Any]:
    """Stop what has not started (`batch_cancelled`); calls in flight finish and keep their results."""
    store = Store(conn, settings.key_prefix, settings.result_ttl)
    status = store.close(bid, "cancelling")
    if status == "cancelling":
        close_unstarted(conn, settings, bid, "batch_cancelled")
    return {"id": bid, "status": store.status(bid)["status"] if status else None}


def retry(conn: redis.Redis, settings: Settings, bid: str) -> int:
    """Run the errored requests again (not canceled or expired ones, not lines refused at submit)."""
    store = Store(conn, settings.key_prefix, settings.result_ttl)
    again = []
    for cid, raw in store.raw_results(bid).items():
        line = json.loads(raw)
        if (line.get("meta") or {}).get("outcome") != "errored":
            continue
        if not store.conn.hexists(store.keys.requests(bid), cid):
            continue  # refused at submit: nothing to send
        if store.uncommit(bid, cid, raw, "errored"):
            again.append(cid)
    if again:
        _enqueue(conn, settings, store, bid, again)
    return len(again)


def _enqueue(conn: redis.Redis, settings: Settings, store: Store, bid: str, ids: list[str]) -> None:
    queue: Queue = queue_for(conn, settings)
    stamp = int(time.time() * 1000)
    size = settings.chunk_size
    jobs = [Queue.prepare_data(CHUNK_JOB, args=(bid, ids[i : i + size]), job_id=f"{bid}-retry{stamp}-{i // size}",
                               timeout=settings.job_timeout, result_ttl=3600, failure_ttl=settings.result_ttl,
                               retry=Retry(max=3), description=f"{bid} retry of {len(ids[i:i + size])} requests")
            for i in range(0, len(ids), size)]
    with conn.pipeline() as pipe:
        queue.enqueue_many(jobs, pipeline=pipe)
        store.add_jobs(pipe, bid, [j.job_id for j in jobs])
        pipe.execute()
