"""Running cost aggregates, kept in Redis as results are committed, so reports never read every result.

    otb:agg:{YYYYMMDDHH}   HASH  "{model}␟{billed model}␟{tags json}␞{counter}" -> integer   (OTB_AGGREGATE_TTL)
    otb:agg:hours          ZSET  hour keys scored by the hour's start (unix seconds), pruned with them
    otb:batch:{id}:agg     HASH  "{YYYYMMDDHH}␟{model}␟{billed model}␟{tags json}␞{counter}" -> integer
                                 (one batch's share, expiring with the batch: `--batch`, `--by batch`)

One hash per UTC hour: a report over a time range reads only the hours in it (hour resolution),
and regroups by day in any time zone. The long-lived hourly hashes hold no batch id, so they grow
with the groups (model, billed model, tags), never with the number of batches: an app that submits
one request per batch leaves nothing behind per request once its batches expire. Counters are
integers (tokens, requests, pico-dollars), so sums are exact. They are updated in the same Lua
script that commits the result, so a result and its share of the aggregates land together or not at all.

Fields written before 2026-12 carry the batch id first (`{batch}␟{model}␟...`); parse_field reads both.
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


def dims(line: dict[str, Any]) -> str:
    meta = line.get("meta") or {}
    model = meta.get("model") or "(invalid line)"
    billed = meta.get("billed_model") or model
    tags = json.dumps(meta.get("tags") or {}, sort_keys=True, separators=(",", ":"))
    return DIM_SEP.join((model, billed, tags))


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


def increments(line: dict[str, Any], sign: int = 1) -> list[Any]:
    """Flat [field, amount, ...] for HINCRBY on the hourly hash, for this line's dimensions."""
    prefix = dims(line) + FIELD_SEP
    flat: list[Any] = []
    for name, value in counters(line).items():
        flat += [prefix + name, sign * value]
    return flat


def batch_field(hour: str, field: str) -> str:
    """The per-batch hash's field for an hourly field: the hour goes first (the commit script does the same)."""
    return hour + DIM_SEP + field


def parse_field(field: str, batch: str | None = None) -> tuple[dict[str, Any], str]:
    """Back from an hourly hash field to its dimensions and counter name (`batch` None: not recorded)."""
    dim, counter = field.split(FIELD_SEP, 1)
    parts = dim.split(DIM_SEP)  # tags are JSON, where a raw separator cannot occur
    if len(parts) == 4:  # written before the batch id left the hourly hashes
        batch, parts = parts[0], parts[1:]
    model, billed, tags = parts
    return {"batch": batch, "model": model, "billed_model": billed, "tags": json.loads(tags)}, counter


def parse_batch_field(field: str, batch: str) -> tuple[str, dict[str, Any], str]:
    """Back from a per-batch hash field to (hour, dimensions, counter)."""
    hour, rest = field.split(DIM_SEP, 1)
    dims_, counter = parse_field(rest, batch)
    return hour, dims_, counter
