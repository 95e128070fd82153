"""Running cost aggregates, kept in Redis as results are committed, so reports never read every result.

    otb:agg:{YYYYMMDDHH}   HASH  "{model}␟{billed model}␟{tags json}[␟{route}]␞{counter}" -> integer   (OTB_AGGREGATE_TTL)
    otb:agg:hours          ZSET  hour keys scored by the hour's start (unix seconds), pruned with them
    otb:batch:{id}:agg     HASH  "{YYYYMMDDHH}␟{model}␟{billed model}␟{tags json}[␟{route}]␞{counter}" -> integer
                                 (one batch's share, expiring with the batch: `--batch`, `--by batch`)

One hash per UTC hour: a report over a time range reads only the hours in it (hour resolution),
and regroups by day in any time zone. The long-lived hourly hashes hold no batch id, so they grow
with the groups (model, billed model, tags), never with the number of batches: an app that submits
one request per batch leaves nothing behind per request once its batches expire. Counters are
integers (tokens, requests, pico-dollars), so sums are exact. They are updated in the same Lua
script that commits the result, so a result and its share of the aggregates land together or not at all.

Fields written before 2026-12 carry the batch id first (`{batch}␟{model}␟...`); parse_field reads both. The
route (`flex`, `native`) ends the dimensions of lines that did not run in real time; none means realtime.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .money import COST_BUCKETS, to_pico

DIM_SEP, FIELD_SEP = "\x1f", "\x1e"

# The one list of token counters (batch record, aggregates, reports, status), each with the Usage
# fields it adds up: cache writes of both lifetimes are one counter.
TOKEN_COUNTERS: dict[str, tuple[str, ...]] = {
    "input_tokens": ("input_tokens",),
    "cache_read_tokens": ("cache_read_tokens",),
    "cache_write_tokens": ("cache_write_5m_tokens", "cache_write_1h_tokens"),
    "output_tokens": ("output_tokens",),
    "reasoning_tokens": ("reasoning_tokens",),
}
COST_COUNTERS = tuple(f"cost_{bucket}_pico" for bucket in COST_BUCKETS)
SAVED_COUNTER = "saved_pico"  # what the lines would have cost at standard prices, less what they cost
ROUTE_COUNTERS = {"flex": "via_flex", "native": "via_native"}  # succeeded lines by route (realtime: the rest)
RECORD_COUNTERS = (*TOKEN_COUNTERS, *COST_COUNTERS, SAVED_COUNTER, *ROUTE_COUNTERS.values())  # besides outcomes


_last_hour: tuple[int, str] = (-1, "")  # the hour asked for last: every result of a run falls in a few


def hour_of(ts: float) -> tuple[str, int]:
    """The hour bucket (key suffix, start as unix seconds) a commit at `ts` falls in."""
    global _last_hour
    start = int(ts // 3600 * 3600)
    last = _last_hour  # one read: another thread may set it meanwhile
    if last[0] != start:
        last = _last_hour = (start, dt.datetime.fromtimestamp(start, dt.timezone.utc).strftime("%Y%m%d%H"))
    return last[1], start


def dims(line: dict[str, Any]) -> str:
    """model␟billed model␟tags, and ␟route for a line that did not run in real time (so the fields of
    real-time lines are what they were before routes existed)."""
    meta = line.get("meta") or {}
    model = meta.get("model") or "(invalid line)"
    billed = meta.get("billed_model") or model
    tags = json.dumps(meta.get("tags") or {}, sort_keys=True, separators=(",", ":"))
    route = meta.get("route")
    return DIM_SEP.join((model, billed, tags, route) if route and route != "realtime" else (model, billed, tags))


def token_counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """The token counters of a usage (a result's `meta.usage`, Usage's fields)."""
    return {counter: sum(int(usage.get(name, 0)) for name in fields) for counter, fields in TOKEN_COUNTERS.items()}


def cost_counts(cost: Mapping[str, Any]) -> dict[str, int]:
    """A result's cost (decimal strings or Decimals by bucket) as integer pico-dollars: the one
    conversion of a committed cost, for the batch record and the aggregates alike."""
    return {f"cost_{bucket}_pico": to_pico(Decimal(cost[bucket])) for bucket in COST_BUCKETS}


def counters(line: dict[str, Any]) -> dict[str, int]:
    """What one result line adds to the counters: every figure traceable to the line itself.

    The commit takes the batch record's sums (RECORD_COUNTERS) and the aggregates' from this one
    reading of the line, so the two can never disagree. Zeros are left out.
    """
    meta = line.get("meta") or {}
    out = {"requests": 1, meta.get("outcome", "errored"): 1}
    out.update(token_counts(meta.get("usage") or {}))
    out.update(cost_counts(line["cost"]))
    out[SAVED_COUNTER] = to_pico(Decimal(meta.get("saved") or 0))
    if meta.get("outcome") == "succeeded" and meta.get("route") in ROUTE_COUNTERS:
        out[ROUTE_COUNTERS[meta["route"]]] = 1  # only succeeded lines: `otb retry` takes back errored ones alone
    code = error_code(line)
    if code:
        out[f"err:{code}"] = 1
    return {k: v for k, v in out.items() if v}


def error_code(line: dict[str, Any]) -> str | None:
    if (line.get("meta") or {}).get("outcome") == "succeeded":
        return None
    if line.get("error"):
        code = line["error"].get("code")
        return str(code) if code is not None else None
    body = (line.get("response") or {}).get("body") or {}
    return str((body.get("error") or {}).get("code") or "unknown")


def increments(line: dict[str, Any], sign: int = 1, counts: Mapping[str, int] | None = None) -> list[Any]:
    """Flat [field, amount, ...] for HINCRBY on the hourly hash, for this line's dimensions
    (`counts`: the line's counters, when the caller has read them already)."""
    prefix = dims(line) + FIELD_SEP
    flat: list[Any] = []
    for name, value in (counters(line) if counts is None else counts).items():
        flat += [prefix + name, sign * value]
    return flat


def batch_field(hour: str, field: str) -> str:
    """The per-batch hash's field for an hourly field: the hour goes first (the commit script does the same)."""
    return hour + DIM_SEP + field


def parse_field(field: str, batch: str | None = None) -> tuple[dict[str, Any], str]:
    """Back from an hourly hash field to its dimensions and counter name (`batch` None: not recorded)."""
    dim, counter = field.split(FIELD_SEP, 1)
    parts = dim.split(DIM_SEP)  # tags are JSON, where a raw separator cannot occur
    if len(parts) == 4 and parts[3].startswith("{"):  # written before the batch id left the hourly hashes
        batch, parts = parts[0], parts[1:]
    model, billed, tags, *route = parts
    return {"batch": batch, "model": model, "billed_model": billed, "tags": json.loads(tags),
            "route": route[0] if route else "realtime"}, counter


def parse_batch_field(field: str, batch: str) -> tuple[str, dict[str, Any], str]:
    """Back from a per-batch hash field to (hour, dimensions, counter)."""
    hour, rest = field.split(DIM_SEP, 1)
    dims_, counter = parse_field(rest, batch)
    return hour, dims_, counter
