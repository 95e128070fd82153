"""Store a validated batch and enqueue its chunk jobs, all in one Redis transaction.

Either the whole batch lands (record, requests, results for refused lines, jobs) or none of it.
By default one bad line refuses the submission; `keep_valid` stores the refused lines as
`errored` results so nothing is silently dropped. What the submission asks for besides its
requests comes as one `SubmitOptions` (options.py), whoever submits.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from worker import clock
from worker.errors import OTBError
from worker.queues import chunk_jobs, queue_for
from worker.registry import Registry
from worker.native import goes_native
from worker.native import register as register_native
from worker.results import error_line
from worker.schemas import KIND_BY_URL
from worker.settings import Settings
from worker.store import Store

from .batchfile import Limits, Line, LineError, ParsedBatch, stream_batch
from .options import SubmitOptions


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


@dataclass
class Submission:
    """What a submit did: the batch's id, and the refused lines (kept as errored results, to show)."""

    batch_id: str
    errors: list[LineError]
    models: frozenset[str] = frozenset()  # of the valid lines


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex[:24]


def submit(conn: redis.Redis, settings: Settings, registry: Registry, raw_lines: Iterable[bytes],
           options: SubmitOptions = SubmitOptions(), *, batch_id: str | None = None) -> Submission:
    """Validate, store and enqueue in one pass over `raw_lines` (JSONL bytes, read once: stdin works).

    The batch appears at once: its record, input order, refused lines and jobs land in one
    transaction. Request bodies are written while the file is read, in pipelined slices with a short
    TTL (flat memory for big files; a file within one slice lands in the transaction alone); a submit
    that fails deletes them, and one that is killed leaves them to expire within `Store.STAGING_TTL`.
    Once a bad line means the file is refused (no `keep_valid`), nothing more is written.

    With `options.idempotency_key`, submitting the same requests with the same options again returns
    the first batch's id, writes nothing and enqueues nothing (the key is looked up before any body
    is written); the same key with different requests or options (a different --max-cost, say) is
    refused.

    `batch_id` names the batch (the HTTP API's own time-ordered id) instead of a random one: the
    caller makes sure no two submits run with one id at once, and passes an idempotency key so
    that a submit run again after a crash returns the batch instead of writing it twice.
    """
    store = Store.of(conn, settings)
    bid = batch_id or new_batch_id()
    key = _key_name(store, options.idempotency_key)
    repeat = key is not None and conn.exists(key)  # a repeat costs one GET and a read, not a copy of the batch
    staging = _Staging(conn, store, bid)
    landed = False
    try:
        parsed = _read(raw_lines, registry, settings, options, None if repeat else staging)
        if parsed.errors and (not options.keep_valid or not parsed.lines):
            raise SubmissionRejected(parsed.errors, any_valid=bool(parsed.lines))
        claim = None if key is None else _Claim(key, _digest(parsed, options), options.idempotency_key or "")
        models = frozenset(parsed.models)
        if repeat and claim is not None:
            return Submission(_repeated(conn, claim), parsed.errors, models)
        landed_id = _land(conn, store, settings, bid, parsed, options, staging, claim)
        landed = landed_id == bid  # else another submit with the same key won: this one's bodies go
        return Submission(landed_id, parsed.errors, models)
    except redis.ResponseError as exc:  # full (OOM), read-only, MISCONF: Redis answered, and said no
        raise refused(exc) from None
    finally:
        if staging.staged and not landed:
            _discard(store, bid)  # failed, refused, or another submit took the key: leave nothing behind


