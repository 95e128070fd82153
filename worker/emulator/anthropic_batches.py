"""Anthropic Message Batches: /v1/messages/batches (create, list), /{id} (retrieve, delete), /{id}/cancel, /{id}/results.

Each request is answered by the realtime /v1/messages code (`answer_messages`, its refusals included)
when the batch is created, with `usage.service_tier: "batch"`; as at Anthropic, a bad `params` shows
only at the end, as an `errored` result, while the envelope (custom_id pattern and uniqueness, count,
size) is refused at create. `request_counts` are all `processing` until the batch ends; results are
JSONL in completion order (not request order), `canceled` / `expired` for what did not complete.
"""

from __future__ import annotations

import asyncio
import os
import re
import string
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from .anthropic import ANTHROPIC_ERRORS, DIALECT, answer_messages
from .batch_jobs import BatchStore, Item, Job, Progress, page_after, parse_batch_markers, rfc3339
from .batch_jobs import now as clock_now
from .batch_pipeline import Handler, base_url, control_route, jsonl, parse_object, read_body, stream_lines
from .core import Disconnect, EmuError, compact, hex_id, json_response
from .faults import parse_markers
from .state import State

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
LIFETIME = 24 * 3600.0  # a batch not ended after 24 h expires
# Message params a batch refuses (each becomes an `errored` result, as Anthropic validates params at the end).
BATCH_REFUSED = ("speed", "store", "previous_thread_event_id", "cache_hint", "context_hint")
YIELD_EVERY = 256  # answers computed between two yields to the event loop
BATCHES = web.AppKey("anthropic_batches", BatchStore)
_ALPHABET = string.ascii_letters + string.digits


def _batch_id() -> str:
    return "msgbatch_01" + "".join(_ALPHABET[b % len(_ALPHABET)] for b in os.urandom(22))


def _error_body(err: EmuError) -> dict[str, Any]:
    """Anthropic's ErrorResponse, as an errored result carries it."""
    kind, default = ANTHROPIC_ERRORS.get(err.status, ("api_error", "Error (emulated)"))
    return {"type": "error", "error": {"type": err.kind or kind, "message": err.message or default},
            "request_id": f"req_{hex_id()}"}


