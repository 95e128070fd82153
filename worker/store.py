"""The one module that knows Redis key names. Results are committed atomically and at most once.

Key layout (prefix `otb`, configurable). A batch's keys all end together, `result_ttl` seconds after
its submit (each key written later takes the record's remaining lifetime), and the indexes drop a
batch when it ends:

    otb:batch:{id}            HASH   batch record: status, counts, cost/spend aggregates, options
    otb:batch:{id}:ids        LIST   custom_ids in input order
    otb:batch:{id}:requests   HASH   custom_id -> {"url", "body", "line"} as submitted
    otb:batch:{id}:results    HASH   custom_id -> result line (OpenAI batch output line + cost + meta)
    otb:batch:{id}:jobs       SET    ids of the RQ chunk jobs that carry its requests
    otb:batch:{id}:agg        HASH   the batch's aggregates by hour (`otb report --batch / --by batch`)
    otb:batch:{id}:reserved   HASH   budget holds of calls in flight (--max-cost)
    otb:batch:{id}:answers    SET    extra provider answers already counted in `spent` (duplicate runs)
    otb:batches               ZSET   batch ids by creation time (Redis TIME), pruned as batches expire
    otb:open                  ZSET   batches not finished yet (the janitor's rounds)
    otb:deadlines             ZSET   batch ids by the end of their completion window
    otb:lease:{job id}        STRING held by the process running a chunk; lapses within seconds of its death

Money in Redis is integer pico-dollars (1e-12 USD) so aggregates stay exact under HINCRBY.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from . import aggregates, clock
from .pricing import from_pico, normalize
from .schemas import COST_FIELDS

OUTCOMES = ("succeeded", "errored", "canceled", "expired")
log = logging.getLogger("otb.store")

TOKEN_FIELDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")

# Write a result once; count it once (batch counters, hourly and per-batch aggregates); publish the
# event; close the batch when the last one lands. Never re-creates a batch record that is gone.
# Returns 1 written (or this very write, re-sent after a timeout), 0 another answer was there, -1 no batch.
# KEYS: results, batch, agg hour, agg hours, batch events, global events, batch agg, open index, answers
# ARGV: custom_id, line, outcome, ttl, now, n batch pairs, hour, hour start, agg ttl, spend, answer id, pairs...
_COMMIT = """
local life = redis.call('PTTL', KEYS[2])
if life == -2 or redis.call('HEXISTS', KEYS[2], 'total') == 0 then return -1 end
if life == -1 then life = tonumber(ARGV[4]) * 1000 end
local spend = tonumber(ARGV[10])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 1 end
  if spend > 0 and redis.call('SADD', KEYS[9], ARGV[11]) == 1 then
    redis.call('HINCRBY', KEYS[2], 'spent_pico', spend)
    redis.call('PEXPIRE', KEYS[9], life)
  end
  return 0
end
if spend > 0 then redis.call('HINCRBY', KEYS[2], 'spent_pico', spend) end
redis.call('PEXPIRE', KEYS[1], life)
local h = redis.call('HMGET', KEYS[2], 'total', 'succeeded', 'errored', 'canceled', 'expired', 'status', 'id')
local total = tonumber(h[1]) or 0
local done = (tonumber(h[2]) or 0) + (tonumber(h[3]) or 0) + (tonumber(h[4]) or 0) + (tonumber(h[5]) or 0)
if done >= total then return 1 end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
local split = 12 + 2 * tonumber(ARGV[6])
for i = 12, split - 1, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
for i = split, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[7], ARGV[7] .. '\\31' .. ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[7], life)
redis.call('EXPIRE', KEYS[3], ARGV[9])
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (tonumber(ARGV[8]) - tonumber(ARGV[9])))
redis.call('XADD', KEYS[5], '*', 'type', 'request', 'custom_id', ARGV[1], 'outcome', ARGV[3])
redis.call('PEXPIRE', KEYS[5], life)
if done + 1 >= total then
  local final = 'completed'
  if h[6] == 'cancelling' then final = 'cancelled' elseif h[6] == 'expiring' then final = 'expired' end
  redis.call('HSET', KEYS[2], 'status', final, 'completed_at', ARGV[5])
  redis.call('ZREM', KEYS[8], h[7])
  redis.call('XADD', KEYS[5], '*', 'type', 'batch', 'batch', h[7], 'status', final)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 'type', 'batch', 'batch', h[7], 'status', final)
