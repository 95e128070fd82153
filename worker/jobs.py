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
from .pricing import cost as price, from_pico, to_pico
from .ratelimit import Limiter, RateLimits, Scope, load_limits
from .recovery import Lease, claim_next, enqueue_chunks, finish_claimed, park
from .providers import ADAPTERS
from .providers.base import Parsed, Prepared, UpstreamCall, output_limit
from .registry import ModelSpec, Registry, load_registry
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
    registry = load_registry(settings.registry_path)  # again: the registry may have changed since submit
    store = Store.of(conn, settings)
    summary: dict[str, Any] = {"skipped": 0, "succeeded": 0, "errored": 0}
    leftover: dict[str, list[str]] = {}
    stop = drain or threading.Event()
    contexts: dict[str, Context] = {}
    claimed: list[str] = []
    async with http.make_client(concurrency=settings.concurrency, timeout=settings.request_timeout) as client:
        base = Context(settings, registry, store, client, RetryPolicy(settings.max_attempts, max_wait=settings.retry_max_wait),
                       BatchGate(store, batch_id), limiter=Limiter(conn, settings.key_prefix, settings.rate_burst),
                       limits=load_limits(settings.limits_path))
        gate = asyncio.Semaphore(settings.concurrency)
        waiting = 0  # launched, not yet past the gate

        async def one(ctx: Context, bid: str, cid: str, record: dict[str, Any] | None) -> None:
            nonlocal waiting
            async with gate:
                waiting -= 1
                if stop.is_set():
                    leftover.setdefault(bid, []).append(cid)
                    return
                try:
                    outcome = await process_request(ctx, bid, cid, record)
                except asyncio.CancelledError:
                    leftover.setdefault(bid, []).append(cid)  # cut off by the stop grace: runs again later
                    raise
                summary[outcome] = summary.get(outcome, 0) + 1

        def launch(bid: str, ids: list[str]) -> list[asyncio.Task[None]]:
            nonlocal waiting
            ctx = contexts.get(bid) or contexts.setdefault(bid, _batch_context(base, store, bid))
            done = store.done_ids(bid, ids)
            summary["skipped"] += len(done)
            todo = [cid for cid in ids if cid not in done]
            records = store.load_requests(bid, todo)
            waiting += len(todo)
            return [asyncio.ensure_future(one(ctx, bid, cid, records[cid])) for cid in todo]

        tasks = launch(batch_id, custom_ids)
        running: dict[str, list[asyncio.Task[None]]] = {}  # claimed job id -> its tasks
        claim_until = time.monotonic() + settings.job_timeout / 2  # stay well inside RQ's job timeout
        quiet_until = 0.0
        while True:
            pending = [t for t in tasks if not t.done()]
            if stop.is_set() and pending:
                await _drain(pending, settings.stop_grace)
                break
            finished = [job_id for job_id, its in running.items() if all(t.done() for t in its)]
            if finished:  # a claimed chunk is done: say so now, not when this whole run ends
                await asyncio.to_thread(finish_claimed, conn, settings, finished)
                for job_id in finished:
                    del running[job_id]
            now = time.monotonic()
            if claim and waiting == 0 and len(pending) < settings.concurrency and not stop.is_set() \
                    and now < claim_until and now >= quiet_until:
                got = await asyncio.to_thread(claim)
                if got is not None:
                    running[got[0]] = launch(got[1], got[2])
                    tasks += running[got[0]]
                    continue
                quiet_until = now + 0.5  # the queue is empty: do not ask on every tick
            if not pending and not running:
                break
            if pending:
                await asyncio.wait(pending, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*tasks, return_exceptions=True)
        claimed = list(running)  # handed back or cut off by a stop: finished by run_chunk
    summary["leftover"] = leftover
    summary["parked"] = {bid: ctx.parked for bid, ctx in contexts.items() if ctx.parked}
    summary["claimed"] = claimed
    return summary


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


async def process_request(ctx: Context, batch_id: str, custom_id: str, record: dict[str, Any] | None) -> str:
    """Run one request to a final, committed result. Returns its outcome, or 'skipped' if another
    execution committed it first (the chunk skipped committed requests at its start; the commit is
    once-only, so no per-request check is needed on this hot path)."""
    attempts = Attempts()
    meta: dict[str, Any] = {}
    held = False
    try:
        if record is None:
            raise InvalidRequest(f"request {custom_id!r} is missing from the batch (expired or deleted)")
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
        costs = {name: to_pico(getattr(charge, name)) for name in ("input", "cache_read", "cache_write", "output")}
        # off the event loop, so other calls keep flowing; spend is counted even if this commit loses
        won = await asyncio.to_thread(ctx.store.commit, batch_id, custom_id, line, "succeeded", costs,
                                      _token_counts(parsed.usage), spend_pico=to_pico(charge.total))
        return "succeeded" if won else "skipped"
    except Parked as park:
        ctx.parked.append((custom_id, park.resume_in, park.reason))
        return "parked"
    except RequestFailed as error:
        meta["attempts"] = attempts.count
        log.info("request %s/%s errored: %s", batch_id, custom_id, error.code)
        line = error_line(batch_id, custom_id, error, meta)
        outcome = line["meta"]["outcome"]
        won = await asyncio.to_thread(ctx.store.commit, batch_id, custom_id, line, outcome, {}, {})
        return outcome if won else "skipped"
    finally:
        if held:  # after the commit, so the cost lands before the hold goes; also when parked or cut off
            _release_budget(ctx, batch_id, custom_id)


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
        ctx.limiter.correct(scope, need[0], parsed.usage.prompt_tokens, need[1], parsed.usage.output_tokens)
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


def _token_counts(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_5m_tokens + usage.cache_write_1h_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def _batch_options(store: Store, batch_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The submission's options and metadata (the tags every result of the batch carries)."""
    raw = store.batch(batch_id) or {}
    return json.loads(raw.get("options") or "{}"), json.loads(raw.get("metadata") or "{}")


def _today() -> dt.date:
    return clock.today()
