"""Gemini Batch Mode: models/{model}:batchGenerateContent and :asyncBatchEmbedContent, batches/{id} (get,
cancel, delete) and the batches list.

A job is an Operation `{name: batches/{id}, metadata: {..., state, batchStats}, done, response | error}`
as the REST API writes it (camelCase, int64 counts as strings, zero counts left out). Each request is
answered by the realtime code (`answer_generate`, `answer_batch_embed`, their refusals included) when
the job is created; a refused request becomes an output line with `error`. Gemini says nothing about
the tier in a batch answer: the responses are exactly the realtime ones (an embedding's adds its
`tokenCount`, as SingleEmbedContentResponse has it). Output appears only when the
job SUCCEEDED: `responsesFile` (file mode: a generated JSONL file, lines `{key, response | error}` in
completion order) or `inlinedResponses` (inline mode: request order, each with its `metadata`).
FAILED, EXPIRED and CANCELLED jobs have no output at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from .batch_jobs import DROP_KEY, BatchStore, Item, Job, Progress, parse_batch_markers, rfc3339, token_page
from .batch_jobs import now as clock_now
from .batch_pipeline import Handler, control_route, jsonl, parse_object, read_body, serve_control
from .core import Disconnect, EmuError, compact, json_response
from .faults import parse_markers
from .google import DIALECT, GOOGLE_ERRORS, answer_batch_embed, answer_generate, embed_token_count
from .google_files import FILES, new_id
from .state import State

LIFETIME = 48 * 3600.0  # a job pending or running for 48 h expires, with no results
YIELD_EVERY = 256
TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1beta."
RPC_CODES = {"failed": (13, "The batch failed (emulated)."), "expired": (4, "The batch expired before it completed."),
             "cancelled": (1, "The batch was cancelled.")}
JOBS = web.AppKey("gemini_batches", BatchStore)
Entry = tuple[str | None, Any, Any, bytes]  # (key, request, metadata, raw bytes of the entry)


def _status_body(err: EmuError) -> dict[str, Any]:
    """google.rpc.Status, as an output line's `error` carries it."""
    status, default = GOOGLE_ERRORS.get(err.status, ("UNKNOWN", "Unknown error (emulated)"))
    return {"code": err.status, "message": err.message or default, "status": err.kind or status}


def _inline_entries(requests: Any) -> list[Entry]:
    inner = requests.get("requests") if isinstance(requests, dict) else None
    if not isinstance(inner, list) or not inner:
        raise EmuError(400, "* BatchGenerateContentRequest.batch.input_config.requests.requests: requests is empty")
    entries: list[Entry] = []
    for i, entry in enumerate(inner):
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise EmuError(400, f"* input_config.requests.requests[{i}].request: request is required")
        meta = entry.get("metadata")
        key = meta.get("key") if isinstance(meta, dict) else None
        entries.append((str(key) if key is not None else None, entry["request"], meta, compact(entry).encode()))
    return entries


def _file_entries(data: bytes) -> list[Entry]:
    """JSONL lines `{key, request}`; a line that does not parse is kept, to be answered with an error."""
    entries: list[Entry] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            obj = None
        key = obj.get("key") if isinstance(obj, dict) else None
        request = obj.get("request") if isinstance(obj, dict) else None
        entries.append((str(key) if key is not None else None, request, None, line))
    if not entries:
        raise EmuError(400, "The input file has no requests.")
    return entries


def _one_model(entries: list[Entry], model: str) -> None:
    """Gemini Batch Mode runs one model per job: a request naming another is refused at create."""
    for i, (_, req, _, _) in enumerate(entries):
        named = req.get("model") if isinstance(req, dict) else None
        if named is not None and named not in (model, f"models/{model}"):
            raise EmuError(400, f"* requests[{i}].model: {named!r} differs from models/{model}; a batch runs "
                           "one model")


