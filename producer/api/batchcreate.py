"""`POST /v1/batches`: check the parameters, claim the Idempotency-Key, then validate and submit the file.

The input file is read from the FileStore line by line (never whole) straight into the one
`submit()` path, tagged `key=<tenant>`, with the tenant as its pool: its commits add to the key's
spend, and with the key's --max-cost its calls share that budget with every other batch and call
of the key (worker/budget.py). A file that
fails validation is not an HTTP error: the batch is `failed`, and `errors.data` names each bad line
(1-based, as OpenAI numbers them). The record exists, `validating` and locked, before the file is
read, so a second create with the same key returns it instead of starting another; a server that
dies while validating leaves it to the finalizers, which run `start()` again (the submit's own
idempotency key, the batch id, makes a submit that had landed return its batch).

Without an Idempotency-Key, the SDK's own retry of a create whose answer was lost
(`x-stainless-retry-count` ≥ 1, same parameters, within `RETRY_WINDOW`) returns the batch the first
attempt made, instead of a second one; a create that is not a retry always makes a new batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from producer.batchfile import BatchTooLarge, LineError
from producer.control import cancel
from producer.options import SubmitOptions
from producer.submit import RedisRefused, SubmissionRejected, submit
from worker import clock
from worker.errors import InvalidRequest, OTBError
from worker.pricing import from_pico, to_pico
from worker.schemas import CHAT_URL, EMBEDDINGS_URL

from .batchcontext import BatchContext
from .batchlock import BatchLock
from .batchrecords import WINDOW, BatchRecord, Claim, new_batch_id
from .calls import TENANT_TAG
from .errors import ApiError, for_http, not_found
from .filestore import DAY
from .tenants import Tenant

MAX_BODY = 64 * 1024  # a create's JSON body: ids, metadata (16 x 576 characters at most) and a few fields
ENDPOINTS = (CHAT_URL, EMBEDDINGS_URL)
OUTPUT_EXPIRY = (3600, 30 * DAY)  # OpenAI's bounds for output_expires_after.seconds
MAX_METADATA = (16, 64, 512)  # pairs, key characters, value characters
MAX_ERRORS = 1000  # bad lines listed on a failed batch; one more entry counts the rest
RETRY_WINDOW = 3600  # seconds the SDK's retry of a create without a key finds the first attempt's batch
PARAMS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}


def create_schema() -> dict[str, Any]:
    """The create's JSON body for /docs, with the bounds parse_create() enforces (an unknown parameter is a 400)."""
    pairs, key_max, value_max = MAX_METADATA
    low, high = OUTPUT_EXPIRY
    expiry = {"type": ["object", "null"], "required": ["anchor", "seconds"], "additionalProperties": False,
              "properties": {"anchor": {"type": "string", "enum": ["created_at"]},
                             "seconds": {"type": "integer", "minimum": low, "maximum": high}}}
    metadata = {"type": ["object", "null"], "maxProperties": pairs, "propertyNames": {"maxLength": key_max},
                "additionalProperties": {"type": "string", "maxLength": value_max}}
    return {"type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
            "additionalProperties": False, "properties": {
                "input_file_id": {"type": "string", "description": "One of your files with purpose batch."},
                "endpoint": {"type": "string", "enum": list(ENDPOINTS)},
                "completion_window": {"type": "string", "enum": ["24h"]},
                "metadata": metadata, "output_expires_after": expiry},
            "example": {"input_file_id": "file-019a0b1c2d3e4f5a6b7c8d9e0f", "endpoint": CHAT_URL,
                        "completion_window": "24h", "metadata": {"job": "nightly-eval"},
                        "output_expires_after": {"anchor": "created_at", "seconds": 604800}}}


@dataclass(frozen=True)
class CreateParams:
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_ttl: int | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def parse_create(raw: bytes) -> CreateParams:
    """The create's body, checked as OpenAI checks it (400 naming the parameter)."""
    body = _json_object(raw)
    for name in sorted(set(body) - PARAMS):
        raise InvalidRequest(f"Unrecognized request argument supplied: {name[:64]}", param=name[:64])
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise InvalidRequest(f"Missing required parameter: '{name}' (a string).", param=name)
    if body["endpoint"] not in ENDPOINTS:
        raise InvalidRequest(f"Invalid value for 'endpoint': {body['endpoint'][:100]!r}. This server runs "
                             f"batches for {' and '.join(ENDPOINTS)}.", param="endpoint")
    if body["completion_window"] != "24h":
        raise InvalidRequest(f"Invalid value for 'completion_window': {body['completion_window'][:40]!r}. "
                             "Supported values are: '24h'.", param="completion_window")
    return CreateParams(body["input_file_id"][:200], body["endpoint"], "24h", _metadata(body.get("metadata")),
                        _output_ttl(body.get("output_expires_after")))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        return body
    raise InvalidRequest("The request body must be a JSON object (the OpenAI API expects a JSON payload).")


def _metadata(value: Any) -> dict[str, str] | None:
    pairs, key_max, value_max = MAX_METADATA
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidRequest("Invalid type for 'metadata': expected an object of strings.", param="metadata")
    if len(value) > pairs:
        raise InvalidRequest(f"Invalid 'metadata': too many properties. Expected at most {pairs}, got {len(value)}.",
                             param="metadata")
    for k, v in value.items():
        if len(k) > key_max or len(v) > value_max:
            raise InvalidRequest(f"Invalid 'metadata': keys are at most {key_max} characters and values at most "
                                 f"{value_max} (key {k[:70]!r}).", param=f"metadata.{k[:key_max]}")
    return dict(value)


