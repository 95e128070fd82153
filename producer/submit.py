"""Store a validated batch and enqueue its chunk jobs, all in one Redis transaction.

Either the whole batch lands (record, requests, results for refused lines, jobs) or none of it.
By default one bad line refuses the submission; `keep_valid` stores the refused lines as
`errored` results so nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from decimal import Decimal
from collections.abc import Callable, Iterator
from typing import Any

import redis

from worker import clock
from worker.errors import OTBError
from worker.pricing import to_pico
from worker.results import error_line
from worker.recovery import chunk_jobs, queue_for
from worker.settings import Settings
from worker.store import Store

from .batchfile import Line, LineError, ParsedBatch

class SubmissionRejected(OTBError):
    """Some lines are bad and the caller did not ask to keep the good ones."""

    def __init__(self, errors: list[LineError], *, any_valid: bool = True) -> None:
        self.errors = errors
        noun = "line is" if len(errors) == 1 else "lines are"
        if len(errors) == 1 and errors[0].number == 0:
            message = "the batch is empty: it has no request lines; nothing was enqueued"
        elif not any_valid:
            message = f"{len(errors)} {noun} invalid and no line is valid; nothing was enqueued (fix them)"
        else:
            message = (f"{len(errors)} {noun} invalid; nothing was enqueued "
                       "(fix them, or pass --keep-valid to enqueue the valid lines and record these as errored)")
        super().__init__(message)


class IdempotencyConflict(OTBError):
    pass


class RedisRefused(OTBError):
    """Redis would not store the batch (full, read-only); nothing of it is left behind."""


def submit(
    conn: redis.Redis,
    settings: Settings,
    parsed: ParsedBatch,
    *,
    keep_valid: bool = False,
    drop_unsupported_params: bool = False,
    metadata: dict[str, str] | None = None,
    chunk_size: int | None = None,
    completion_window: float | None = None,
    idempotency_key: str | None = None,
    max_cost: Decimal | None = None,
    bodies: Callable[[], Iterator[Line]] | None = None,
) -> str:
    """Store and enqueue; returns the batch id.

    The batch appears at once: its record, input order, refused lines and jobs land in one
    transaction. Request bodies come first: from `parsed` when it holds them, else streamed from
    `bodies()` in pipelined slices (flat memory for big files); a submit that fails deletes them,
    and one that is killed leaves them to expire within `Store.STAGING_TTL`. With `idempotency_key`,
    submitting the same requests with the same options again returns the first batch's id, writes
    nothing and enqueues nothing (the key is looked up before any body is written); the same key
    with different requests or options (a different --max-cost, say) is refused.
    """
    if parsed.errors and (not keep_valid or not parsed.lines):
        raise SubmissionRejected(parsed.errors, any_valid=bool(parsed.lines))
    store = Store.of(conn, settings)
    bid = "batch_" + uuid.uuid4().hex[:24]
    claim = _claim(store, bid, idempotency_key, parsed, keep_valid, drop_unsupported_params, metadata,
                   completion_window, max_cost)
    if claim is not None:  # before any body is written: a repeat costs one GET, not a copy of the batch
        earlier = _earlier_batch(conn.get(claim[0]), claim)
        if earlier is not None:
            return earlier
    rejected, rejected_numbers = _rejected_results(bid, parsed, metadata or {})
    numbered = [(ln.number, ln.custom_id) for ln in parsed.lines] + list(zip(rejected_numbers, (c for c, _ in rejected)))
    order = [cid for _, cid in sorted(numbered)]
    now = store.redis_now()  # windows and index ages on Redis's clock, the one every worker reads
    record = _record(bid, keep_valid, drop_unsupported_params, metadata, completion_window, max_cost, now)
    streamed = any(ln.body is None for ln in parsed.lines)
    landed = False
    try:
        if streamed:
            if bodies is None:
                raise ValueError("parsed lines carry no bodies: pass bodies= to read them again")
            _stream_requests(conn, store, bid, bodies())
        jobs = chunk_jobs(settings, bid, [ln.custom_id for ln in parsed.lines], "part", chunk_size)
        with conn.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if claim is not None:  # the key and the batch land together, or neither does
                        pipe.watch(claim[0])
                        earlier = _earlier_batch(pipe.get(claim[0]), claim)
                        if earlier is not None:
                            return earlier
                        pipe.multi()
                        pipe.set(claim[0], claim[1], ex=settings.result_ttl)
                    if not streamed:
                        store.write_requests(pipe, bid, [(ln.custom_id, _request(ln)) for ln in parsed.lines])
                    store.write_batch(pipe, bid, record, rejected, order, now)
                    if jobs:
                        queue_for(conn, settings).enqueue_many(jobs, pipeline=pipe)
                        store.add_jobs(pipe, bid, [j.job_id for j in jobs])
                    pipe.execute()
                    landed = True
                    return bid
                except redis.WatchError:
                    continue  # someone submitted with the same key meanwhile: look again
    except redis.ResponseError as exc:  # full (OOM), read-only, MISCONF: Redis answered, and said no
        raise _refused(exc) from None
    finally:
        if streamed and not landed:
            _discard(store, bid)  # failed, refused, or another submit took the key: leave nothing behind


def _discard(store: Store, bid: str) -> None:
    """Delete the bodies a submit that did not land had staged (a kill leaves them to their short TTL)."""
    try:
        store.discard(bid)
    except redis.RedisError:
        pass  # they expire within Store.STAGING_TTL


def _claim(store: Store, bid: str, key: str | None, parsed: ParsedBatch, keep_valid: bool, drop: bool,
           metadata: dict[str, str] | None, window: float | None, max_cost: Decimal | None) -> tuple[str, str, str] | None:
    """(redis key, "bid digest", key) for an idempotency key: the digest covers the requests and every
    option that changes what the batch does, so the same key with another budget is refused too."""
    if key is None:
        return None
    name = store.keys.idempotency(hashlib.sha256(key.encode()).hexdigest())
    options = json.dumps([keep_valid, drop, metadata or {}, window, str(max_cost) if max_cost is not None else None],
                         sort_keys=True)
    digest = hashlib.sha256(f"{parsed.digest}{options}".encode()).hexdigest()
    return name, f"{bid} {digest}", key


def _request(line: Line) -> dict[str, Any]:
    return {"url": line.url, "body": line.body, "line": line.number}


def _stream_requests(conn: redis.Redis, store: Store, bid: str, lines: Iterator[Line], slice_size: int = 2000) -> None:
    """Write request bodies in pipelined slices, so a 100,000-line file never sits in memory whole."""
    batch: list[tuple[str, dict[str, Any]]] = []
    for line in lines:
        batch.append((line.custom_id, _request(line)))
        if len(batch) >= slice_size:
            _flush(conn, store, bid, batch)
    _flush(conn, store, bid, batch)


def _refused(exc: redis.ResponseError) -> RedisRefused:
    """Why Redis did not take the batch, in one line (what it had taken is discarded by submit)."""
    full = isinstance(exc, redis.exceptions.OutOfMemoryError) or "maxmemory" in str(exc)
    why = ("Redis is out of memory (maxmemory reached); free memory or raise maxmemory, then submit again"
           if full else f"Redis refused the batch: {exc}")
    return RedisRefused(f"{why}; nothing was enqueued")


def _flush(conn: redis.Redis, store: Store, bid: str, batch: list[tuple[str, dict[str, Any]]]) -> None:
    if batch:
        with conn.pipeline(transaction=False) as pipe:
            store.write_requests(pipe, bid, batch, staging=True)
            pipe.execute()
        batch.clear()


def _record(bid: str, keep_valid: bool, drop: bool, metadata: dict[str, str] | None, completion_window: float | None,
            max_cost: Decimal | None, redis_now: float) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": bid,
        "status": "in_progress",
        "created_at": f"{clock.now():.3f}",
        "options": {"drop_unsupported_params": drop, "keep_valid": keep_valid,
                    **({"max_cost_pico": to_pico(max_cost)} if max_cost is not None else {})},
        "metadata": metadata or {},
    }
    if max_cost is not None:
        record["max_cost_pico"] = to_pico(max_cost)
    if completion_window:
        record["expires_at"] = f"{redis_now + completion_window:.3f}"
    return record


def _earlier_batch(raw: bytes | str | None, claim: tuple[str, str, str]) -> str | None:
    """The batch an idempotency key already names, or None if it is free; refuses other requests."""
    if raw is None:
        return None
    earlier_bid, earlier_digest = (raw.decode() if isinstance(raw, bytes) else raw).split(" ", 1)
    if earlier_digest != claim[1].split(" ", 1)[1]:
        raise IdempotencyConflict(
            f"idempotency key {claim[2]!r} was already used for different requests or options (batch "
            f"{earlier_bid}; options: --max-cost, --completion-window, --metadata, --keep-valid, "
            "--drop-unsupported-params); use a new key for a new submission")
    return earlier_bid


def _rejected_results(bid: str, parsed: ParsedBatch, tags: dict[str, str]) -> tuple[list[tuple[str, str]], list[int]]:
    """Errored result lines for refused lines, keyed so they never collide with a valid custom_id."""
    taken = {ln.custom_id for ln in parsed.lines}
    out: list[tuple[str, str]] = []
    for err in parsed.errors:
        cid = err.custom_id if err.custom_id and err.custom_id not in taken else f"line-{err.number}"
        taken.add(cid)
        meta = {"model": err.model, "tags": tags, "line": err.number, "attempts": 0}
        line = error_line(bid, cid, err.error, meta)
        out.append((cid, json.dumps(line, separators=(",", ":"))))
    return out, [err.number for err in parsed.errors]
