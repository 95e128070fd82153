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
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from pydantic import ValidationError

from . import http
from . import tokens
from .errors import BatchClosed, BudgetExceeded, InvalidRequest, MissingApiKey, Parked, ProtocolError, RequestFailed
from .pricing import cost as price, from_pico, to_pico
from .ratelimit import Limiter, RateLimits, Scope, load_limits
from .recovery import Lease, enqueue_chunks, park
from .providers import ADAPTERS
from .providers.base import Parsed, Prepared, UpstreamCall
from .registry import ModelSpec, Registry, load_registry
from .results import error_line, success_line
from .retry import RetryPolicy
from .schemas import KIND_BY_URL, ChatRequest, EmbeddingRequest, Usage
from .settings import KEY_ENV, Settings
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
    """RQ entry point: hold the chunk's lease, run it, and re-enqueue what a graceful stop left undone."""
    from rq import get_current_job

    settings = current_settings()
    job = get_current_job()
    conn = job.connection if job is not None else redis.Redis.from_url(settings.redis_url or "")
    if job is None:
        return asyncio.run(process_chunk(conn, settings, batch_id, custom_ids, drain=DRAIN))
    store = Store.of(conn, settings)
    with Lease(conn, store.keys.lease(job.id), settings.lease_ttl):
        summary = asyncio.run(process_chunk(conn, settings, batch_id, custom_ids, drain=DRAIN))
    leftover, parked = summary.pop("leftover", []), summary.pop("parked", [])
    if leftover:  # a stopping worker hands its unstarted requests back to the queue
        jobs = enqueue_chunks(conn, settings, batch_id, leftover, f"continue{int(time.time() * 1000)}")
        log.info("stopping: %d requests of %s handed back as %s", len(leftover), job.id, ", ".join(jobs))
        summary["checkpointed"] = len(leftover)
    if parked:
        park(conn, settings, batch_id, parked)
        summary["parked"] = len(parked)
    return summary


async def process_chunk(
    conn: redis.Redis, settings: Settings, batch_id: str, custom_ids: list[str], *, drain: threading.Event | None = None
) -> dict[str, Any]:
    """Run a chunk's open requests concurrently. With `drain` set mid-way, start nothing new, give
    in-flight calls `stop_grace` seconds, and report the rest as `leftover` (uncommitted, safe to re-run)."""
    registry = load_registry(settings.registry_path)  # again: the registry may have changed since submit
    store = Store.of(conn, settings)
    done = store.done_ids(batch_id, custom_ids)
    todo = [cid for cid in custom_ids if cid not in done]
    requests = store.load_requests(batch_id, todo)
    summary: dict[str, Any] = {"skipped": len(done), "succeeded": 0, "errored": 0}
    leftover: list[str] = []
    stop = drain or threading.Event()
    async with http.make_client(concurrency=settings.concurrency, timeout=settings.request_timeout) as client:
        policy = RetryPolicy(settings.max_attempts, max_wait=settings.retry_max_wait)
        options, tags = _batch_options(store, batch_id)
        ctx = Context(settings, registry, store, client, policy, BatchGate(store, batch_id), options,
                      Limiter(conn, settings.key_prefix, settings.rate_burst), load_limits(settings.limits_path), tags=tags)
        gate = asyncio.Semaphore(settings.concurrency)

        async def one(cid: str) -> None:
            async with gate:
                if stop.is_set():
                    leftover.append(cid)
                    return
                try:
                    outcome = await process_request(ctx, batch_id, cid, requests[cid])
                except asyncio.CancelledError:
                    leftover.append(cid)  # cut off by the stop grace: nothing committed, runs again later
                    raise
                summary[outcome] = summary.get(outcome, 0) + 1

        tasks = [asyncio.ensure_future(one(cid)) for cid in todo]
        await _until_done_or_drained(tasks, stop, settings.stop_grace)
    summary["leftover"] = leftover
    summary["parked"] = ctx.parked
    return summary


