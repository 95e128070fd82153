"""`/v1/batches`: create, retrieve, list (cursor pages, newest first) and cancel, per tenant.

Routes only: the create is batchcreate.py, the records batchrecords.py, the Batch object
batchobject.py, the output files and final statuses finalizer.py. Another tenant's batch id, a
malformed one (`..`, `/`, `%2F`, a huge one) and an unknown one all answer the same 404, and only a
well-formed id is looked up in Redis (under the caller's own prefix).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from producer.control import cancel
from worker import clock

from .auth import Tenant, current_tenant
from .batchcontext import BatchContext
from .batchcreate import MAX_BODY, create, create_schema, parse_create
from .batchobject import final_status, to_openai
from .batchrecords import FINAL, BatchRecord
from .calls import read_body
from .errors import ApiError, not_found
from .finalizer import Finalizer, finalize
from .pages import after_param, cursor_page

router = APIRouter(prefix="/v1/batches", tags=["batches"])
CANCELLED = ("cancelling", "cancelled")  # the engine took the cancel (else it had ended already)

_CREATE_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": create_schema()}}}}
_CREATE_DOC["parameters"] = [{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {
    "type": "string", "minLength": 1, "maxLength": 255}, "description": "The same key (same tenant, same parameters) returns the same batch."}]


def _ctx(request: Request) -> BatchContext:
    return request.app.state.batches


def show(ctx: BatchContext, record: BatchRecord, *, inline: bool) -> dict[str, Any]:
    """The Batch object; with `inline`, a batch the engine is done with is finalized now if no server is at it."""
    engine = ctx.store.status(record.id) if record.status == "in_progress" else None
    if inline and record.status == "in_progress" and final_status(engine) is not None:
        record = finalize(ctx, record) or record
        engine = ctx.store.status(record.id) if record.status == "in_progress" else None
    return to_openai(record, engine)


def _retried(request: Request) -> bool:
    """Is this the SDK's own retry of a request (x-stainless-retry-count ≥ 1)?"""
    count = request.headers.get("x-stainless-retry-count", "0")
    return count.isdigit() and int(count[:6]) > 0


@router.post("", openapi_extra=_CREATE_DOC, summary="Create a batch from an uploaded .jsonl file")
async def create_batch(request: Request, tenant: Tenant = Depends(current_tenant)) -> dict[str, Any]:
    params = parse_create(await read_body(request, MAX_BODY, "the limit of a batch create's body"))
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 255:
        raise ApiError(400, "Idempotency-Key must be 1 to 255 characters.", code="invalid_request",
                       param="Idempotency-Key")
    ctx = _ctx(request)
    record = await run_in_threadpool(create, ctx, tenant, params, key, _retried(request))
    return await run_in_threadpool(show, ctx, record, inline=True)  # (a batch done already is finalized now)


@router.get("", summary="List your batches (cursor pages, newest first)")
def list_batches(request: Request, tenant: Tenant = Depends(current_tenant), after: str | None = after_param(),
                 limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    ctx = _ctx(request)
    records, has_more = ctx.records.page(tenant.name, after=after, limit=limit)
    return cursor_page([show(ctx, r, inline=False) for r in records], has_more)


def _own(ctx: BatchContext, tenant: Tenant, batch_id: str) -> BatchRecord:
    record = ctx.records.get(tenant.name, batch_id)
    if record is None:
        raise not_found("Batch", batch_id)
    return record


@router.post("/{batch_id:path}/cancel", summary="Cancel a batch (finished requests are kept)")
def cancel_batch(request: Request, batch_id: str, tenant: Tenant = Depends(current_tenant)) -> dict[str, Any]:
    """`cancelling` at once: requests not started end `batch_cancelled`, calls in flight finish; then
    `cancelled` once nothing runs, with the finished lines in the output and error files."""
    ctx = _ctx(request)
    record = _own(ctx, tenant, batch_id)
    if record.status in FINAL:
        if record.status == "cancelled":
            return show(ctx, record, inline=False)
        raise ApiError(400, f"Cannot cancel a batch with status '{record.status}'.", code=None, param="batch_id")
    if record.status == "validating":  # cancelled as soon as it is submitted (by its creator, or here)
        ctx.records.mark(record, "cancelling_at", int(clock.now()))
        record = ctx.records.get(tenant.name, batch_id) or record
    if record.status == "in_progress" and cancel(ctx.conn, ctx.settings, batch_id)["status"] in CANCELLED:
        ctx.records.mark(record, "cancelling_at", int(clock.now()))
    return show(ctx, record, inline=True)


@router.get("/{batch_id:path}", summary="Retrieve a batch")
def retrieve_batch(request: Request, batch_id: str, tenant: Tenant = Depends(current_tenant)) -> dict[str, Any]:
    ctx = _ctx(request)
    return show(ctx, _own(ctx, tenant, batch_id), inline=True)


def install(app: FastAPI, ctx: BatchContext, *, finalizer: bool = True) -> None:
    """Serve /v1/batches from `ctx`, and run a Finalizer thread while the server runs."""
    app.state.batches = ctx
    app.include_router(router)
    if not finalizer:
        return
    parent = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        thread = Finalizer(ctx)
        thread.start()
        try:
            async with parent(app_) as state:
                yield state
        finally:
            thread.stop()

    app.router.lifespan_context = lifespan