def _output_ttl(value: Any) -> int | None:
    low, high = OUTPUT_EXPIRY
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"anchor", "seconds"} or value.get("anchor") != "created_at":
        raise InvalidRequest("Invalid 'output_expires_after': expected {\"anchor\": \"created_at\", \"seconds\": N}.",
                             param="output_expires_after.anchor")
    seconds = value.get("seconds")
    if type(seconds) is not int or not low <= seconds <= high:
        raise InvalidRequest(f"Invalid 'output_expires_after.seconds': a whole number from {low} to {high}.",
                             param="output_expires_after.seconds")
    return seconds


def claim_of(ctx: BatchContext, tenant: str, params: CreateParams, key: str | None, retried: bool) -> Claim:
    """The Idempotency-Key's claim, or without one the claim the SDK's retry of this create will find."""
    digest = params.digest()
    if key is not None:
        name = hashlib.sha256(f"key\0{key}".encode()).hexdigest()
        return Claim(ctx.records.keys.api_batch_key(tenant, name), digest)
    name = hashlib.sha256(f"auto\0{digest}".encode()).hexdigest()
    return Claim(ctx.records.keys.api_batch_key(tenant, name), digest, check=retried, ttl=RETRY_WINDOW)


def create(ctx: BatchContext, tenant: Tenant, params: CreateParams, key: str | None, retried: bool) -> BatchRecord:
    """The new batch, validated and submitted (or failed); or the batch its key already made."""
    claim = claim_of(ctx, tenant.name, params, key, retried)
    earlier = ctx.records.claimed(tenant.name, claim)
    if earlier is not None:
        return earlier
    meta = ctx.files.get(tenant.name, params.input_file_id)
    if meta is None:
        raise not_found("File", params.input_file_id)
    if meta.purpose != "batch":
        raise ApiError(400, f"The file {meta.id} has purpose {meta.purpose!r}; a batch reads a file uploaded with "
                            "purpose 'batch'.", code="invalid_request", param="input_file_id")
    record = BatchRecord(new_batch_id(), tenant.name, params.endpoint, meta.id, int(clock.now()),
                         params.completion_window, params.metadata, params.output_ttl, key_budget(ctx, tenant))
    lock = BatchLock(ctx.conn, ctx.records.keys.api_batch_lock(tenant.name, record.id))
    record, created = ctx.records.create(record, claim, lock.owner, lock.ttl_ms)
    if not created:
        return record
    with lock:
        return start(ctx, record)


def key_budget(ctx: BatchContext, tenant: Tenant) -> str | None:
    """The key's --max-cost (USD), the cap its batch shares with the key's others; 429 `insufficient_quota`
    once the key's spend has reached it."""
    if tenant.max_cost is None:
        return None
    spent = ctx.keys.spent_pico(tenant.name)
    if spent >= to_pico(tenant.max_cost):
        raise ApiError(429, f"You exceeded the budget of key {tenant.name!r} ({tenant.max_cost} USD; spent "
                            f"{from_pico(spent):f} USD).", code="insufficient_quota", type="insufficient_quota")
    return format(tenant.max_cost, "f")


def start(ctx: BatchContext, record: BatchRecord) -> BatchRecord:
    """Validate the input file's lines and submit them, the batch's lock held: `in_progress`, or `failed`
    with the bad lines."""
    meta = ctx.files.get(record.tenant, record.input_file_id)
    if meta is None:
        return fail(ctx, record, [{"code": "invalid_file", "line": None, "param": "input_file_id",
                                   "message": f"The input file {record.input_file_id} was deleted or has expired."}])
    options = SubmitOptions(metadata={TENANT_TAG: record.tenant}, completion_window=WINDOW,
                            idempotency_key=f"api {record.tenant} {record.id}", endpoint=record.endpoint,
                            pool=record.tenant, pool_max_cost=Decimal(record.budget) if record.budget else None)
    registry = ctx.registry()  # (a broken registry file is the operator's 500, not the tenant's failed batch)
    try:
        submission = submit(ctx.conn, ctx.settings, registry, ctx.files.lines(meta), options, batch_id=record.id)
    except SubmissionRejected as exc:
        return fail(ctx, record, line_errors(exc.errors))
    except OTBError as exc:  # too many lines, Redis full or read-only
        code = "too_many_lines" if isinstance(exc, BatchTooLarge) else "server_error" if isinstance(exc, RedisRefused) else "invalid_file"
        return fail(ctx, record, [{"code": code, "line": None, "message": str(exc), "param": None}])
    models = submission.models
    started = ctx.records.update(record, "validating", status="in_progress", in_progress_at=int(clock.now()),
                                 model=next(iter(models)) if len(models) == 1 else None)
    if started is None:
        return ctx.records.get(record.tenant, record.id) or record
    if ctx.conn.hexists(ctx.records.keys.api_batch(record.tenant, record.id), "cancelling_at"):
        cancel(ctx.conn, ctx.settings, record.id)  # cancelled while it was validating
    return started


def fail(ctx: BatchContext, record: BatchRecord, errors: list[dict[str, Any]]) -> BatchRecord:
    failed = ctx.records.update(record, "validating", status="failed", failed_at=int(clock.now()), errors=errors)
    if failed is None:
        return ctx.records.get(record.tenant, record.id) or record
    ctx.ended(record.tenant, record.id, "failed")
    return failed


def line_errors(errors: list[LineError]) -> list[dict[str, Any]]:
    """OpenAI's `errors.data`: each bad line with its code, message and parameter (line None: the whole file)."""
    out = [{"code": e.error.code, "line": e.number or None, "message": for_http(e.error.message), "param": e.error.param}
           for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        out.append({"code": "too_many_errors", "line": None, "param": None,
                    "message": f"{len(errors) - MAX_ERRORS} more lines are invalid (the first {MAX_ERRORS} are listed)."})
    return out
