"""Facts of Gemini Batch Mode and the Files API (pure: no I/O; worker/native sends the calls).

One model per job; file mode: JSONL lines `{"key", "request"}` uploaded through the resumable Files
API, output lines carrying the same `key`. States come as `BATCH_STATE_*` (REST) or `JOB_STATE_*`
(SDK types): both are read. A job pending or running for 48 h ends EXPIRED with no results at all.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import RequestFailed
from .response import parse_error

UPLOAD_PATH = "/upload/{version}/files"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"}
ENDED_WITHOUT_RESULTS = {"FAILED", "EXPIRED"}


def state_of(operation: dict[str, Any]) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED or EXPIRED, whichever spelling the job used."""
    raw = str((operation.get("metadata") or {}).get("state") or "PENDING")
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        if raw.startswith(prefix):
            return raw[len(prefix):]
    return raw


def create_path(call_path: str) -> str:
    """The batch create of the model a generateContent path names."""
    return call_path.replace(":generateContent", ":batchGenerateContent")


def create_body(display_name: str, file_name: str) -> dict[str, Any]:
    return {"batch": {"displayName": display_name, "inputConfig": {"fileName": file_name}}}


def display_name(operation: dict[str, Any]) -> str | None:
    name = (operation.get("metadata") or {}).get("displayName")
    return name if isinstance(name, str) else None


def responses_file(operation: dict[str, Any]) -> str | None:
    """The output file of a SUCCEEDED job (also shown in metadata.output)."""
    for holder in (operation.get("response") or {}, (operation.get("metadata") or {}).get("output") or {}):
        name = holder.get("responsesFile")
        if isinstance(name, str):
            return name
    return None


def stats(operation: dict[str, Any]) -> dict[str, int]:
    raw = (operation.get("metadata") or {}).get("batchStats") or {}
    return {k: int(v) for k, v in raw.items() if str(v).isdigit()}


def line_error(error: dict[str, Any]) -> RequestFailed:
    """An output line's `error` (a google.rpc.Status) as the error its generateContent call would answer."""
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return parse_error(status, {}, json.dumps({"error": error}).encode())