end
return 1
"""

# Take an errored result back (for `otb retry`) only if it is still the line we read and the batch is
# neither closing nor closed (a cancel wins over a retry), with its share of the aggregates.
# KEYS: results, batch, agg hour, batch agg, open index. ARGV: custom_id, line, outcome, hour, pairs...
_UNCOMMIT = """
local st = redis.call('HGET', KEYS[2], 'status')
if st ~= 'completed' and st ~= 'in_progress' then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[3], -1)
if st == 'completed' then
  redis.call('HSET', KEYS[2], 'status', 'in_progress')
  redis.call('HDEL', KEYS[2], 'completed_at')
  local rec = redis.call('HMGET', KEYS[2], 'id', 'created_at')
  redis.call('ZADD', KEYS[5], tonumber(rec[2]) or 0, rec[1])
end
for i = 5, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[4], ARGV[4] .. '\\31' .. ARGV[i], ARGV[i + 1])
end
return 1
"""

# Hold a call's worst case against the batch budget. 1: held. 0: it can never fit (what was spent
# only grows). -1: it fits once calls in flight settle, so wait. A hold whose holder's lease lapsed
# (the worker died) or whose deadline passed no longer counts. Time is Redis's (TIME), not a machine's.
# KEYS: batch, holds. ARGV: custom_id, pico, max pico, lease key ('' for none), hold seconds.
_RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent_pico')) or 0
local pico = tonumber(ARGV[2])
if spent + pico > tonumber(ARGV[3]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local held = 0
local holds = redis.call('HGETALL', KEYS[2])
for i = 1, #holds, 2 do
  local amount, deadline, lease = string.match(holds[i + 1], '^(%d+) (%d+) ?(.*)$')
  if amount == nil or tonumber(deadline) < now or (lease ~= '' and redis.call('EXISTS', lease) == 0) then
    redis.call('HDEL', KEYS[2], holds[i])
  else
    held = held + tonumber(amount)
  end
end
if spent + held + pico > tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[5])) .. ' ' .. ARGV[4])
local life = redis.call('PTTL', KEYS[1])
if life > 0 then redis.call('PEXPIRE', KEYS[2], life) end
return 1
"""

# Count parked requests on the batch (n < 0: resumed), only while its record exists: a batch that
# expired or was lost must not come back as a record of counters alone, without a total or an expiry.
# KEYS: batch. ARGV: n, until, reason ('' when resuming).
_PARKED = """
if redis.call('HEXISTS', KEYS[1], 'total') == 0 then return -1 end
local left = redis.call('HINCRBY', KEYS[1], 'parked', ARGV[1])
if left <= 0 then redis.call('HDEL', KEYS[1], 'parked', 'parked_until', 'parked_reason')
elseif ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'parked_until', ARGV[2], 'parked_reason', ARGV[3]) end
return left
"""

