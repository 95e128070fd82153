"""The one module that knows Redis key names. Results are committed atomically and at most once.

Key layout (prefix `otb`, configurable), all expiring after `result_ttl` seconds:

    otb:batch:{id}            HASH   batch record: status, counts, cost/spend aggregates, options
    otb:batch:{id}:ids        LIST   custom_ids in input order
    otb:batch:{id}:requests   HASH   custom_id -> {"url", "body", "line"} as submitted
    otb:batch:{id}:results    HASH   custom_id -> result line (OpenAI batch output line + cost + meta)
    otb:batch:{id}:jobs       SET    ids of the RQ chunk jobs that carry its requests
    otb:batches               ZSET   batch ids by creation time
    otb:deadlines             ZSET   batch ids by the end of their completion window
    otb:lease:{job id}        STRING held by the process running a chunk; lapses within seconds of its death

Money in Redis is integer pico-dollars (1e-12 USD) so aggregates stay exact under HINCRBY.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from . import aggregates, clock
from .pricing import from_pico, normalize
from .schemas import COST_FIELDS

OUTCOMES = ("succeeded", "errored", "canceled", "expired")
TOKEN_FIELDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")

# Write a result once; count it once (batch counters and hourly aggregates); publish the event;
# close the batch when the last one lands.
# KEYS: results, batch, agg hour hash, agg hours index, batch events, global events
# ARGV: custom_id, line, outcome, ttl, now, n batch pairs, hour member, hour start, agg ttl, spend, pairs...
_COMMIT = """
if tonumber(ARGV[10]) > 0 then redis.call('HINCRBY', KEYS[2], 'spent_pico', ARGV[10]) end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
local split = 11 + 2 * tonumber(ARGV[6])
for i = 11, split - 1, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
for i = split, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[3], ARGV[9])
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[7])
redis.call('XADD', KEYS[5], '*', 'type', 'request', 'custom_id', ARGV[1], 'outcome', ARGV[3])
if redis.call('TTL', KEYS[5]) < 0 then redis.call('EXPIRE', KEYS[5], ARGV[4]) end
local h = redis.call('HMGET', KEYS[2], 'total', 'succeeded', 'errored', 'canceled', 'expired', 'status')
local done = (tonumber(h[2]) or 0) + (tonumber(h[3]) or 0) + (tonumber(h[4]) or 0) + (tonumber(h[5]) or 0)
if done >= (tonumber(h[1]) or 0) then
  local final = 'completed'
  if h[6] == 'cancelling' then final = 'cancelled' elseif h[6] == 'expiring' then final = 'expired' end
  redis.call('HSET', KEYS[2], 'status', final, 'completed_at', ARGV[5])
  local bid = redis.call('HGET', KEYS[2], 'id')
  redis.call('XADD', KEYS[5], '*', 'type', 'batch', 'batch', bid, 'status', final)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 'type', 'batch', 'batch', bid, 'status', final)
