"""One request to its final, committed result: resolve -> translate -> call -> price -> commit.

Whatever goes wrong ends this request alone, with a clear error as its result: nothing a request holds
can fail its chunk and the other requests in it. The one exception is Redis refusing a write before
the call: `run_request` waits for Redis and starts the request over (nothing was paid yet). A result is
committed once (store.commit is once-only), so a re-run or a duplicate execution never bills twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from . import budget, clock, metrics, routes
from .batch import Batch
from .commits import Committer
from .errors import BatchClosed, InvalidRequest, Parked, RequestFailed
from .lease import LeaseLost
from .providers import ADAPTERS, Provider
from .providers.base import Parsed, Prepared
from .registry import ModelSpec, Registry
from .results import error_line, success_line
from .schemas import KIND_BY_URL, ChatRequest, EmbeddingRequest, chat_request, embedding_request
from .settings import Settings
from .store import Store
from .upstream import Attempts, Upstream
from .writes import Writes, refused_write

log = logging.getLogger("otb.worker")

Record = dict[str, Any] | RequestFailed | None  # a stored request, why it cannot be read, or None if it is gone


@dataclass
class Context:
    """What every request of a chunk run shares (one per run; per-batch state is on `Batch`)."""

    settings: Settings
    registry: Registry
    store: Store
    upstream: Upstream
    committer: Committer

    @property
    def writes(self) -> Writes:
        """Does Redis take writes? Shared by every request of the run."""
        return self.upstream.writes


def _nothing() -> None:
    pass


async def run_request(ctx: Context, batch: Batch, custom_id: str, record: Record,
                      calls_done: Callable[[], None] = _nothing) -> str:
    """process_request, started over when Redis refused a write before anything was paid (a commit
    after a paid call retries on its own, in Writes.persist). New calls wait while Redis refuses writes.
    `calls_done` is called once the request will make no more calls (its slot may go to another)."""
    while True:
        await ctx.writes.ready()
        try:
            return await process_request(ctx, batch, custom_id, record, calls_done)
        except redis.RedisError as exc:
            if not refused_write(exc):
                raise
            ctx.writes.refused(exc)


async def process_request(ctx: Context, batch: Batch, custom_id: str, record: Record,
                          calls_done: Callable[[], None] = _nothing) -> str:
    """Run one request to a final, committed result. Returns its outcome, or 'skipped' if another
    execution committed it first (the chunk skipped committed requests at its start; the commit is
    once-only, so no per-request check is needed on this hot path)."""
    one = OneRequest(ctx, batch, custom_id, calls_done)
    outcome = await _to_the_end(one, record)
    metrics.request_done(metrics.model_label(one.meta.get("model"), ctx.registry.models), outcome)
    return outcome


async def _to_the_end(one: OneRequest, record: Record) -> str:
    """The request's outcome: run, parked, or failed with its error committed as its result."""
    ctx, batch, custom_id = one.ctx, one.batch, one.custom_id
    try:
        return await one.run(record)
    except Parked as park:
        batch.parked.append((custom_id, park.resume_in, park.reason))
        return "parked"
    except LeaseLost:  # the chunk went to another worker before this call was sent: no result from here
        return "taken_over"
    except RequestFailed as error:
        return await one.fail(error)
    except Exception as exc:
        if isinstance(exc, redis.RedisError) and refused_write(exc):
            raise  # before the call: run_request waits for Redis, then starts this request over
        log.exception("request %s/%s failed inside the worker", batch.id, custom_id)
        return await one.fail(_internal(exc))
    finally:
        if one.held:  # after the commit, so the cost lands before the hold goes; also when parked or cut off
            budget.release_soon(ctx.store, batch, custom_id)


