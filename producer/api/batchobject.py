"""OpenAI's Batch object from our two records: the API's (batchrecords.py) and the engine's status (Store.status).

Only OpenAI's status values leave the server. While the engine runs, its statuses map onto them:
`in_progress` → in_progress; `cancelling` → cancelling; `expiring` (the window has ended, calls in
flight finish) → in_progress, since the results are not being prepared yet; an engine that is done
(`completed`, `expired`) → finalizing until the output files are written, then that status; a
cancelled one stays `cancelling` until it is `cancelled` (OpenAI's batches never pass through
`finalizing` on the way, and carry no `finalizing_at`); `lost` (Redis lost part of the batch) and
an engine record that is gone → failed, with the reason in `errors`. Pure: no Redis here.
"""

from __future__ import annotations

from typing import Any

from .batchrecords import TIMES, BatchRecord

ZERO_COST = {"input": "0", "cache_read": "0", "cache_write": "0", "output": "0", "total": "0"}
ENDED = {"completed": "completed", "cancelled": "cancelled", "expired": "expired"}


def final_status(engine: dict[str, Any] | None) -> str | None:
    """The OpenAI status a batch ends in once the engine is done with it; None while it runs."""
    if engine is None or engine["status"] == "lost":
        return "failed"
    return ENDED.get(engine["status"])


def lost_error(engine: dict[str, Any] | None) -> dict[str, Any]:
    """Why an engine batch that vanished, whole or in part, ends `failed`."""
    message = (engine or {}).get("lost", {}).get("message") or (
        "the batch's records are gone from Redis (expired after OTB_RESULT_TTL, evicted, or lost in a restart)")
    return {"code": "batch_lost", "line": None, "message": message, "param": None}


def openai_status(record: BatchRecord, engine: dict[str, Any] | None) -> str:
    if record.status == "validating" and "cancelling_at" in record.times:
        return "cancelling"  # cancelled while its file was read: cancelled as soon as it is submitted
    if record.status != "in_progress":
        return record.status
    final = final_status(engine)
    if final == "cancelled" or (final is None and "cancelling_at" in record.times):
        return "cancelling"
    if final is not None:
        return "finalizing"
    assert engine is not None
    return "cancelling" if engine["status"] == "cancelling" else "in_progress"


def figures(engine: dict[str, Any] | None) -> dict[str, Any]:
    """request_counts, usage and cost as OpenAI (and our extra `cost`) show them.

    `completed` counts the 2xx answers (the output file's lines), `failed` everything else that
    ended (refused, errored, cancelled, expired: the error file's lines). Our token buckets are
    disjoint; OpenAI's input_tokens count cached and cache-written tokens too.
    """
    if engine is None:
        return {"request_counts": {"total": 0, "completed": 0, "failed": 0}, "usage": usage_of({}), "cost": dict(ZERO_COST)}
    counts = engine["request_counts"]
    failed = sum(counts[n] for n in ("errored", "canceled", "expired"))
    return {"request_counts": {"total": counts["total"], "completed": counts["succeeded"], "failed": failed},
            "usage": usage_of(engine["usage"]), "cost": dict(engine["cost"])}


def usage_of(tokens: dict[str, int]) -> dict[str, Any]:
    prompt = sum(tokens.get(n, 0) for n in ("input_tokens", "cache_read_tokens", "cache_write_tokens"))
    output = tokens.get("output_tokens", 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": tokens.get("cache_read_tokens", 0)},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": tokens.get("reasoning_tokens", 0)},
            "total_tokens": prompt + output}


def to_openai(record: BatchRecord, engine: dict[str, Any] | None) -> dict[str, Any]:
    """The Batch object: frozen figures once final, else the engine's live ones."""
    status = openai_status(record, engine)
    times = {name: record.times.get(name) for name in TIMES}
    if status == "finalizing" and times["finalizing_at"] is None and engine and engine.get("completed_at"):
        times["finalizing_at"] = int(engine["completed_at"])
    live = record.figures or figures(engine if record.status == "in_progress" else None)
    return {
        "id": record.id, "object": "batch", "endpoint": record.endpoint,
        "errors": {"object": "list", "data": record.errors} if record.errors else None,
        "input_file_id": record.input_file_id, "completion_window": record.completion_window, "status": status,
        "output_file_id": record.output_file_id, "error_file_id": record.error_file_id,
        "created_at": record.created_at, "expires_at": record.expires_at, **times,
        "request_counts": live["request_counts"], "metadata": record.metadata, "model": record.model,
        "usage": live["usage"], "cost": live["cost"],
    }
