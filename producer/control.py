"""Cancel and retry a batch. Both keep every finished result; neither can lose or duplicate one."""

from __future__ import annotations

import json
from typing import Any

import redis

from worker import clock
from worker.errors import OTBError
from worker.native import poke as poke_native
from worker.queues import enqueue_chunks
from worker.recovery import close_unstarted
from worker.settings import Settings
from worker.store import Store


def cancel(conn: redis.Redis, settings: Settings, bid: str) -> dict[str, Any]:
    """Stop what has not started (`batch_cancelled`); calls in flight finish and keep their results."""
    store = Store.of(conn, settings)
    status = store.close(bid, "cancelling")
    if status == "cancelling":
        close_unstarted(conn, settings, bid, "batch_cancelled")
        poke_native(conn, settings, bid)  # its provider batches are cancelled by their poller
    now = store.status(bid) if status else None
    return {"id": bid, "status": now["status"] if now else None}


def retry(conn: redis.Redis, settings: Settings, bid: str) -> int:
    """Run the errored requests again (not canceled or expired ones, not lines refused at submit).

    One chunk at a time, each in one transaction: its results are taken back and its job is queued
    together, so a retry killed part-way leaves every request with a result or a job, and running
    `otb retry` again picks up the rest. A cancel wins: once the batch is closing, no result is taken
    back (the script checks the status) and the retry stops.
    """
    store = Store.of(conn, settings)
    status = (store.batch(bid) or {}).get("status")
    if status not in ("completed", "in_progress"):
        raise OTBError(f"batch {bid} is {status}: only a running or completed batch is retried")
    size = settings.chunk_size
    errored = _retryable(store, bid)
    again = 0
    tag = f"retry{int(clock.now() * 1000)}"
    for n, start in enumerate(range(0, len(errored), size)):
        if (store.batch(bid) or {}).get("status") not in ("completed", "in_progress"):
            break
        part = errored[start : start + size]
        with conn.pipeline(transaction=True) as pipe:
            for cid, raw in part:
                store.uncommit(bid, cid, raw, "errored", pipe=pipe)
            enqueue_chunks(conn, settings, bid, [cid for cid, _ in part], f"{tag}-{n}", pipe=pipe)
            taken = pipe.execute()[: len(part)]
        again += sum(1 for got in taken if got == 1)
    return again


def _retryable(store: Store, bid: str) -> list[tuple[str, str]]:
    """(custom_id, result line) of errored requests that have a body to send again."""
    errored = [(cid, raw) for cid, raw in store.raw_results(bid).items()
               if (json.loads(raw).get("meta") or {}).get("outcome") == "errored"]
    pipe = store.conn.pipeline(transaction=False)
    for cid, _ in errored:
        pipe.hexists(store.keys.requests(bid), cid)  # refused at submit: nothing to send
    return [item for item, has_body in zip(errored, pipe.execute()) if has_body]