class OneRequest:
    """The steps of one request; `meta` and `attempts` gather what its result line says about the way."""

    def __init__(self, ctx: Context, batch: Batch, custom_id: str, calls_done: Callable[[], None] = _nothing) -> None:
        self.ctx, self.batch, self.custom_id, self.calls_done = ctx, batch, custom_id, calls_done
        self.meta: dict[str, Any] = {}
        self.attempts = Attempts()
        self.held = False  # a budget hold to release
        self.route = routes.Route(routes.REALTIME)  # planned just before the call, into `meta`

    async def run(self, record: Record) -> str:
        kind, body = self.open(record)
        spec = self.ctx.registry.resolve_for(self.meta["model"], kind)  # as the body names it
        adapter = ADAPTERS[spec.provider]
        request, prepared = self.translate(adapter, spec, kind, body)
        if self.batch.budgeted:
            await budget.hold(self.ctx.store, self.ctx.settings, self.batch, self.custom_id,
                              budget.worst_case(spec, kind, body, prepared))
            self.held = True
        to = self.ctx.upstream.target(adapter, spec, self.attempts)
        self.route = self.batch.route(spec, kind, body, self.ctx.settings, self.meta)
        if isinstance(request, ChatRequest):
            parsed = await self.ctx.upstream.chat(to, spec, body, prepared, self.route)
        else:
            api_version = self.ctx.registry.api_version(spec.provider)
            parsed = await self.ctx.upstream.embeddings(to, spec, request, body, prepared, api_version)
        return await self.succeed(spec, parsed)

    def open(self, record: Record) -> tuple[str, dict[str, Any]]:
        """The stored request's endpoint kind and body, once its batch is known to be still open."""
        if record is None:
            raise InvalidRequest(f"request {self.custom_id!r} is missing from the batch (expired or deleted)")
        if isinstance(record, RequestFailed):
            raise record
        body: dict[str, Any] = record["body"]
        self.meta["model"] = body.get("model")
        self.meta["tags"] = {**self.batch.tags, **(record.get("tags") or {})}
        closed = self.batch.gate.closed_code()
        if closed:
            raise BatchClosed(closed)
        return KIND_BY_URL[record["url"]], body

    def translate(self, adapter: Provider, spec: ModelSpec, kind: str,
                  body: dict[str, Any]) -> tuple[ChatRequest | EmbeddingRequest, Prepared]:
        """The body as the provider's call(s); what was dropped or changed on the way goes in `meta`."""
        api_version = self.ctx.registry.api_version(spec.provider)
        request: ChatRequest | EmbeddingRequest
        if kind == "chat":
            request = chat_request(body)
            prepared = adapter.prepare_chat(request, spec, api_version=api_version,
                                            drop_unsupported=self.batch.drop_unsupported)
        else:
            request = embedding_request(body)
            prepared = adapter.prepare_embeddings(request, spec, api_version=api_version)
        self.meta["dropped_params"] = prepared.dropped_params
        if prepared.notes:
            self.meta["notes"] = prepared.notes
        return request, prepared

    async def succeed(self, spec: ModelSpec, parsed: Parsed) -> str:
        """Price the answer as the model that ran and commit it; spend is counted even if this commit loses."""
        billed = billed_spec(self.ctx.registry, spec, parsed)
        self.meta["billed_model"] = billed.id
        self.meta["attempts"] = self.attempts.count
        charge = routes.bill(parsed, billed, self.route, clock.today())
        line = success_line(self.batch.id, self.custom_id, parsed.body, request_id=parsed.request_id,
                            usage=parsed.usage, cost=charge, meta=self.meta)
        won = await self.commit(line, "succeeded")
        if won:
            metrics.billed(metrics.model_label(self.meta["model"], self.ctx.registry.models), parsed.usage,
                           float(charge.total))
        return "succeeded" if won else "skipped"

    async def fail(self, error: RequestFailed) -> str:
        """Commit the request's error as its result."""
        self.meta["attempts"] = self.attempts.count
        log.info("request %s/%s errored: %s", self.batch.id, self.custom_id, error.code)
        line = error_line(self.batch.id, self.custom_id, error, self.meta)
        outcome: str = line["meta"]["outcome"]
        won = await self.commit(line, outcome)
        return outcome if won else "skipped"

    async def commit(self, line: dict[str, Any], outcome: str) -> bool:
        """Store the result once, with the others that finish about now (commits.py), waiting out a
        Redis that refuses writes. Its calls are over: its concurrency slot goes to the next request."""
        self.calls_done()
        return await self.ctx.committer.commit(self.batch.id, self.custom_id, line, outcome, alone=self.batch.single,
                                               pool=self.batch.pool)


def _internal(exc: Exception) -> RequestFailed:
    """Our own failure on one request, as one clear line (never retried: it would fail the same way)."""
    if isinstance(exc, RecursionError):
        return InvalidRequest("the request is nested too deeply to process")
    return RequestFailed(f"the worker failed on this request: {type(exc).__name__}: {exc}",
                         code="internal_error", type="api_error", status_code=500)


def billed_spec(registry: Registry, spec: ModelSpec, parsed: Parsed) -> ModelSpec:
    """Google may serve a deprecated id with another model; bill what actually ran."""
    served = parsed.upstream_model
    if not served or served == spec.upstream:
        return spec
    other = registry.by_upstream(spec.provider, served)
    return other if other is not None and other.pricing is not None else spec
