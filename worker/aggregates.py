"""Running cost aggregates, kept in Redis as results are committed, so reports never read every result.

    otb:agg:{YYYYMMDDHH}   HASH  "{batch}␟{model}␟{billed model}␟{tags json}␞{counter}" -> integer
    otb:agg:hours          ZSET  hour keys scored by the hour's start (unix seconds)

One hash per UTC hour: a report over a time range reads only the hours in it (hour resolution),
and regroups by day in any time zone. Counters are integers (tokens, requests, pico-dollars), so
sums are exact. They are updated in the same Lua script that commits the result, so a result and
its share of the aggregates land together or not at all.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from .pricing import to_pico

DIM_SEP, FIELD_SEP = "\x1f", "\x1e"
COUNTERS = ("requests", "succeeded", "errored", "canceled", "expired", "input_tokens", "cache_read_tokens",
            "cache_write_tokens", "output_tokens", "reasoning_tokens", "cost_input_pico", "cost_cache_read_pico",
            "cost_cache_write_pico", "cost_output_pico")


def hour_of(ts: float) -> tuple[str, int]:
    """The hour bucket (key suffix, start as unix seconds) a commit at `ts` falls in."""
    start = int(ts // 3600 * 3600)
    return dt.datetime.fromtimestamp(start, dt.timezone.utc).strftime("%Y%m%d%H"), start


def dims(batch_id: str, line: dict[str, Any]) -> str:
    meta = line.get("meta") or {}
    model = meta.get("model") or "(invalid line)"
    billed = meta.get("billed_model") or model
    tags = json.dumps(meta.get("tags") or {}, sort_keys=True, separators=(",", ":"))
    return DIM_SEP.join((batch_id, model, billed, tags))


def counters(line: dict[str, Any]) -> dict[str, int]:
    """What one result line adds to the aggregates: every figure traceable to the line itself."""
    meta = line.get("meta") or {}
    usage = meta.get("usage") or {}
    out = {"requests": 1, meta.get("outcome", "errored"): 1}
    out["input_tokens"] = int(usage.get("input_tokens", 0))
    out["cache_read_tokens"] = int(usage.get("cache_read_tokens", 0))
    out["cache_write_tokens"] = int(usage.get("cache_write_5m_tokens", 0)) + int(usage.get("cache_write_1h_tokens", 0))
    out["output_tokens"] = int(usage.get("output_tokens", 0))
    out["reasoning_tokens"] = int(usage.get("reasoning_tokens", 0))
    for bucket in ("input", "cache_read", "cache_write", "output"):
        out[f"cost_{bucket}_pico"] = to_pico(Decimal(line["cost"][bucket]))
    code = error_code(line)
    if code:
        out[f"err:{code}"] = 1
    return {k: v for k, v in out.items() if v}


def error_code(line: dict[str, Any]) -> str | None:
    if (line.get("meta") or {}).get("outcome") == "succeeded":
        return None
    if line.get("error"):
        return line["error"].get("code")
    body = (line.get("response") or {}).get("body") or {}
    return (body.get("error") or {}).get("code") or "unknown"


def increments(batch_id: str, line: dict[str, Any], sign: int = 1) -> list[Any]:
    """Flat [field, amount, ...] for HINCRBY, for this line's dimensions."""
    prefix = dims(batch_id, line) + FIELD_SEP
    flat: list[Any] = []
    for name, value in counters(line).items():
        flat += [prefix + name, sign * value]
    return flat


def parse_field(field: str) -> tuple[dict[str, Any], str]:
    """Back from a hash field to its dimensions and counter name."""
    dim, counter = field.split(FIELD_SEP, 1)
    batch, model, billed, tags = dim.split(DIM_SEP, 3)
    return {"batch": batch, "model": model, "billed_model": billed, "tags": json.loads(tags)}, counter
