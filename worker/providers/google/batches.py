"""Facts of Gemini Batch Mode and the Files API (pure: no I/O; worker/native sends the calls).

One model per job; file mode: JSONL lines `{"key", "request"}` uploaded through the resumable Files
API, output lines carrying the same `key`. States come as `BATCH_STATE_*` (REST) or `JOB_STATE_*`
(SDK types): both are read. A job pending or running for 48 h ends EXPIRED with no results at all.

Embeddings go to `models/{model}:asyncBatchEmbedContent`, the same job resource: one file line per
input text, its `request` an EmbedContentRequest without `model` (the URL names it, as python-genai
sends it), its output line `{key, response: {embedding: {values}, tokenCount}}` or `{key, error}`. An
OpenAI embeddings line may hold many inputs, so its keys are `{position}.{index}.{inputs}`: the output
joins back to the line, and a line counts as answered only when every one of its inputs came back.
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


EMBED_CALL = ":batchEmbedContents"


def create_path(call_path: str) -> str:
    """The batch create of the model a generateContent (or batchEmbedContents) path names."""
    if is_embedding(call_path):
        return call_path.replace(EMBED_CALL, ":asyncBatchEmbedContent")
    return call_path.replace(":generateContent", ":batchGenerateContent")


def is_embedding(call_path: str) -> bool:
    return call_path.endswith(EMBED_CALL)


def embed_requests(call_bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The EmbedContentRequests of a line's batchEmbedContents calls, in input order, without `model`."""
    return [{k: v for k, v in item.items() if k != "model"} for body in call_bodies for item in body["requests"]]


def embed_key(position: int, index: int, inputs: int) -> str:
    return f"{position}.{index}.{inputs}"


def parse_embed_key(key: object) -> tuple[int, int, int] | None:
    """(position, index, inputs) of a key this project wrote; None for anything else."""
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    position, index, inputs = (int(p) for p in parts)
    if embed_key(position, index, inputs) != key or not 0 <= index < inputs:
        return None
    return position, index, inputs


def embed_answer(responses: list[dict[str, Any]]) -> dict[str, Any]:
    """A line's per-input answers as the one batchEmbedContents answer the adapter parses; their
    `tokenCount`s (int64, a string in JSON) become its reported usage when every input has one."""
    answer: dict[str, Any] = {"embeddings": [r.get("embedding") for r in responses]}
    counts = [r.get("tokenCount") for r in responses]
    if all(isinstance(c, int) and not isinstance(c, bool) or isinstance(c, str) and c.isdigit() for c in counts):
        answer["usageMetadata"] = {"promptTokenCount": sum(int(str(c)) for c in counts)}
    return answer


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
