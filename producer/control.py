"""Cancel and retry a batch. Both keep every finished result; neither can lose or duplicate one."""

from __future__ import annotations

import json
from typing import Any

import redis

from worker import clock
from worker.recovery import close_unstarted, enqueue_chunks
from worker.settings import Settings
from worker.store import Store


def cancel(conn: redis.Redis, settings: Settings, bid: str) -> dict[str, Any]:
    """Stop what has not started (`batch_cancelled`); calls in flight finish and keep their results."""
    store = Store.of(conn, settings)
    status = store.close(bid, "cancelling")
    if status == "cancelling":
        close_unstarted(conn, settings, bid, "batch_cancelled")
    return {"id": bid, "status": store.status(bid)["status"] if status else None}


def retry(conn: redis.Redis, settings: Settings, bid: str) -> int:
    """Run the errored requests again (not canceled or expired ones, not lines refused at submit)."""
    store = Store.of(conn, settings)
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
        enqueue_chunks(conn, settings, bid, again, f"retry{int(clock.now() * 1000)}")
    return len(again)