async def _until_done_or_drained(tasks: list[asyncio.Future[None]], stop: threading.Event, grace: float) -> None:
    if not tasks:
        return
    everything = asyncio.gather(*tasks)
    while not everything.done():
        await asyncio.wait([everything], timeout=0.2)
        if stop.is_set() and not everything.done():
            log.warning("stop requested: letting calls in flight finish (up to %.0f s)", grace)
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return
    everything.result()


class BatchGate:
    """Is the batch still open? Read at most once a second, so cancel and expiry reach running chunks fast."""

    def __init__(self, store: Store, batch_id: str) -> None:
        self.store, self.batch_id = store, batch_id
        self._read_at = -1.0
        self._status: str | None = None
        self._expires_at: float | None = None

    def closed_code(self) -> str | None:
        now = time.monotonic()
        if now - self._read_at >= 1.0:
            status, expires = self.store.conn.hmget(self.store.keys.batch(self.batch_id), "status", "expires_at")
            self._status = status.decode() if isinstance(status, bytes) else status
            self._expires_at = float(expires) if expires else None
            self._read_at = now
        if self._status in ("cancelling", "cancelled"):
            return "batch_cancelled"
        if self._status == "in_progress" and self._expires_at is not None and time.time() >= self._expires_at:
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
        _hold_budget(ctx, batch_id, custom_id, spec, kind, record["body"], prepared)
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
        _release_budget(ctx, batch_id, custom_id)
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
        _release_budget(ctx, batch_id, custom_id)
        return outcome if won else "skipped"


def _hold_budget(ctx: Context, batch_id: str, custom_id: str, spec: ModelSpec, kind: str, body: dict[str, Any],
                 prepared: Prepared) -> None:
    """With --max-cost: reserve this call's worst case (its input, all of its output limit) or refuse it."""
    max_pico = ctx.options.get("max_cost_pico")
    if not max_pico:
        return
    if kind == "chat":
        worst = Usage(input_tokens=tokens.chat_input_tokens(body), output_tokens=_output_limit(prepared, spec))
    else:
        worst = Usage(input_tokens=tokens.embedding_input_tokens(body))
    pico = to_pico(price(worst, spec, _today()).total)
    if not ctx.store.reserve(batch_id, custom_id, pico, int(max_pico)):
        raise BudgetExceeded(f"not sent: committed cost plus calls in flight plus this one (up to ${price(worst, spec, _today()).total}) "
                             f"would pass the batch budget of ${from_pico(int(max_pico))}")


def _release_budget(ctx: Context, batch_id: str, custom_id: str) -> None:
    if ctx.options.get("max_cost_pico"):
        ctx.store.release(batch_id, custom_id)


def _output_limit(prepared: Prepared, spec: ModelSpec) -> int:
    """The most output tokens the provider may bill for this call, as it will be sent."""
    body = prepared.calls[0].json
    limit = body.get("max_tokens") or (body.get("generationConfig") or {}).get("maxOutputTokens")
    return int(limit or spec.rules.max_output_tokens or spec.rules.default_max_tokens or 65536)


def _prepare(ctx: Context, adapter: Any, spec: ModelSpec, kind: str, body: dict[str, Any]) -> Prepared:
    api_version = ctx.registry.api_version(spec.provider)
    try:
        if kind == "chat":
            request = ChatRequest.model_validate(body)
            drop = bool(ctx.options.get("drop_unsupported_params"))
            return adapter.prepare_chat(request, spec, api_version=api_version, drop_unsupported=drop)
        return adapter.prepare_embeddings(EmbeddingRequest.model_validate(body), spec, api_version=api_version)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request body: {exc.errors()[0]['msg']}") from exc


async def _execute(
    ctx: Context, adapter: Any, spec: ModelSpec, kind: str, body: dict[str, Any], prepared: Prepared,
    attempts: Attempts,
) -> Parsed:
    key = ctx.settings.api_key(spec.provider)
    if not key:
        var = KEY_ENV[spec.provider]
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
            await asyncio.sleep(ctx.policy.delay(tries, error.retry_after))


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
    return dt.datetime.now(dt.timezone.utc).date()
