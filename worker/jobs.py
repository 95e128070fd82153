"""RQ job functions: the only place that joins adapter, HTTP, retry, pricing and store.

One RQ job is a chunk of requests (ids only, JSON-serialised). The chunk runs its requests
concurrently on asyncio, each one: skip if already final -> resolve the model again -> translate ->
send with retries -> parse -> price -> commit once. A re-run of the chunk (crash, duplicate
execution) finds committed requests and neither calls nor bills them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import redis

from . import clock, http
from . import tokens
from .errors import BatchClosed, BudgetExceeded, InvalidRequest, MissingApiKey, Parked, ProtocolError, RequestFailed
from .keys import Keys
from .pricing import cost as price, from_pico, to_pico
from .ratelimit import Limiter, RateLimits, Scope, load_limits
from .recovery import Lease, claim_next, enqueue_chunks, finish_claimed, park
from .providers import ADAPTERS
from .providers.base import Parsed, Prepared, UpstreamCall, output_limit
from .registry import ModelSpec, Registry, current_registry
from .results import error_line, success_line
from .retry import RetryPolicy
from .schemas import KIND_BY_URL, EmbeddingRequest, Usage, chat_request, embedding_request
from .settings import Settings
from .store import Store

log = logging.getLogger("otb.worker")

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Set by `otb worker` / `otb run` before work starts; forked job processes inherit it."""
    global _settings
    _settings = settings


def current_settings() -> Settings:
    # A bare `rq worker` never called configure(): then the job is the edge and reads the env.
    return _settings if _settings is not None else Settings.from_env()


# Set in a work horse when its worker is asked to stop (SIGTERM): finish or checkpoint, then return.
DRAIN = threading.Event()


def run_chunk(batch_id: str, custom_ids: list[str]) -> dict[str, Any]:
    """RQ entry point: hold the chunk's lease, run it (and the chunks it claims from the queue while
    its own tail drains), then hand back what a graceful stop left undone and park what must wait."""
    from rq import get_current_job

    settings = current_settings()
    job = get_current_job()
    conn = job.connection if job is not None else redis.Redis.from_url(settings.redis_url or "")
    if job is None:
        return asyncio.run(process_chunk(conn, settings, batch_id, custom_ids, drain=DRAIN))
    store = Store.of(conn, settings)
    lease_key = store.keys.lease(job.id)
    with Lease(conn, lease_key, settings.lease_ttl):
        summary = asyncio.run(process_chunk(conn, settings, batch_id, custom_ids, drain=DRAIN,
                                            claim=lambda: claim_next(conn, settings, lease_key)))
    leftover, parked = summary.pop("leftover", {}), summary.pop("parked", {})
    for bid, ids in leftover.items():  # a stopping worker hands its unstarted requests back to the queue
        jobs = enqueue_chunks(conn, settings, bid, ids, f"continue{int(clock.now() * 1000)}")
        log.info("stopping: %d requests of %s handed back as %s", len(ids), bid, ", ".join(jobs))
    for bid, items in parked.items():
        park(conn, settings, bid, items)
    finish_claimed(conn, settings, summary.pop("claimed", []))
    summary["checkpointed"] = sum(len(ids) for ids in leftover.values())
    summary["parked"] = sum(len(items) for items in parked.values())
    return summary


async def process_chunk(
    conn: redis.Redis, settings: Settings, batch_id: str, custom_ids: list[str], *,
    drain: threading.Event | None = None, claim: Callable[[], tuple[str, str, list[str]] | None] | None = None,
) -> dict[str, Any]:
    """Run a chunk's open requests concurrently, `concurrency` at a time.

    When every request of the chunk has started and slots are free, `claim` takes the next chunk job
    from the queue and its requests join the same event loop, so calls stay in flight across chunk
    boundaries instead of draining to zero. With `drain` set mid-way, nothing new starts, calls in
    flight get `stop_grace` seconds, and the rest is reported as `leftover` (uncommitted, safe to re-run).
    """
    run = ChunkRun(conn, settings, drain or threading.Event())
    async with http.make_client(concurrency=settings.concurrency, timeout=settings.request_timeout) as client:
        run.base = Context(settings, current_registry(settings.registry_path), run.store, client,
                           RetryPolicy(settings.max_attempts, max_wait=settings.retry_max_wait), BatchGate(run.store, batch_id),
                           limiter=Limiter(conn, settings.key_prefix, settings.rate_burst),
                           limits=load_limits(settings.limits_path), writes=Writes(conn, settings.key_prefix))
        await run.work(batch_id, custom_ids, claim)
    return run.summary()


