"""Cancel and retry a batch. Both keep every finished result; neither can lose or duplicate one."""

from __future__ import annotations

import json
from typing import Any

import redis

from worker import clock
from worker.errors import OTBError, RequestFailed
from worker.native import goes_native, poke as poke_native
from worker.native import register as register_native
from worker.queues import enqueue_chunks
from worker.recovery import close_unstarted
from worker.registry import Registry, current_registry
from worker.schemas import KIND_BY_URL
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


RETRIED = {False: ("errored",), True: ("errored", "canceled", "expired")}  # outcomes re-run, by --expired
REOPENED = ("completed", "expired", "cancelled")  # what `retry --expired` opens again (never a closing batch)


def retry(conn: redis.Redis, settings: Settings, bid: str, *, expired: bool = False,
          registry: Registry | None = None) -> int:
    """Run the errored requests again (with `expired`, also those that expired or were cancelled), never
    lines refused at submit; each in the route the batch's mode and window allow now.

    One chunk at a time, each in one transaction: its results are taken back and its lines queued (a
    chunk job, or the native route's todo list) together, so a retry killed part-way leaves every request
    with a result or a way to one, and running `otb retry` again picks up the rest. A cancel wins: once
    the batch is closing, no result is taken back (the script checks the status) and the retry stops.

    The window: a batch whose completion window has ended (or is inside its margin, where nothing new is
    sent native) gets a fresh one of its original length from the retry, so what runs again is not
    expired at once; otherwise it keeps the time it has left. With `expired`, an expired or cancelled
    batch opens again (in the first chunk's transaction).
    """
    store = Store.of(conn, settings)
    record = store.batch(bid) or {}
    status = record.get("status")
    allowed = ("completed", "in_progress") + (REOPENED if expired else ())
    if status not in allowed:
        hint = "" if expired or status not in REOPENED else "; `otb retry --expired` re-runs its expired and cancelled lines"
        raise OTBError(f"batch {bid} is {status}: only a running or completed batch is retried{hint}")
    lines = _retryable(store, bid, RETRIED[expired])
    if not lines:
        return 0
    registry = registry or current_registry(settings.registry_path)
    window_end = _window_end(store, settings, record)
    native = _native_ids(store, settings, registry, bid, record, [cid for cid, _ in lines])
    tag = f"retry{int(clock.now() * 1000)}"
    again = 0
    for n, start in enumerate(range(0, len(lines), settings.chunk_size)):
        if n and (store.batch(bid) or {}).get("status") not in ("completed", "in_progress"):
            break
        reopen = (window_end, list(REOPENED if expired else ("completed",))) if n == 0 else None
        again += _take_back(conn, settings, store, bid, lines[start : start + settings.chunk_size], native,
                            f"{tag}-{n}", reopen)
    return again


def _take_back(conn: redis.Redis, settings: Settings, store: Store, bid: str, part: list[tuple[str, str]],
               native: set[str], tag: str, reopen: tuple[str, list[str]] | None) -> int:
    """One transaction: (the batch reopened,) the part's results taken back, its lines queued on their
    route; how many were taken back (a line changed meanwhile, or a closing batch, keeps its result)."""
    with conn.pipeline(transaction=True) as pipe:
        if reopen is not None:
            store.scripts.reopen(batch=store.keys.batch(bid), open=store.keys.open, deadlines=store.keys.deadlines,
                                 expires_at=reopen[0], statuses=reopen[1], client=pipe)
        for cid, raw in part:
            store.uncommit(bid, cid, raw, json.loads(raw)["meta"]["outcome"], pipe=pipe)
        chunked = [cid for cid, _ in part if cid not in native]
        if chunked:
            enqueue_chunks(conn, settings, bid, chunked, tag, pipe=pipe)
        register_native(pipe, conn, settings, bid, [cid for cid, _ in part if cid in native])
        first = 0 if reopen is None else 1
        taken = pipe.execute()[first : first + len(part)]
    return sum(1 for got in taken if got == 1)


def _retryable(store: Store, bid: str, outcomes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(custom_id, result line) of requests ended with one of `outcomes` that have a body to send again."""
    ended = [(cid, raw) for cid, raw in store.raw_results(bid).items()
             if (json.loads(raw).get("meta") or {}).get("outcome") in outcomes]
    pipe = store.conn.pipeline(transaction=False)
    for cid, _ in ended:
        pipe.hexists(store.keys.requests(bid), cid)  # refused at submit: nothing to send
    return [item for item, has_body in zip(ended, pipe.execute()) if has_body]


def _window_end(store: Store, settings: Settings, record: dict[str, str]) -> str:
    """The window's new end (Redis clock) if the batch's has ended or is inside its margin, else ""."""
    window = json.loads(record.get("options") or "{}").get("completion_window")
    if not window or not record.get("expires_at"):
        return ""
    now = store.redis_now()
    if float(record["expires_at"]) - now > settings.window_margin(float(window)):
        return ""
    return f"{now + float(window):.3f}"


def _native_ids(store: Store, settings: Settings, registry: Registry, bid: str, record: dict[str, str],
                ids: list[str]) -> set[str]:
    """Those of `ids` the batch's mode and window send to their provider's batch API (as at submit)."""
    options = json.loads(record.get("options") or "{}")
    mode, window = str(options.get("mode") or "realtime"), options.get("completion_window")
    native: set[str] = set()
    for start in range(0, len(ids), 1000):
        for cid, request in store.load_requests(bid, ids[start:start + 1000]).items():
            if request is None:
                continue
            kind = KIND_BY_URL.get(request.get("url", ""), "")
            try:
                spec = registry.resolve_for(str(request["body"].get("model")), kind)
            except (RequestFailed, KeyError, AttributeError):
                continue  # the chunk ends it with the reason
            if goes_native(mode, spec, kind, request["body"], float(window) if window else None, settings,
                           budget=bool(options.get("max_cost_pico") or options.get("pool_max_pico"))):
                native.add(cid)
    return native