# Give keys the remaining lifetime of the batch record (KEYS[1]), so a key written late (a retry's
# jobs) does not outlive its batch.
_SAME_LIFE = """
local life = redis.call('PTTL', KEYS[1])
if life <= 0 then return 0 end
for i = 2, #KEYS do redis.call('PEXPIRE', KEYS[i], life) end
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

    def batch_agg(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}:agg"

    def answers(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}:answers"

    def of_batch(self, bid: str) -> list[str]:
        """Every key a batch owns: they are written with one lifetime and expire together."""
        return [self.batch(bid), self.ids(bid), self.requests(bid), self.results(bid), self.jobs(bid),
                self.events(bid), self.batch_agg(bid), self.reservations(bid), self.answers(bid)]

    @property
    def open(self) -> str:
        return f"{self.prefix}:open"

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
        self._parked = conn.register_script(_PARKED)
        self._same_life = conn.register_script(_SAME_LIFE)

    @classmethod
    def of(cls, conn: redis.Redis, settings: Any) -> "Store":
        """The store as configured (prefix, result and aggregate TTLs)."""
        return cls(conn, settings.key_prefix, settings.result_ttl, settings.aggregate_ttl)

    # -- submit -------------------------------------------------------------------------------
    STAGING_TTL = 900  # bodies of a submit still streaming: gone soon if the producer dies before its end

    def redis_now(self) -> float:
        """Redis's clock (TIME): the one clock every machine agrees on for windows and index ages."""
        sec, usec = self.conn.time()
        return sec + usec / 1e6

    def write_requests(self, pipe: Any, bid: str, requests: list[tuple[str, dict[str, Any]]], *,
                       staging: bool = False) -> None:
        """Request bodies; invisible until write_batch adds the record. Staged bodies expire within
        STAGING_TTL unless write_batch lands (it gives them the batch's lifetime)."""
        if requests:
            payload = {cid: json.dumps(req, separators=(",", ":")) for cid, req in requests}
            pipe.hset(self.keys.requests(bid), mapping=payload)
            pipe.expire(self.keys.requests(bid), self.STAGING_TTL if staging else self.ttl)

    def discard(self, bid: str) -> None:
        """Delete what a submit that did not land wrote (its staged bodies)."""
        self.conn.delete(self.keys.requests(bid))

    def write_batch(
        self,
        pipe: Any,
        bid: str,
        record: Mapping[str, Any],
        rejected: list[tuple[str, str]],
        order: list[str],
        now: float | None = None,
    ) -> None:
        """Queue the batch record, results for refused lines, and the input order on `pipe`.

        `now` (Redis TIME) scores the batch in the indexes; entries older than `ttl` (batches that
        have expired) are pruned here, so an index never outgrows what it indexes.
        """
        k = self.keys
        now = clock.now() if now is None else now
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
                flat = aggregates.increments(line)
                for i in range(0, len(flat), 2):
                    pipe.hincrby(k.agg_hour(hour), flat[i], flat[i + 1])
                    pipe.hincrby(k.batch_agg(bid), aggregates.batch_field(hour, flat[i]), flat[i + 1])
                pipe.expire(k.agg_hour(hour), self.aggregate_ttl)
                pipe.zadd(k.agg_hours, {hour: start})
                pipe.xadd(k.events(bid), {"type": "request", "custom_id": cid, "outcome": "errored"})
        if len(order) == len(rejected):
            pipe.hset(k.batch(bid), mapping={"status": "completed", "completed_at": now})
            pipe.xadd(k.events(bid), {"type": "batch", "batch": bid, "status": "completed"})
            pipe.xadd(k.all_events, {"type": "batch", "batch": bid, "status": "completed"}, maxlen=10000, approximate=True)
        else:
            pipe.zadd(k.open, {bid: now})
        for key in (k.batch(bid), k.ids(bid), k.requests(bid), k.results(bid), k.events(bid), k.batch_agg(bid)):
            pipe.expire(key, self.ttl)
        pipe.zadd(k.batches, {bid: now})
        pipe.zremrangebyscore(k.batches, "-inf", f"({now - self.ttl}")
        if record.get("expires_at"):
            pipe.zadd(k.deadlines, {bid: float(record["expires_at"])})

    def add_jobs(self, pipe: Any, bid: str, job_ids: list[str]) -> None:
        """Record chunk jobs on the batch; the set lives as long as the batch record (set at submit)."""
        if job_ids:
            pipe.sadd(self.keys.jobs(bid), *job_ids)
            pipe.expire(self.keys.jobs(bid), self.ttl)
            self._same_life(keys=[self.keys.batch(bid), self.keys.jobs(bid)], client=pipe)

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

    def open_ids(self, bid: str, page: int = 1000) -> list[str]:
        """The batch's requests that have no result yet, in input order."""
        k = self.keys
        out: list[str] = []
        for start in range(0, self.conn.llen(k.ids(bid)), page):
            ids = [_text(i) for i in self.conn.lrange(k.ids(bid), start, start + page - 1)]
            out += [cid for cid, res in zip(ids, self.conn.hmget(k.results(bid), ids)) if res is None]
        return out

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

        `spend_pico` (what the provider billed for this answer) is counted once per answer: a call
        sent twice is paid twice even though one result is kept, but a commit that the Redis client
        sends again (a timeout during a Redis pause) is recognised and counted once. A batch whose
        record is gone (expired, evicted, lost in a restart) is never re-created: False, and a warning.
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
        text = json.dumps(line, separators=(",", ":"))
        answer = hashlib.sha256(text.encode()).hexdigest()[:20]
        args = [custom_id, text, outcome, self.ttl, f"{now:.3f}", len(increments) // 2, hour, start,
                self.aggregate_ttl, spend_pico, answer]
        k = self.keys
        keys = [k.results(bid), k.batch(bid), k.agg_hour(hour), k.agg_hours, k.events(bid), k.all_events,
                k.batch_agg(bid), k.open, k.answers(bid)]
        got = self._commit(keys=keys, args=args + increments + aggregates.increments(line))
        if got == -1:
            log.warning("batch %s is gone (expired after OTB_RESULT_TTL, evicted, or lost in a Redis restart): "
                        "result of %s not stored", bid, custom_id)
        return got == 1

    def uncommit(self, bid: str, custom_id: str, line_json: str, outcome: str, *, pipe: Any = None) -> bool | None:
        """Remove one final result so the request can run again; False if it changed meanwhile or the
        batch is closing or closed. With `pipe`, queued on it (the answer comes with its execute)."""
        k = self.keys
        line = json.loads(line_json)
        hour, _ = aggregates.hour_of(_committed_at(line))
        undo = aggregates.increments(line, sign=-1)
        keys = [k.results(bid), k.batch(bid), k.agg_hour(hour), k.batch_agg(bid), k.open]
        got = self._uncommit(keys=keys, args=[custom_id, line_json, outcome, hour, *undo], client=pipe)
        return None if pipe is not None else bool(got)

    def close(self, bid: str, closing: str) -> str | None:
        """in_progress -> `closing` (cancelling / expiring); returns the status the batch now has."""
        got = self._close(keys=[self.keys.batch(bid)], args=[closing])
        return _text(got) if got is not None else None

    def raw_results(self, bid: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.conn.hgetall(self.keys.results(bid)).items()}

    def reserve(self, bid: str, custom_id: str, pico: int, max_pico: int, *, lease: str = "",
                hold_for: float = 3600) -> int:
        """Hold `pico` of the batch budget for a call about to be sent: 1 held, -1 not yet (wait for
        calls in flight to settle), 0 never (what was spent plus this would pass the budget).
        The hold stops counting when `lease` lapses (its worker died) or after `hold_for` seconds."""
        k = self.keys
        return int(self._reserve(keys=[k.batch(bid), k.reservations(bid)],
                                 args=[custom_id, pico, max_pico, lease, int(hold_for)]))

    def release(self, bid: str, custom_id: str) -> None:
        self.conn.hdel(self.keys.reservations(bid), custom_id)

    def count_parked(self, bid: str, n: int, until: float = 0.0, reason: str = "") -> int:
        """Add `n` parked requests (negative: resumed) to the batch record; -1 if the batch is gone."""
        return int(self._parked(keys=[self.keys.batch(bid)], args=[n, f"{until:.3f}", reason]))

    # -- read ---------------------------------------------------------------------------------
    def batch(self, bid: str) -> dict[str, str] | None:
        raw = self.conn.hgetall(self.keys.batch(bid))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    def status(self, bid: str) -> dict[str, Any] | None:
        """Status with request counts and exact cost so far (decimal strings).

        A batch whose requests, input order or results vanished from Redis (evicted under memory
        pressure, or not persisted across a restart) has status `lost` and says what is missing in
        `lost`, instead of passing for completed.
        """
        raw = self.batch(bid)
        if raw is None:
            return None
        counts = {name: int(raw.get(name, 0)) for name in ("total", *OUTCOMES)}
        counts["processing"] = max(counts["total"] - sum(counts[o] for o in OUTCOMES), 0)
        buckets = [n for n in COST_FIELDS if n != "total"]
        cost = {n: from_pico(int(raw.get(f"cost_{n}_pico", 0))) for n in buckets}
        cost["total"] = normalize(sum(cost.values(), Decimal(0)))
        lost = self._lost(bid, counts)
        return {
            "id": bid,
            "object": "otb.batch_status",  # not an OpenAI Batch object: our own counts and costs
            "status": "lost" if lost else raw.get("status", "unknown"),
            "created_at": _float(raw.get("created_at")),
            "expires_at": _float(raw.get("expires_at")),
            "completed_at": _float(raw.get("completed_at")),
            "request_counts": counts,
            "cost": {n: format(v, "f") for n, v in cost.items()},
            "spent": format(from_pico(int(raw.get("spent_pico", 0))), "f"),
            "max_cost": _budget(raw),
            "usage": {n: int(raw.get(n, 0)) for n in TOKEN_FIELDS},
            "metadata": json.loads(raw.get("metadata", "{}") or "{}"),
            "parked": {"requests": int(raw["parked"]), "until": _float(raw.get("parked_until")),
                       "reason": raw.get("parked_reason")} if int(raw.get("parked", 0) or 0) > 0 else None,
            **({"lost": lost} if lost else {}),
        }

    def _lost(self, bid: str, counts: Mapping[str, int]) -> dict[str, Any] | None:
        """What of the batch vanished from Redis: three O(1) reads checked against the counters."""
        k = self.keys
        pipe = self.conn.pipeline(transaction=False)
        pipe.llen(k.ids(bid))
        pipe.hlen(k.results(bid))
        pipe.exists(k.requests(bid))
        n_ids, n_results, has_requests = pipe.execute()
        done = sum(counts[o] for o in OUTCOMES)
        lost: dict[str, Any] = {}
        if n_ids < counts["total"]:
            lost["ids"] = counts["total"] - n_ids
        if n_results < done:
            lost["results"] = done - n_results
        if counts["processing"] and not has_requests:
            lost["requests"] = counts["processing"]
        if not lost:
            return None
        what = ", ".join(f"{n} {name}" for name, n in lost.items())
        lost["message"] = (f"Redis lost part of this batch ({what}): evicted under memory pressure or not "
                           "persisted across a restart; run Redis with --maxmemory-policy noeviction --appendonly yes")
        return lost

    def iter_results(self, bid: str, page: int = 500) -> Iterator[dict[str, Any] | None]:
        """Result lines in input order; None for a request that has no result yet."""
        k = self.keys
        total = self.conn.llen(k.ids(bid))
        for start in range(0, total, page):
            ids = [_text(i) for i in self.conn.lrange(k.ids(bid), start, start + page - 1)]
            for raw in self.conn.hmget(k.results(bid), ids):
                yield json.loads(raw) if raw is not None else None

    def batch_ids(self) -> list[str]:
        """Batches still kept (the index is pruned as they expire)."""
        return [_text(b) for b in self.conn.zrangebyscore(self.keys.batches, self.redis_now() - self.ttl, "+inf")]


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


def _budget(raw: Mapping[str, str]) -> str | None:
    """The batch's --max-cost in USD, from its options (the one place it is stored; a record written
    before 2026-12 also has it as a field of its own)."""
    pico = json.loads(raw.get("options") or "{}").get("max_cost_pico") or raw.get("max_cost_pico")
    return format(from_pico(int(pico)), "f") if pico else None