class ChunkRun:
    """One chunk job's run: its own requests and those of the chunks it claims, on one event loop.

    A finished request is forgotten at once: one run may claim chunk after chunk for half an hour, and
    keeping every task (as this once did) grew a work horse by ~0.8 KB per request and made each pass
    over them slower. Only counts per claimed job are kept.
    """

    def __init__(self, conn: redis.Redis, settings: Settings, stop: threading.Event) -> None:
        self.conn, self.settings, self.stop = conn, settings, stop
        self.store = Store.of(conn, settings)
        self.base: Context
        self.counts: dict[str, int] = {"skipped": 0, "succeeded": 0, "errored": 0}
        self.leftover: dict[str, list[str]] = {}
        self.contexts: dict[str, Context] = {}
        self.pending: set[asyncio.Future[None]] = set()
        self.open_of: dict[str | None, int] = {}  # claimed job id (None: the chunk itself) -> requests not done
        self.finished: list[str] = []  # claimed jobs whose requests are all done, not yet marked so
        self.waiting = 0  # launched, not yet past the concurrency gate
        self.gate = asyncio.Semaphore(settings.concurrency)
        self.changed = asyncio.Event()

    async def work(self, batch_id: str, custom_ids: list[str],
                   claim: Callable[[], tuple[str, str, list[str]] | None] | None) -> None:
        self.launch(None, batch_id, custom_ids)
        claim_until = time.monotonic() + self.settings.job_timeout / 2  # stay well inside RQ's job timeout
        quiet_until = 0.0
        while True:
            self.changed.clear()
            if self.stop.is_set() and self.pending:
                await _drain(list(self.pending), self.settings.stop_grace)
                break
            if self.finished:  # a claimed chunk is done: say so now, not when this whole run ends
                done, self.finished = self.finished, []
                await asyncio.to_thread(finish_claimed, self.conn, self.settings, done)
            now = time.monotonic()
            if claim and self.waiting == 0 and len(self.pending) < self.settings.concurrency \
                    and not self.stop.is_set() and now < claim_until and now >= quiet_until:
                got = await asyncio.to_thread(claim)
                if got is not None:
                    self.launch(*got)
                    continue
                quiet_until = now + 0.5  # the queue is empty: do not ask on every tick
            if not self.pending and not self.finished:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.05)
        await asyncio.gather(*self.pending, return_exceptions=True)

    def launch(self, job_id: str | None, bid: str, ids: list[str]) -> None:
        """Start the open requests of `ids`; a request already committed is skipped, never called again."""
        ctx = self.contexts.get(bid) or self.contexts.setdefault(bid, _batch_context(self.base, self.store, bid))
        done = self.store.done_ids(bid, ids)
        self.counts["skipped"] += len(done)
        todo = [cid for cid in ids if cid not in done]
        records = _load_records(self.store, bid, todo)
        self.open_of[job_id] = len(todo)
        self.waiting += len(todo)
        for cid in todo:
            task = asyncio.ensure_future(self.one(ctx, bid, cid, records[cid]))
            self.pending.add(task)
            task.add_done_callback(functools.partial(self._landed, job_id))
        if not todo:
            self._landed(job_id, None)

    def _landed(self, job_id: str | None, task: asyncio.Future[None] | None) -> None:
        if task is not None:
            self.pending.discard(task)
            self.open_of[job_id] -= 1
        if self.open_of[job_id] <= 0:
            del self.open_of[job_id]
            if job_id is not None:
                self.finished.append(job_id)
        self.changed.set()

    async def one(self, ctx: "Context", bid: str, cid: str, record: "Record") -> None:
        async with self.gate:
            self.waiting -= 1
            if self.stop.is_set():
                self.leftover.setdefault(bid, []).append(cid)
                return
            try:
                outcome = await _until_done(ctx, bid, cid, record)
            except asyncio.CancelledError:
                self.leftover.setdefault(bid, []).append(cid)  # cut off by the stop grace: runs again later
                raise
            except Exception:  # not even its error could be stored: say so; a re-run of the chunk retries it
                log.exception("request %s/%s has no result", bid, cid)
                outcome = "unstored"
            self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def summary(self) -> dict[str, Any]:
        """Counts by outcome, plus what run_chunk must still do: hand back, park, mark claimed chunks done."""
        return {**self.counts, "leftover": self.leftover,
                "parked": {bid: ctx.parked for bid, ctx in self.contexts.items() if ctx.parked},
                "claimed": [job for job in self.open_of if job is not None] + self.finished}