def submit_one(store: Store, settings: Settings, registry: Registry, raw_line: bytes, options: SubmitOptions,
               batch_id: str, redis_now: float, pipe: Any) -> None:
    """One request as batch `batch_id`, for a caller who waits on it (an HTTP call): the validation and the
    records of submit() (the same line checks, record, order, job or native line, and lifetimes), queued on
    `pipe`, a transaction the caller executes (redis-py's or redis.asyncio's: only commands are queued here,
    so a server sends it from its event loop), the only round trip. `redis_now` is Redis's clock as the
    caller knows it (an HTTP server reads TIME once a second, not per call). A bad line raises
    SubmissionRejected before anything is queued."""
    parsed = ParsedBatch()
    limits = Limits(settings.max_line_bytes, settings.max_lines)
    lines = list(stream_batch([raw_line], registry, parsed, drop_unsupported=options.drop_unsupported_params,
                              limits=limits, mode=options.resolved_mode(settings), endpoint=options.endpoint))
    if parsed.errors or not lines:
        raise SubmissionRejected(parsed.errors, any_valid=False)
    line = lines[0]
    native = [line.custom_id] if _goes_native(line, registry, settings, options) else []
    jobs = chunk_jobs(settings, batch_id, [] if native else [line.custom_id], "part")
    store.write_requests(pipe, batch_id, [(line.custom_id, _stored(line))])
    store.write_batch(pipe, batch_id, _record(batch_id, options, redis_now, settings), [], [line.custom_id], redis_now)
    if jobs:
        queue_for(store.conn, settings).enqueue_many(jobs, pipeline=pipe)
        store.add_jobs(pipe, batch_id, [j.job_id for j in jobs], with_record=True)
    register_native(pipe, store.conn, settings, batch_id, native)


def _stored(line: Line) -> dict[str, Any]:
    """A request as its batch stores it (Store.write_requests)."""
    return {"url": line.url, "body": line.body, "line": line.number}


def _read(raw_lines: Iterable[bytes], registry: Registry, settings: Settings, options: SubmitOptions,
          staging: "_Staging | None") -> ParsedBatch:
    """The one pass: validate every line and hand each good body to `staging` as it is read."""
    parsed = ParsedBatch()
    limits = Limits(settings.max_line_bytes, settings.max_lines)
    for line in stream_batch(raw_lines, registry, parsed, drop_unsupported=options.drop_unsupported_params,
                             limits=limits, mode=options.resolved_mode(settings), endpoint=options.endpoint):
        if staging is None:
            continue
        if parsed.errors and not options.keep_valid:
            staging.stop()  # the file is refused whatever follows: write nothing more
        else:
            staging.add(line)
            if _goes_native(line, registry, settings, options):
                staging.native.append(line.custom_id)
    return parsed


def _land(conn: redis.Redis, store: Store, settings: Settings, bid: str, parsed: ParsedBatch,
          options: SubmitOptions, staging: "_Staging", claim: "_Claim | None") -> str:
    """The transaction that makes the batch appear: record, order, refused lines, jobs, the last bodies
    and the idempotency key together (or the batch the key already names, if another submit won)."""
    rejected, rejected_numbers = _rejected_results(bid, parsed, options.metadata)
    numbered = [(ln.number, ln.custom_id) for ln in parsed.lines] + list(zip(rejected_numbers, (c for c, _ in rejected)))
    order = [cid for _, cid in sorted(numbered)]
    now = store.redis_now()  # windows and index ages on Redis's clock, the one every worker reads
    record = _record(bid, options, now, settings)
    native = set(staging.native)
    jobs = chunk_jobs(settings, bid, [ln.custom_id for ln in parsed.lines if ln.custom_id not in native], "part")
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                if claim is not None:  # the key and the batch land together, or neither does
                    pipe.watch(claim.name)
                    earlier = _earlier_batch(pipe.get(claim.name), claim)
                    if earlier is not None:
                        return earlier
                    pipe.multi()
                    pipe.set(claim.name, f"{bid} {claim.digest}", ex=settings.result_ttl)
                staging.write_rest(pipe)
                store.write_batch(pipe, bid, record, rejected, order, now)
                if jobs:
                    queue_for(conn, settings).enqueue_many(jobs, pipeline=pipe)
                    store.add_jobs(pipe, bid, [j.job_id for j in jobs], with_record=True)
                register_native(pipe, conn, settings, bid, staging.native)
                pipe.execute()
                return bid
            except redis.WatchError:
                continue  # someone submitted with the same key meanwhile: look again