def _answer(state: State, request: web.Request, model: str, embed: bool, entry: Entry) -> Item:
    key, req, meta, raw = entry
    state.batch_items[model] += 1
    try:
        if not isinstance(req, dict):
            raise EmuError(400, "Invalid JSON payload received: each line needs a `request` object")
        marks = parse_markers(raw) if b"#emu:" in raw else None
        if marks is not None and marks.fail is not None:
            raise EmuError(marks.fail)
        if embed:
            one = {**req, "model": f"models/{model}"}
            body = {"embedding": answer_batch_embed(state, request, {"requests": [one]}, model)["embeddings"][0],
                    "tokenCount": str(embed_token_count(req))}  # int64: a string in JSON
        else:
            body = answer_generate(state, request, {k: v for k, v in req.items() if k != "model"}, model)
        return Item(key, True, body, meta, DROP_KEY in raw)
    except EmuError as err:
        return Item(key, False, _status_body(err), meta, DROP_KEY in raw)
    except Exception as exc:  # a malformed request the checks missed: INTERNAL, as the realtime pipeline
        return Item(key, False, _status_body(EmuError(500, f"emulator error: {exc!r}")), meta, DROP_KEY in raw)


def _source(request: web.Request, batch: dict[str, Any], model: str) -> tuple[str, list[Entry], bytes]:
    """(mode, entries, file bytes) from `inputConfig`: exactly one of fileName and requests."""
    config = batch.get("inputConfig") or batch.get("input_config")
    if not isinstance(config, dict):
        raise EmuError(400, "* BatchGenerateContentRequest.batch.input_config: input_config is required")
    file_name = config.get("fileName") or config.get("file_name")
    inline = config.get("requests")
    if (file_name is None) == (inline is None):
        raise EmuError(400, "* batch.input_config: exactly one of file_name and requests must be set")
    if inline is not None:
        entries = _inline_entries(inline)
        _one_model(entries, model)
        return "inline", entries, b""
    stored = request.app[FILES].get(str(file_name).removeprefix("files/"))
    if stored is None:
        raise EmuError(404, f"File {file_name} was not found.", kind="NOT_FOUND")
    data = bytes(stored.data)
    entries = _file_entries(data)
    _one_model(entries, model)
    return "file", entries, data


async def _create(state: State, request: web.Request, headers: dict[str, str], embed: bool) -> web.StreamResponse:
    cfg, model = state.config, request.match_info["model"]
    raw = await read_body(request, cfg.gemini_inline_max_bytes, EmuError(
        400, f"Request payload size exceeds the limit: {cfg.gemini_inline_max_bytes} bytes."))
    batch = parse_object(raw).get("batch")
    if not isinstance(batch, dict):
        raise EmuError(400, "* BatchGenerateContentRequest.batch: batch is required")
    named = batch.get("model")
    if named is not None and named not in (model, f"models/{model}"):
        raise EmuError(400, f"* batch.model: {named!r} differs from models/{model} in the URL")
    state.check_retired("google", model, f"models/{model} is not found for API version "
                        f"{request.match_info['version']}, or is not supported for batch generation.")
    mode, entries, data = _source(request, batch, model)
    items: list[Item] = []
    for i, entry in enumerate(entries):
        items.append(_answer(state, request, model, embed, entry))
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    order = list(range(len(items)))
    state.rng.shuffle(order)
    marks = parse_batch_markers(raw, data)
    display = batch.get("displayName") or batch.get("display_name") or ""
    job = Job(new_id(24), clock_now(), cfg.batch_delay_s if marks.delay is None else marks.delay, LIFETIME, items,
              order, marks, {"model": model, "display_name": str(display), "mode": mode, "embed": embed})
    request.app[JOBS].add(job)
    if marks.lost:
        raise Disconnect()
    return json_response(200, operation(job, job.progress(job.created), request), headers)


def _state(job: Job, p: Progress) -> str:
    if p.phase == "ended":
        name = {"succeeded": "SUCCEEDED", "failed": "FAILED", "expired": "EXPIRED"}.get(p.fate, "CANCELLED")
    else:
        name = "RUNNING" if p.done else "PENDING"
    return ("JOB_STATE_" if job.marks.job_states else "BATCH_STATE_") + name


def _stats(job: Job, p: Progress) -> dict[str, str]:
    ok, failed = job.completed_counts(p.done)
    counts = {"requestCount": len(job.items), "successfulRequestCount": ok, "failedRequestCount": failed,
              "pendingRequestCount": len(job.items) - p.done if p.phase != "ended" else 0}
    return {k: str(v) for k, v in counts.items() if v or k == "requestCount"}  # proto3 JSON leaves zeros out


def _file_lines(job: Job) -> Iterator[bytes]:
    for item, _ in job.settled(len(job.items)):
        if item.drop_key:
            continue
        line: dict[str, Any] = {"key": item.key} if item.key is not None else {}
        line["response" if item.ok else "error"] = item.body
        yield jsonl(line)