end
return 1
"""

# Take an errored result back (for `otb retry`) only if it is still the line we read, and its
# share of the aggregates with it. KEYS: results, batch, agg hour hash. ARGV: custom_id, line, outcome, pairs...
_UNCOMMIT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[3], -1)
redis.call('HSET', KEYS[2], 'status', 'in_progress')
redis.call('HDEL', KEYS[2], 'completed_at')
for i = 4, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Reserve a request's worst-case cost against the batch budget: committed + reserved + this <= max.
# KEYS: batch, reservations. ARGV: custom_id, pico, max pico, ttl. (Lua numbers are doubles: exact to $9,007.)
_RESERVE = """
local h = redis.call('HMGET', KEYS[1], 'cost_input_pico', 'cost_cache_read_pico', 'cost_cache_write_pico', 'cost_output_pico')
local used = 0
for i = 1, 4 do used = used + (tonumber(h[i]) or 0) end
redis.call('HDEL', KEYS[2], ARGV[1])
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(v) end
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# Move an open batch to a closing status (cancelling / expiring); a finished one stays as it is.
_CLOSE = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'in_progress' then redis.call('HSET', KEYS[1], 'status', ARGV[1]) return ARGV[1] end
return st
"""


@dataclass(frozen=True)
class Keys:
    prefix: str

    def batch(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}"

    def ids(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}:ids"

    def requests(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}:requests"

    def results(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}:results"

    def jobs(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}:jobs"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    def reservations(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}:reserved"

    def events(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}:events"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}:events"

    def agg_hour(self, hour: str) -> str:
        return f"{self.prefix}:agg:{hour}"

    @property
    def agg_hours(self) -> str:
        return f"{self.prefix}:agg:hours"

    def idempotency(self, digest: str) -> str:
        return f"{self.prefix}:idempotency:{digest}"

    @property
    def batches(self) -> str:
        return f"{self.prefix}:batches"

    @property
    def deadlines(self) -> str:
        return f"{self.prefix}:deadlines"


class Store:
    def __init__(self, conn: redis.Redis, prefix: str = "otb", ttl: int = 7 * 24 * 3600,
                 aggregate_ttl: int = 400 * 24 * 3600) -> None:
        self.conn = conn
        self.keys = Keys(prefix)
        self.ttl = ttl
        self.aggregate_ttl = aggregate_ttl
        self._commit = conn.register_script(_COMMIT)
        self._uncommit = conn.register_script(_UNCOMMIT)
        self._close = conn.register_script(_CLOSE)
        self._reserve = conn.register_script(_RESERVE)

    @classmethod
    def of(cls, conn: redis.Redis, settings: Any) -> "Store":
        """The store as configured (prefix, result and aggregate TTLs)."""
        return cls(conn, settings.key_prefix, settings.result_ttl, settings.aggregate_ttl)

    # -- submit -------------------------------------------------------------------------------
    def write_requests(self, pipe: Any, bid: str, requests: list[tuple[str, dict[str, Any]]]) -> None:
        """Request bodies; invisible until write_batch adds the record, and expiring if that never comes."""
        if requests:
            payload = {cid: json.dumps(req, separators=(",", ":")) for cid, req in requests}
            pipe.hset(self.keys.requests(bid), mapping=payload)
            pipe.expire(self.keys.requests(bid), self.ttl)

    def write_batch(
        self,
        pipe: Any,
        bid: str,
        record: Mapping[str, Any],
        rejected: list[tuple[str, str]],
        order: list[str],
    ) -> None:
        """Queue the batch record, results for refused lines, and the input order on `pipe`."""
        k = self.keys
        now = clock.now()
        fields = {k_: _scalar(v) for k_, v in record.items()}
        fields.update(total=len(order), succeeded=0, errored=len(rejected), canceled=0, expired=0)
        pipe.hset(k.batch(bid), mapping=fields)
        for start in range(0, len(order), 1000):
            pipe.rpush(k.ids(bid), *order[start : start + 1000])
        if rejected:
            pipe.hset(k.results(bid), mapping=dict(rejected))
            for cid, raw in rejected:
                line = json.loads(raw)
                hour, start = aggregates.hour_of(_committed_at(line))  # the same hour `uncommit` will use
                flat = aggregates.increments(bid, line)
                for i in range(0, len(flat), 2):
                    pipe.hincrby(k.agg_hour(hour), flat[i], flat[i + 1])
                pipe.expire(k.agg_hour(hour), self.aggregate_ttl)
                pipe.zadd(k.agg_hours, {hour: start})
                pipe.xadd(k.events(bid), {"type": "request", "custom_id": cid, "outcome": "errored"})
        if len(order) == len(rejected):
            pipe.hset(k.batch(bid), mapping={"status": "completed", "completed_at": now})
            pipe.xadd(k.events(bid), {"type": "batch", "batch": bid, "status": "completed"})
            pipe.xadd(k.all_events, {"type": "batch", "batch": bid, "status": "completed"}, maxlen=10000, approximate=True)
        for key in (k.batch(bid), k.ids(bid), k.requests(bid), k.results(bid), k.events(bid)):
            pipe.expire(key, self.ttl)
        pipe.zadd(k.batches, {bid: now})
        if record.get("expires_at"):
            pipe.zadd(k.deadlines, {bid: float(record["expires_at"])})

    def add_jobs(self, pipe: Any, bid: str, job_ids: list[str]) -> None:
        if job_ids:
            pipe.sadd(self.keys.jobs(bid), *job_ids)
            pipe.expire(self.keys.jobs(bid), self.ttl)

    # -- work ---------------------------------------------------------------------------------
    def load_requests(self, bid: str, custom_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        raw = self.conn.hmget(self.keys.requests(bid), custom_ids) if custom_ids else []
        return {cid: (json.loads(r) if r is not None else None) for cid, r in zip(custom_ids, raw)}

    def done_ids(self, bid: str, custom_ids: list[str]) -> set[str]:
        """Which of these already have a final result (so a re-run never calls or bills them again)."""
        if not custom_ids:
            return set()
        pipe = self.conn.pipeline(transaction=False)
        for cid in custom_ids:
            pipe.hexists(self.keys.results(bid), cid)
        return {cid for cid, exists in zip(custom_ids, pipe.execute()) if exists}

    def commit(
        self,
        bid: str,
        custom_id: str,
        line: dict[str, Any],
        outcome: str,
        cost_pico: Mapping[str, int],
        tokens: Mapping[str, int],
        *,
        spend_pico: int = 0,
    ) -> bool:
        """Store one final result and fold it into the batch aggregates; False if one was already there.

        `spend_pico` (what the provider billed for this call) is counted either way: a call sent twice
        is paid twice, even though only one result is kept.
        """
        assert outcome in OUTCOMES
        increments: list[Any] = []
        for name, value in cost_pico.items():
            if value:
                increments += [f"cost_{name}_pico", value]
        for name, value in tokens.items():
            if value:
                increments += [name, value]
        now = _committed_at(line)  # the line's own time decides its hour, here and in `uncommit`
        hour, start = aggregates.hour_of(now)
        args = [custom_id, json.dumps(line, separators=(",", ":")), outcome, self.ttl, f"{now:.3f}",
                len(increments) // 2, hour, start, self.aggregate_ttl, spend_pico]
        k = self.keys
        keys = [k.results(bid), k.batch(bid), k.agg_hour(hour), k.agg_hours, k.events(bid), k.all_events]
        return bool(self._commit(keys=keys, args=args + increments + aggregates.increments(bid, line)))

    def uncommit(self, bid: str, custom_id: str, line_json: str, outcome: str) -> bool:
        """Remove one final result so the request can run again; False if it changed meanwhile."""
        k = self.keys
        line = json.loads(line_json)
        hour, _ = aggregates.hour_of(_committed_at(line))
        undo = aggregates.increments(bid, line, sign=-1)
        return bool(self._uncommit(keys=[k.results(bid), k.batch(bid), k.agg_hour(hour)],
                                   args=[custom_id, line_json, outcome, *undo]))

    def close(self, bid: str, closing: str) -> str | None:
        """in_progress -> `closing` (cancelling / expiring); returns the status the batch now has."""
        got = self._close(keys=[self.keys.batch(bid)], args=[closing])
        return _text(got) if got is not None else None

    def raw_results(self, bid: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.conn.hgetall(self.keys.results(bid)).items()}

    def reserve(self, bid: str, custom_id: str, pico: int, max_pico: int) -> bool:
        """Hold `pico` of the batch budget for a call about to be sent; False if it would pass the budget."""
        k = self.keys
        return bool(self._reserve(keys=[k.batch(bid), k.reservations(bid)], args=[custom_id, pico, max_pico, self.ttl]))

    def release(self, bid: str, custom_id: str) -> None:
        self.conn.hdel(self.keys.reservations(bid), custom_id)

    # -- read ---------------------------------------------------------------------------------
    def batch(self, bid: str) -> dict[str, str] | None:
        raw = self.conn.hgetall(self.keys.batch(bid))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    def status(self, bid: str) -> dict[str, Any] | None:
        """Status with request counts and exact cost so far (decimal strings)."""
        raw = self.batch(bid)
        if raw is None:
            return None
        counts = {name: int(raw.get(name, 0)) for name in ("total", *OUTCOMES)}
        counts["processing"] = counts["total"] - sum(counts[o] for o in OUTCOMES)
        buckets = [n for n in COST_FIELDS if n != "total"]
        cost = {n: from_pico(int(raw.get(f"cost_{n}_pico", 0))) for n in buckets}
        cost["total"] = normalize(sum(cost.values(), Decimal(0)))
        return {
            "id": bid,
            "object": "otb.batch_status",  # not an OpenAI Batch object: our own counts and costs
            "status": raw.get("status", "unknown"),
            "created_at": _float(raw.get("created_at")),
            "expires_at": _float(raw.get("expires_at")),
            "completed_at": _float(raw.get("completed_at")),
            "request_counts": counts,
            "cost": {n: format(v, "f") for n, v in cost.items()},
            "spent": format(from_pico(int(raw.get("spent_pico", 0))), "f"),
            "max_cost": format(from_pico(int(raw["max_cost_pico"])), "f") if raw.get("max_cost_pico") else None,
            "usage": {n: int(raw.get(n, 0)) for n in TOKEN_FIELDS},
            "metadata": json.loads(raw.get("metadata", "{}") or "{}"),
            "parked": {"requests": int(raw["parked"]), "until": _float(raw.get("parked_until")),
                       "reason": raw.get("parked_reason")} if int(raw.get("parked", 0) or 0) > 0 else None,
        }

    def iter_results(self, bid: str, page: int = 500) -> Iterator[dict[str, Any] | None]:
        """Result lines in input order; None for a request that has no result yet."""
        k = self.keys
        total = self.conn.llen(k.ids(bid))
        for start in range(0, total, page):
            ids = [_text(i) for i in self.conn.lrange(k.ids(bid), start, start + page - 1)]
            for raw in self.conn.hmget(k.results(bid), ids):
                yield json.loads(raw) if raw is not None else None

    def batch_ids(self) -> list[str]:
        return [_text(b) for b in self.conn.zrange(self.keys.batches, 0, -1)]


def _committed_at(line: dict[str, Any]) -> float:
    stamp = (line.get("meta") or {}).get("completed_at")
    return dt.datetime.fromisoformat(stamp).timestamp() if stamp else clock.now()


def _scalar(v: Any) -> Any:
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, bool):
        return int(v)
    return v


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _float(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None