Record = dict[str, Any] | RequestFailed | None  # a stored request, why it cannot be read, or None if it is gone


def _load_records(store: Store, bid: str, ids: list[str]) -> dict[str, Record]:
    """The stored requests; one that cannot be decoded (nested too deeply, not JSON) fails only itself."""
    try:
        return dict(store.load_requests(bid, ids))
    except (ValueError, RecursionError):
        pass
    records: dict[str, Record] = {}
    for cid in ids:
        try:
            records.update(store.load_requests(bid, [cid]))
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
            records[cid] = InvalidRequest(f"the stored request cannot be read ({reason}); it was not sent")
    return records


async def _until_done(ctx: "Context", batch_id: str, custom_id: str, record: Record) -> str:
    """process_request, started over when Redis refused a write before anything was paid (a commit
    after a paid call retries on its own, in _store). New calls wait while Redis refuses writes."""
    while True:
        await ctx.writes.ready()
        try:
            return await process_request(ctx, batch_id, custom_id, record)
        except redis.RedisError as exc:
            if not refused_write(exc):
                raise
            ctx.writes.refused(exc)


def _batch_context(base: "Context", store: Store, batch_id: str) -> "Context":
    """Per-batch state (open/closed, options, tags, parked) over the process's shared client and limits."""
    options, tags = _batch_options(store, batch_id)
    return replace(base, batch=BatchGate(store, batch_id), options=options, tags=tags, parked=[])


async def _drain(pending: list[asyncio.Future[Any]], grace: float) -> None:
    log.warning("stop requested: letting calls in flight finish (up to %.0f s)", grace)
    _, late = await asyncio.wait(pending, timeout=grace)
    for task in late:
        task.cancel()


class BatchGate:
    """Is the batch still open? Read at most once a second, so cancel and expiry reach running chunks fast.

    The completion window is judged on Redis's clock (TIME, read with the status), never this
    machine's: a worker whose clock runs hours ahead must not expire a batch early, nor one behind late.
    A batch whose record is gone counts as expired: its requests are not sent (no result could be kept).
    """

    def __init__(self, store: Store, batch_id: str) -> None:
        self.store, self.batch_id = store, batch_id
        self._read_at = -1.0
        self._status: str | None = None
        self._expires_at: float | None = None
        self._redis_now = 0.0

    def closed_code(self) -> str | None:
        now = time.monotonic()
        if now - self._read_at >= 1.0:
            pipe = self.store.conn.pipeline(transaction=False)
            pipe.hmget(self.store.keys.batch(self.batch_id), "status", "expires_at")
            pipe.time()
            (status, expires), (sec, usec) = pipe.execute()
            self._status = status.decode() if isinstance(status, bytes) else status
            self._expires_at = float(expires) if expires else None
            self._redis_now, self._read_at = sec + usec / 1e6, now
        redis_now = self._redis_now + (now - self._read_at)
        if self._status is None:  # the record is gone (expired, evicted, lost): nothing to send for
            return "batch_expired"
        if self._status in ("cancelling", "cancelled"):
            return "batch_cancelled"
        if self._status == "in_progress" and self._expires_at is not None and redis_now >= self._expires_at:
            self._status = self.store.close(self.batch_id, "expiring")  # the window ended: the batch ends expired
        if self._status in ("expiring", "expired"):
            return "batch_expired"
        return None