def _output(job: Job, request: web.Request) -> dict[str, Any]:
    """The job's output, made once: a generated responses file, or the inlined responses."""
    if job.extra["mode"] == "file":
        if "responses_file" not in job.extra:
            file_id = f"batch-{job.id}"
            request.app[FILES].add_generated(file_id, f"{job.extra['display_name']} responses",
                                             "application/jsonl", b"".join(_file_lines(job)))
            job.extra["responses_file"] = f"files/{file_id}"
        return {"responsesFile": job.extra["responses_file"]}
    inlined = []
    for item in job.items:
        entry: dict[str, Any] = {"response" if item.ok else "error": item.body}
        if item.meta is not None and not item.drop_key:
            entry["metadata"] = item.meta
        inlined.append(entry)
    return {"inlinedResponses": {"inlinedResponses": inlined}}


def operation(job: Job, p: Progress, request: web.Request) -> dict[str, Any]:
    """The batch as an Operation, as create, get and list return it."""
    kind = "EmbedContentBatch" if job.extra["embed"] else "GenerateContentBatch"
    updated = p.ended_at if p.ended_at is not None and p.phase == "ended" else job.created
    meta: dict[str, Any] = {
        "@type": TYPE_PREFIX + kind, "model": f"models/{job.extra['model']}",
        "displayName": job.extra["display_name"], "createTime": rfc3339(job.created), "updateTime": rfc3339(updated),
        "batchStats": _stats(job, p), "state": _state(job, p), "name": f"batches/{job.id}"}
    op: dict[str, Any] = {"name": f"batches/{job.id}", "metadata": meta}
    if p.phase != "ended":
        return op
    meta["endTime"] = rfc3339(updated)
    op["done"] = True
    if p.fate == "succeeded":
        meta["output"] = _output(job, request)
        op["response"] = {"@type": TYPE_PREFIX + kind + "Output", **meta["output"]}
    else:
        code, message = RPC_CODES[p.fate]
        op["error"] = {"code": code, "message": message}
    return op


def _job(request: web.Request) -> Job:
    batch_id = request.match_info["batch_id"]
    job = request.app[JOBS].find(batch_id, clock_now())
    if job is None:
        raise EmuError(404, f"Batch batches/{batch_id} was not found.", kind="NOT_FOUND")
    return job


async def _get(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    job = _job(request)
    return json_response(200, operation(job, job.progress(clock_now()), request), headers)


async def _cancel(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    job = _job(request)
    t = clock_now()
    if job.progress(t).phase == "ended":
        raise EmuError(400, f"Batch batches/{job.id} has already ended.", kind="FAILED_PRECONDITION")
    if job.cancel_at is None:
        job.cancel_at = t
    return json_response(200, {}, headers)


async def _delete(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    _job(request).deleted = True  # it stops being listed; as at Google, deleting does not cancel
    return json_response(200, {}, headers)


async def _list(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    page, token = token_page(request.app[JOBS].newest_first(), request.query, 50, 1000)
    t = clock_now()
    body: dict[str, Any] = {"operations": [operation(j, j.progress(t), request) for j in page]}
    if token:
        body["nextPageToken"] = token
    return json_response(200, body, headers)


def _creator(kind: str, embed: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        return await _create(state, request, headers, embed)

    async def serve(request: web.Request) -> web.StreamResponse:
        return await serve_control(request, DIALECT, kind, handler, model=request.match_info["model"])
    return serve


def _route(kind: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    return control_route(DIALECT, f"batches.{kind}", handler)


def install(app: web.Application) -> None:
    """The store and routes, before Gemini's realtime `models/{target}` route that would catch them."""
    app[JOBS] = BatchStore()
    version = "/{version:v1beta|v1}"
    one = version + "/batches/{batch_id}"
    app.add_routes([
        web.post(version + "/models/{model}:batchGenerateContent", _creator("batchGenerateContent", False)),
        web.post(version + "/models/{model}:asyncBatchEmbedContent", _creator("asyncBatchEmbedContent", True)),
        web.get(version + "/batches", _route("list", _list)),
        web.post(one + ":cancel", _route("cancel", _cancel)),
        web.get(one, _route("get", _get)),
        web.delete(one, _route("delete", _delete)),
    ])