class _Staging:
    """Request bodies on their way into Redis. Up to `slice_size` wait in memory and land with the
    batch; beyond that they are written in pipelined slices, invisible and short-lived (STAGING_TTL)
    until the batch lands, so a 100,000-line file never sits in memory whole."""

    def __init__(self, conn: redis.Redis, store: Store, bid: str, slice_size: int = 2000) -> None:
        self.conn, self.store, self.bid, self.slice_size = conn, store, bid, slice_size
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.staged = False  # some bodies are in Redis: a submit that does not land deletes them
        self.stopped = False
        self.native: list[str] = []  # lines for the providers' batch APIs (worker/native), not chunk jobs

    def add(self, line: Line) -> None:
        if self.stopped:
            return
        self.pending.append((line.custom_id, _stored(line)))
        if len(self.pending) >= self.slice_size:
            self.staged = True
            with self.conn.pipeline(transaction=False) as pipe:
                self.store.write_requests(pipe, self.bid, self.pending, staging=True)
                pipe.execute()
            self.pending.clear()

    def stop(self) -> None:
        """Write nothing more (the submit will be refused)."""
        self.stopped = True
        self.pending.clear()

    def write_rest(self, pipe: Any) -> None:
        """The bodies still in memory, on the landing transaction (which gives all of them the batch's lifetime)."""
        self.store.write_requests(pipe, self.bid, self.pending)


def _goes_native(line: Line, registry: Registry, settings: Settings, options: SubmitOptions) -> bool:
    """Does this valid line go to its provider's batch API (the batch's mode, its model, its window)?"""
    if line.body is None:
        return False
    kind = KIND_BY_URL[line.url]
    spec = registry.resolve_for(str(line.body.get("model")), kind)
    return goes_native(options.resolved_mode(settings), spec, kind, line.body, options.completion_window, settings,
                       budget=options.budgeted)


def refused(exc: redis.ResponseError) -> RedisRefused:
    """Why Redis did not take the batch, in one line (what it had taken is discarded by submit; submit_one's
    transaction wrote nothing)."""
    full = isinstance(exc, redis.exceptions.OutOfMemoryError) or "maxmemory" in str(exc)
    why = ("Redis is out of memory (maxmemory reached); free memory or raise maxmemory, then submit again"
           if full else f"Redis refused the batch: {exc}")
    return RedisRefused(f"{why}; nothing was enqueued")


def _discard(store: Store, bid: str) -> None:
    """Delete the bodies a submit that did not land had staged (a kill leaves them to their short TTL)."""
    try:
        store.discard(bid)
    except redis.RedisError:
        pass  # they expire within Store.STAGING_TTL


@dataclass(frozen=True)
class _Claim:
    """An idempotency key: its Redis key, the digest of the requests and options it is bound to, the key as given."""

    name: str
    digest: str
    key: str


def _key_name(store: Store, key: str | None) -> str | None:
    return None if key is None else store.keys.idempotency(hashlib.sha256(key.encode()).hexdigest())


def _digest(parsed: ParsedBatch, options: SubmitOptions) -> str:
    """The requests and every option that changes what the batch does, so the same key with another budget is refused too."""
    return hashlib.sha256(f"{parsed.digest}{options.fingerprint()}".encode()).hexdigest()


def _repeated(conn: redis.Redis, claim: _Claim) -> str:
    """The batch a repeat with a taken key names (this submit wrote nothing, so it cannot land now)."""
    earlier = _earlier_batch(conn.get(claim.name), claim)
    if earlier is None:
        raise IdempotencyConflict(f"idempotency key {claim.key!r} expired while this submission was read; "
                                  "submit again")
    return earlier


def _record(bid: str, options: SubmitOptions, redis_now: float, settings: Settings) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": bid,
        "status": "in_progress",
        "created_at": f"{clock.now():.3f}",
        "options": options.record_options(settings),
        "metadata": options.metadata,
    }
    if options.completion_window:
        record["expires_at"] = f"{redis_now + options.completion_window:.3f}"
    return record


def _earlier_batch(raw: bytes | str | None, claim: _Claim) -> str | None:
    """The batch an idempotency key already names, or None if it is free; refuses other requests."""
    if raw is None:
        return None
    earlier_bid, earlier_digest = (raw.decode() if isinstance(raw, bytes) else raw).split(" ", 1)
    if earlier_digest != claim.digest:
        raise IdempotencyConflict(
            f"idempotency key {claim.key!r} was already used for different requests or options (batch "
            f"{earlier_bid}; options: --max-cost, --completion-window, --metadata, --keep-valid, "
            "--drop-unsupported-params, --mode); use a new key for a new submission")
    return earlier_bid


def _rejected_results(bid: str, parsed: ParsedBatch, tags: Mapping[str, str]) -> tuple[list[tuple[str, str]], list[int]]:
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