@dataclass
class Context:
    settings: Settings
    registry: Registry
    store: Store
    client: httpx.AsyncClient
    policy: RetryPolicy
    batch: BatchGate
    writes: "Writes"  # does Redis take writes? shared by every request of the run
    options: dict[str, Any] = field(default_factory=dict)
    limiter: Limiter | None = None
    limits: dict[str, RateLimits] = field(default_factory=dict)
    parked: list[tuple[str, float, str]] = field(default_factory=list)  # (custom_id, resume in s, why)
    tags: dict[str, str] = field(default_factory=dict)  # the batch's metadata, on every result
    gates: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    def caps(self, spec: ModelSpec) -> list[asyncio.Semaphore]:
        """The in-flight caps a call to `spec` must pass besides the process-wide one."""
        wanted = [(f"model:{spec.id}", self.settings.concurrency_per_model),
                  (f"provider:{spec.provider}", self.settings.concurrency_per_provider)]
        return [self.gates.setdefault(name, asyncio.Semaphore(limit)) for name, limit in wanted if limit > 0]
    def scope(self, spec: ModelSpec, api_key: str) -> Scope:
        limits = self.limits.get(spec.id) or spec.limits or RateLimits()
        return Scope.of(spec.provider, spec.upstream, api_key, limits)


@dataclass
class Attempts:
    count: int = 0


async def process_request(ctx: Context, batch_id: str, custom_id: str, record: Record) -> str:
    """Run one request to a final, committed result. Returns its outcome, or 'skipped' if another
    execution committed it first (the chunk skipped committed requests at its start; the commit is
    once-only, so no per-request check is needed on this hot path).

    Whatever goes wrong ends this request alone, with a clear error: nothing a request holds can fail
    its chunk and the other requests in it. The one exception is Redis refusing a write before the
    call (_until_done waits and starts over; nothing was paid yet).
    """
    attempts = Attempts()
    meta: dict[str, Any] = {}
    held = False
    try:
        if record is None:
            raise InvalidRequest(f"request {custom_id!r} is missing from the batch (expired or deleted)")
        if isinstance(record, RequestFailed):
            raise record
        meta["model"] = record["body"].get("model")
        meta["tags"] = {**ctx.tags, **(record.get("tags") or {})}
        closed = ctx.batch.closed_code()
        if closed:
            raise BatchClosed(closed)
        kind = KIND_BY_URL[record["url"]]
        model_id = record["body"].get("model")
        spec = ctx.registry.resolve_for(model_id, kind)
        adapter = ADAPTERS[spec.provider]
        prepared = _prepare(ctx, adapter, spec, kind, record["body"])
        meta["dropped_params"] = prepared.dropped_params
        if prepared.notes:
            meta["notes"] = prepared.notes
        held = await _hold_budget(ctx, batch_id, custom_id, spec, kind, record["body"], prepared)
        parsed = await _execute(ctx, adapter, spec, kind, record["body"], prepared, attempts)
        billed = _billed_spec(ctx.registry, spec, parsed)
        meta["billed_model"] = billed.id
        meta["attempts"] = attempts.count
        charge = price(parsed.usage, billed, _today())
        line = success_line(
            batch_id, custom_id, parsed.body, request_id=parsed.request_id, usage=parsed.usage, cost=charge, meta=meta
        )
        # spend is counted even if this commit loses; the commit waits out a Redis that refuses writes
        won = await _store(ctx, batch_id, custom_id, line, "succeeded")
        return "succeeded" if won else "skipped"
    except Parked as park:
        ctx.parked.append((custom_id, park.resume_in, park.reason))
        return "parked"
    except RequestFailed as error:
        return await _fail(ctx, batch_id, custom_id, error, meta, attempts)
    except Exception as exc:
        if isinstance(exc, redis.RedisError) and refused_write(exc):
            raise  # before the call: _until_done waits for Redis, then starts this request over
        log.exception("request %s/%s failed inside the worker", batch_id, custom_id)
        return await _fail(ctx, batch_id, custom_id, _internal(exc), meta, attempts)
    finally:
        if held:  # after the commit, so the cost lands before the hold goes; also when parked or cut off
            _release_after_commit(ctx, batch_id, custom_id)


