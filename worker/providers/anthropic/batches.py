"""Facts of Anthropic's Message Batches API (pure: no I/O; worker/native sends the calls).

A batch takes at most 100,000 requests or 256 MB; each request's `custom_id` must match
`^[a-zA-Z0-9_-]{1,64}$`; `params` is the body a Messages call takes, minus what batches refuse.
An `errored` result carries the error body without its HTTP status: the error type says it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...errors import InvalidRequest, RequestFailed
from .response import parse_error

PATH = "/v1/messages/batches"
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024**2
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Body fields a Messages call may carry that a batch request refuses (only when the whole batch ends).
NOT_IN_BATCHES = {"stream": "batches do not stream", "speed": "fast mode is not available in batches",
                  "store": "batches do not store threads", "previous_thread_event_id": "batches do not store threads",
                  "cache_hint": "not accepted in batches", "context_hint": "not accepted in batches",
                  "research_preview_2026_02": "not accepted in batches"}
STATUS_OF_TYPE = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                  "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                  "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}
ENDED = "ended"


def batch_params(body: dict[str, Any], *, drop_unsupported: bool) -> tuple[dict[str, Any], list[str]]:
    """A Messages body as a batch request's `params`, and what was dropped; refuses what batches do not
    accept unless `drop_unsupported` (a batch would reject it only after the whole batch ends)."""
    refused = [name for name in NOT_IN_BATCHES if body.get(name) not in (None, False)]
    if body.get("max_tokens") == 0:
        refused.append("max_tokens")
    if not refused:
        return body, []
    if not drop_unsupported:
        name = refused[0]
        why = NOT_IN_BATCHES.get(name, "max_tokens 0 is not accepted in batches")
        raise InvalidRequest(f"{name}: {why} (Message Batches); pass --drop-unsupported-params to send the request "
                             "without it, or submit with --mode realtime", param=name)
    return {k: v for k, v in body.items() if k not in refused}, refused


def result_error(result: dict[str, Any]) -> RequestFailed:
    """An `errored` result as the error its Messages call would have answered (status from its type)."""
    body = result.get("error")
    body = body if isinstance(body, dict) else {}
    inner = body.get("error")
    inner = inner if isinstance(inner, dict) else {}
    status = STATUS_OF_TYPE.get(str(inner.get("type")), 500)
    return parse_error(status, {}, json.dumps(body).encode())


def sent_id(marker: str, position: int) -> str:
    """The custom_id sent for the request at `position` of a provider batch: `{marker}_{position}`."""
    cid = f"{marker}_{position}"
    assert CUSTOM_ID.match(cid), cid
    return cid


def position_of(marker: str, sent: str) -> int | None:
    """Back from a sent custom_id to its position; None for one this batch did not send."""
    head, _, tail = sent.rpartition("_")
    return int(tail) if head == marker and tail.isdigit() else None
