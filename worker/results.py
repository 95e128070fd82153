"""Build result lines: the OpenAI batch output line format plus our `cost` and `meta`.

    {"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
     "error": {"code", "message"} | null,
     "cost": {"input", "cache_read", "cache_write", "output", "total"},   # decimal strings, USD
     "meta": {"model", "billed_model", "outcome", "usage", "attempts", "dropped_params", "notes", "completed_at"}}

As in OpenAI's format, an answer with an error status carries it in `response` (status_code and
error body `{"error": {"message", "type", "param", "code"}}`, param null when none) and `error` is
null; `error` is set when no HTTP answer exists (transport failure, cancel, expiry).
"""

from __future__ import annotations

import hashlib
from typing import Any

from . import clock
from .errors import NO_ANSWER_CODES, OUTCOME_BY_CODE, ProtocolError, RequestFailed, TransportError
from .schemas import Cost, Usage

ZERO_COST = Cost().as_strings()


def line_id(batch_id: str, custom_id: str) -> str:
    """Stable per request, so a re-run writes the same id."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).hexdigest()[:24]


def success_line(
    batch_id: str,
    custom_id: str,
    body: dict[str, Any],
    *,
    request_id: str | None,
    usage: Usage,
    cost: Cost,
    meta: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": line_id(batch_id, custom_id),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": None,
        "cost": cost.as_strings(),
        "meta": _meta(meta, "succeeded", usage),
    }


def error_line(batch_id: str, custom_id: str, error: RequestFailed, meta: dict[str, Any]) -> dict[str, Any]:
    no_answer = isinstance(error, (TransportError, ProtocolError)) or error.code in NO_ANSWER_CODES
    return {
        "id": line_id(batch_id, custom_id),
        "custom_id": custom_id,
        "response": None
        if no_answer
        else {"status_code": error.status_code, "request_id": error.request_id, "body": error_body(error)},
        "error": {"code": error.code, "message": error.message} if no_answer else None,
        "cost": dict(ZERO_COST),
        "meta": _meta(meta, OUTCOME_BY_CODE.get(error.code, "errored"), None),
    }


def error_body(error: RequestFailed) -> dict[str, Any]:
    """The error body as OpenAI writes it in an error file: all four fields, `param` null when none."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def _meta(meta: dict[str, Any], outcome: str, usage: Usage | None) -> dict[str, Any]:
    out = {"outcome": outcome, **meta}
    if usage is not None:
        out["usage"] = dict(usage.__dict__)  # its fields, as model_dump gives them (plain ints and a bool), at a fifth of the cost
    out["completed_at"] = clock.utcnow().isoformat(timespec="milliseconds")
    return out