def _envelope(body: dict[str, Any], max_requests: int) -> list[tuple[str, dict[str, Any]]]:
    """(custom_id, params) pairs, or the 400 Anthropic gives at create for a bad envelope."""
    for name in body:
        if name != "requests":
            raise EmuError(400, f"{name}: Extra inputs are not permitted")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise EmuError(400, "requests: Field required (a non-empty list)")
    if len(requests) > max_requests:
        raise EmuError(400, f"requests: List should have at most {max_requests} items after validation, "
                       f"not {len(requests)}")
    pairs: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for i, req in enumerate(requests):
        custom_id = req.get("custom_id") if isinstance(req, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise EmuError(400, f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if custom_id in seen:
            raise EmuError(400, f"requests.{i}.custom_id: Duplicate custom_id {custom_id!r}; each custom_id "
                           "must be unique within a Message Batch")
        params = req.get("params")
        if not isinstance(params, dict):
            raise EmuError(400, f"requests.{i}.params: Input should be a valid dictionary")
        seen.add(custom_id)
        pairs.append((custom_id, params))
    return pairs


def _answer(state: State, request: web.Request, custom_id: str, params: dict[str, Any]) -> Item:
    """One request answered as /v1/messages would, or the error it would get there."""
    model = DIALECT.model(params, "unknown")
    state.batch_items[model] += 1
    try:
        if params.get("stream"):
            raise EmuError(400, "stream: Streaming is not supported in Message Batches")
        for name in BATCH_REFUSED:
            if name in params:
                raise EmuError(400, f"{name}: not supported in Message Batches")
        raw = compact(params).encode()
        marks = parse_markers(raw) if b"#emu:" in raw else None
        if marks is not None and marks.fail is not None:
            raise EmuError(marks.fail)
        message = answer_messages(state, request, params, model)
    except EmuError as err:
        return Item(custom_id, False, _error_body(err))
    except Exception as exc:  # a malformed request the checks missed: an api_error, as the realtime pipeline
        return Item(custom_id, False, _error_body(EmuError(500, f"emulator error: {exc!r}")))
    message["usage"]["service_tier"] = "batch"
    return Item(custom_id, True, message)


def _counts(job: Job, p: Progress) -> dict[str, int]:
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if p.phase != "ended":
        counts["processing"] = len(job.items)
        return counts
    counts["succeeded"], counts["errored"] = job.completed_counts(p.done)
    rest = len(job.items) - p.done
    counts[{"cancelled": "canceled", "failed": "errored"}.get(p.fate, "expired")] += rest
    return counts


def batch_object(job: Job, p: Progress, base: str) -> dict[str, Any]:
    """The MessageBatch resource as it stands at `p`."""
    ended = p.phase == "ended"
    return {
        "id": job.id, "type": "message_batch",
        "processing_status": p.phase if p.phase != "running" else "in_progress",
        "request_counts": _counts(job, p),
        "ended_at": rfc3339(p.ended_at) if ended and p.ended_at is not None else None,
        "created_at": rfc3339(job.created), "expires_at": rfc3339(job.created + LIFETIME),
        "archived_at": None,
        "cancel_initiated_at": rfc3339(job.cancel_at) if job.cancel_at is not None else None,
        "results_url": f"{base}/v1/messages/batches/{job.id}/results" if ended else None,
    }


def _result_lines(job: Job, p: Progress) -> Iterator[bytes]:
    for item, completed in job.settled(p.done):
        if completed:
            result = {"type": "succeeded", "message": item.body} if item.ok else {"type": "errored", "error": item.body}
        elif p.fate == "cancelled":
            result = {"type": "canceled"}
        elif p.fate == "failed":
            result = {"type": "errored", "error": _error_body(EmuError(500))}
        else:
            result = {"type": "expired"}
        yield jsonl({"custom_id": item.key, "result": result})


def _job(request: web.Request) -> Job:
    batch_id = request.match_info["batch_id"]
    job = request.app[BATCHES].find(batch_id, clock_now())
    if job is None:
        raise EmuError(404, f"message_batch_id: no Message Batch found with id {batch_id!r}")
    return job


async def _create(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    cfg = state.config
    raw = await read_body(request, cfg.anthropic_batch_max_bytes, EmuError(
        413, f"Request exceeds the maximum allowed number of bytes ({cfg.anthropic_batch_max_bytes}) for a "
        "Message Batch."))
    pairs = _envelope(parse_object(raw), cfg.anthropic_batch_max_requests)
    marks = parse_batch_markers(raw)
    items: list[Item] = []
    for i, (custom_id, params) in enumerate(pairs):
        items.append(_answer(state, request, custom_id, params))
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)  # a 100,000-request batch must not freeze the other connections
    order = list(range(len(items)))
    state.rng.shuffle(order)
    job = Job(_batch_id(), clock_now(), cfg.batch_delay_s if marks.delay is None else marks.delay, LIFETIME,
              items, order, marks, cancel_delay=cfg.batch_cancel_s)
    request.app[BATCHES].add(job)
    if marks.lost:
        raise Disconnect()
    return json_response(200, batch_object(job, job.progress(job.created), base_url(request)), headers)


async def _retrieve(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    job = _job(request)
    return json_response(200, batch_object(job, job.progress(clock_now()), base_url(request)), headers)


async def _list(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise EmuError(400, "limit: Input should be an integer between 1 and 1000")
    jobs = request.app[BATCHES].newest_first()
    if "before_id" in query:
        older_first, more = page_after(jobs[::-1], query["before_id"], limit)
        page = older_first[::-1]
    else:
        page, more = page_after(jobs, query.get("after_id"), limit)
    t, base = clock_now(), base_url(request)
    return json_response(200, {"data": [batch_object(j, j.progress(t), base) for j in page], "has_more": more,
                               "first_id": page[0].id if page else None,
                               "last_id": page[-1].id if page else None}, headers)


async def _cancel(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    job = _job(request)
    t = clock_now()
    if job.progress(t).phase == "ended":
        raise EmuError(409, f"Message Batch {job.id} has already ended and cannot be canceled")
    if job.cancel_at is None:
        job.cancel_at = t
    return json_response(200, batch_object(job, job.progress(t), base_url(request)), headers)


async def _results(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    job = _job(request)
    p = job.progress(clock_now())
    if p.phase != "ended":
        raise EmuError(400, f"Message Batch {job.id} is still {p.phase}; results are available once "
                       "processing_status is ended")
    return await stream_lines(request, _result_lines(job, p), headers, "application/binary")


async def _delete(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    job = _job(request)
    if job.progress(clock_now()).phase != "ended":
        raise EmuError(409, f"Message Batch {job.id} is still processing; cancel it before deleting it")
    job.deleted = True
    return json_response(200, {"id": job.id, "type": "message_batch_deleted"}, headers)


def _route(kind: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    return control_route(DIALECT, f"messages.batches.{kind}", handler)


def install(app: web.Application) -> None:
    """The store and routes (added before the realtime ones)."""
    app[BATCHES] = BatchStore()
    one = "/v1/messages/batches/{batch_id}"
    app.add_routes([
        web.post("/v1/messages/batches", _route("create", _create)),
        web.get("/v1/messages/batches", _route("list", _list)),
        web.get(one, _route("retrieve", _retrieve)),
        web.delete(one, _route("delete", _delete)),
        web.post(one + "/cancel", _route("cancel", _cancel)),
        web.get(one + "/results", _route("results", _results)),
    ])