async def _fail(ctx: Context, batch_id: str, custom_id: str, error: RequestFailed, meta: dict[str, Any],
                attempts: "Attempts") -> str:
    """Commit the request's error as its result."""
    meta["attempts"] = attempts.count
    log.info("request %s/%s errored: %s", batch_id, custom_id, error.code)
    line = error_line(batch_id, custom_id, error, meta)
    outcome = line["meta"]["outcome"]
    won = await _store(ctx, batch_id, custom_id, line, outcome)
    return outcome if won else "skipped"


def _internal(exc: Exception) -> RequestFailed:
    """Our own failure on one request, as one clear line (never retried: it would fail the same way)."""
    if isinstance(exc, RecursionError):
        return InvalidRequest("the request is nested too deeply to process")
    return RequestFailed(f"the worker failed on this request: {type(exc).__name__}: {exc}",
                         code="internal_error", type="api_error", status_code=500)


async def _store(ctx: Context, batch_id: str, custom_id: str, line: dict[str, Any], outcome: str) -> bool:
    """Commit a result (off the event loop). While Redis refuses the write, keep the line and try again:
    a result is done only once stored, and dropping it would lose a paid answer and leave its batch open."""
    delay = 0.2
    while True:
        try:
            won = await asyncio.to_thread(ctx.store.commit, batch_id, custom_id, line, outcome)
        except redis.RedisError as exc:
            if not refused_write(exc):
                raise
            ctx.writes.refused(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        ctx.writes.taken()
        return won


def _release_after_commit(ctx: Context, batch_id: str, custom_id: str) -> None:
    """Free the budget hold; a Redis error here must not run a stored request again: the hold lapses with
    its holder's lease."""
    try:
        _release_budget(ctx, batch_id, custom_id)
    except redis.RedisError as exc:
        log.warning("budget hold of %s/%s not released (%s); it lapses with this chunk's lease", batch_id, custom_id, exc)


def refused_write(exc: BaseException) -> bool:
    """Redis will take this write later, unchanged: it is full (maxmemory), read-only, loading, cannot
    persist (MISCONF) or cannot be reached."""
    return isinstance(exc, (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
                            redis.exceptions.BusyLoadingError, redis.ConnectionError, redis.TimeoutError)) \
        or str(exc).startswith(("MISCONF", "OOM"))


class Refusals:
    """Tells the log that Redis refuses writes (once a minute at most: near its memory limit it flaps
    between refusing and taking them) and, at INFO, when it takes them again."""

    def __init__(self, waiting: str) -> None:
        self.waiting = waiting  # what we do meanwhile, for the message
        self.since: float | None = None
        self._said = -60.0

    def refused(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self._said >= 60:
            self._said = now
            log.error("Redis refuses writes (%s: %s): %s", type(exc).__name__, exc, self.waiting)

    def taken(self) -> None:
        if self.since is not None:
            log.info("Redis takes writes again after %.1f s", time.monotonic() - self.since)
            self.since = None


class Writes(Refusals):
    """Does Redis take writes? Once one is refused, no new call starts until a write succeeds again:
    an answer that cannot be stored is paid for nothing. One waiter at a time probes with a tiny SET."""

    def __init__(self, conn: redis.Redis, prefix: str) -> None:
        super().__init__("no new calls until it takes them again; answers in hand wait to be stored")
        self.conn, self.probe_key = conn, Keys(prefix).writable
        self._probing = asyncio.Lock()

    async def ready(self) -> None:
        """Return at once while writes work; otherwise once a probe write succeeds."""
        delay = 0.2
        while self.since is not None:
            async with self._probing:
                if self.since is None:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await asyncio.to_thread(self.conn.set, self.probe_key, "1", px=10_000)
                except redis.RedisError as exc:
                    if not refused_write(exc):
                        raise
                    continue
                self.taken()


async def _hold_budget(ctx: Context, batch_id: str, custom_id: str, spec: ModelSpec, kind: str,
                       body: dict[str, Any], prepared: Prepared) -> bool:
    """With --max-cost: hold this call's worst case (its input, all of its output limit) before sending.

    A call that fits once the calls in flight settle (their holds become their real, usually much
    smaller, cost) waits for them; only a call that can no longer fit, because what was spent plus
    its worst case passes the budget, is refused. Returns whether a hold was taken (to release).
    """
    max_pico = ctx.options.get("max_cost_pico")
    if not max_pico:
        return False
    if kind == "chat":
        worst = Usage(input_tokens=tokens.chat_input_tokens(body),
                      output_tokens=output_limit(prepared, spec.rules.max_output_tokens))
    else:
        worst = Usage(input_tokens=tokens.embedding_input_tokens(body))
    worst_cost = price(worst, spec, _today()).total
    settings = ctx.settings
    hold_for = (settings.request_timeout + settings.retry_max_wait) * settings.max_attempts + 60
    lease, pause = _lease_key(ctx.store), 0.02
    while True:
        held = await asyncio.to_thread(ctx.store.reserve, batch_id, custom_id, to_pico(worst_cost), int(max_pico),
                                       lease=lease, hold_for=hold_for)
        if held == 1:
            return True
        if held == 0:
            raise BudgetExceeded(f"not sent: the cost so far plus this request's worst case (${worst_cost}) "
                                 f"would pass the batch budget of ${from_pico(int(max_pico))}")
        closed = ctx.batch.closed_code()
        if closed:
            raise BatchClosed(closed)
        await asyncio.sleep(pause)  # calls in flight hold the rest of the budget: wait for them to settle
        pause = min(pause * 2, 0.5)


def _lease_key(store: Store) -> str:
    """The lease of the chunk job this process runs: a hold counts only while its holder is alive."""
    from rq import get_current_job

    job = get_current_job()
    return store.keys.lease(job.id) if job is not None else ""


def _release_budget(ctx: Context, batch_id: str, custom_id: str) -> None:
    ctx.store.release(batch_id, custom_id)


def _prepare(ctx: Context, adapter: Any, spec: ModelSpec, kind: str, body: dict[str, Any]) -> Prepared:
    api_version = ctx.registry.api_version(spec.provider)
    if kind == "chat":
        drop = bool(ctx.options.get("drop_unsupported_params"))
        return adapter.prepare_chat(chat_request(body), spec, api_version=api_version, drop_unsupported=drop)
    return adapter.prepare_embeddings(embedding_request(body), spec, api_version=api_version)


async def _execute(
    ctx: Context, adapter: Any, spec: ModelSpec, kind: str, body: dict[str, Any], prepared: Prepared,
    attempts: Attempts,
) -> Parsed:
    key = ctx.settings.api_key(spec.provider)
    if not key:
        var = adapter.API_KEY_ENV
        raise MissingApiKey(f"{var} is not set for the worker; export {var} to call {spec.provider} models")
    auth = adapter.auth_headers(key)
    base = ctx.settings.base_url(spec.provider)
    scope = ctx.scope(spec, key)
    if kind == "chat":
        need = (tokens.chat_input_tokens(body), tokens.output_guess(body))
        async with contextlib.AsyncExitStack() as caps:
            for gate in ctx.caps(spec):
                await caps.enter_async_context(gate)
            data, request_id = await _call(ctx, adapter, base, prepared.calls[0], auth, attempts, scope, need)
        parsed = adapter.parse_chat(data, spec, request_id=request_id)
    else:
        request = EmbeddingRequest.model_validate(body)
        per_call = max(tokens.embedding_input_tokens(body) // len(prepared.calls), 1)
        need = (per_call * len(prepared.calls), 0)
        answers = [(await _call(ctx, adapter, base, call, auth, attempts, scope, (per_call, 0)))[0]
                   for call in prepared.calls]
        token_count = await _count_tokens(ctx, adapter, spec, request, base, auth)
        parsed = adapter.parse_embeddings(answers, request, spec, token_count=token_count)
    if ctx.limiter is not None:  # the estimate becomes the real count for the shared buckets
        try:
            ctx.limiter.correct(scope, need[0], parsed.usage.prompt_tokens, need[1], parsed.usage.output_tokens)
        except redis.RedisError as exc:  # paid already: the request must not start over for an estimate
            log.warning("rate-limit buckets of %s not corrected: %s", spec.id, exc)
    return parsed


async def _count_tokens(ctx: Context, adapter: Any, spec: ModelSpec, request: EmbeddingRequest, base: str, auth: dict[str, str]) -> int | None:
    """Exact input tokens from countTokens; None (the adapter then estimates, and says so) if it fails."""
    call = adapter.prepare_count_tokens(request, spec, api_version=ctx.registry.api_version(spec.provider))
    try:
        data, _ = await _call(ctx, adapter, base, call, auth, Attempts(), None, (0, 0))
        return adapter.parse_count_tokens(data)
    except RequestFailed as exc:
        log.warning("countTokens failed for %s (%s); estimating", spec.id, exc.code)
        return None


async def _call(
    ctx: Context, adapter: Any, base: str, call: UpstreamCall, auth: dict[str, str], attempts: Attempts,
    scope: Scope | None, need: tuple[int, int],
) -> tuple[dict[str, Any], str | None]:
    """Send one call within the shared rate limits, retrying what is retryable.

    Returns the decoded JSON of the 2xx answer and its request id. A 429/529 cools the model down
    for every worker; a wait longer than `retry_max_wait` parks the request instead of sleeping.
    """
    tries = 0
    while True:
        await ctx.writes.ready()  # no call while its answer could not be stored
        if scope is not None and ctx.limiter is not None:
            ahead = await ctx.limiter.acquire(scope, need[0], need[1], max_wait=ctx.policy.max_wait)
            if ahead:
                raise Parked(ahead, f"{scope.name.rsplit(':', 1)[0]} is cooling down or at its rate limit")
        tries += 1
        attempts.count += 1
        try:
            answer = await http.send(ctx.client, base, call, auth)
            if 200 <= answer.status < 300:
                data = answer.json()
                if not isinstance(data, dict):
                    raise ProtocolError("provider answered with JSON that is not an object")
                return data, answer.headers.get("request-id") or answer.headers.get("x-request-id")
            raise adapter.parse_error(answer.status, answer.headers, answer.content)
        except RequestFailed as error:
            if error.status_code in (429, 529) and error.retryable:
                _cool_down(ctx, scope, error)
                if error.retry_after is not None and error.retry_after > ctx.policy.max_wait:
                    raise Parked(error.retry_after, f"provider asked to wait {error.retry_after:.0f} s: {error.message}") from error
            if not ctx.policy.should_retry(error, tries):
                raise
            if scope is not None and ctx.limiter is not None and error.status_code in (429, 529):
                continue  # the shared cool-down is the wait; acquire() sleeps it out
            await ctx.policy.pause(tries, error.retry_after)


def _cool_down(ctx: Context, scope: Scope | None, error: RequestFailed) -> None:
    """Slow the model for every worker at once: the provider's wait, else a short backoff."""
    if scope is None or ctx.limiter is None:
        return
    seconds = error.retry_after if error.retry_after is not None else (2.0 if error.status_code == 529 else 1.0)
    ctx.limiter.cool_down(scope, seconds, f"{error.status_code} {error.code}")


def _billed_spec(registry: Registry, spec: ModelSpec, parsed: Parsed) -> ModelSpec:
    """Google may serve a deprecated id with another model; bill what actually ran."""
    served = parsed.upstream_model
    if not served or served == spec.upstream:
        return spec
    other = registry.by_upstream(spec.provider, served)
    return other if other is not None and other.pricing is not None else spec


def _batch_options(store: Store, batch_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The submission's options and metadata (the tags every result of the batch carries)."""
    raw = store.batch(batch_id) or {}
    return json.loads(raw.get("options") or "{}"), json.loads(raw.get("metadata") or "{}")


def _today() -> dt.date:
    return clock.today()
