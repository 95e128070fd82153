"""Our data in Redis: batch records, request bodies, results committed atomically and at most once.

Key names live in keys.py (the layout) and the atomic steps in lua/ (scripts.py loads them); this
module is what the producer and the workers call. A batch's keys all end together, `result_ttl`
seconds after its submit (each key written later takes the record's remaining lifetime), and the
indexes drop a batch when it ends. Money in Redis is integer pico-dollars (1e-12 USD) so aggregates
stay exact under HINCRBY.
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

import orjson
import redis

from . import aggregates, clock
from .keys import Keys
from .money import COST_BUCKETS, from_pico, normalize
from .scripts import Scripts

OUTCOMES = ("succeeded", "errored", "canceled", "expired")
log = logging.getLogger("otb.store")


class Store:
    def __init__(self, conn: redis.Redis, prefix: str = "otb", ttl: int = 7 * 24 * 3600,
                 aggregate_ttl: int = 400 * 24 * 3600, wait: tuple[int, int] = (0, 0)) -> None:
        self.conn = conn
        self.keys = Keys(prefix)
        self.ttl = ttl
        self.aggregate_ttl = aggregate_ttl
        self.scripts = Scripts(conn)
        self.wait_replicas, self.wait_ms = wait

    @classmethod
    def of(cls, conn: redis.Redis, settings: Any) -> "Store":
        """The store as configured (prefix, result and aggregate TTLs, WAIT after a commit)."""
        return cls(conn, settings.key_prefix, settings.result_ttl, settings.aggregate_ttl,
                   (settings.redis_wait_replicas, settings.redis_wait_ms))

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

    def add_jobs(self, pipe: Any, bid: str, job_ids: list[str], *, with_record: bool = False) -> None:
        """Record chunk jobs on the batch; the set lives as long as the batch record (set at submit).
        `with_record`: `pipe` is the transaction that writes the record (write_batch), whose lifetime is
        then `ttl` exactly, so no script needs to read it (and the transaction needs no script check)."""
        if job_ids:
            pipe.sadd(self.keys.jobs(bid), *job_ids)
            pipe.expire(self.keys.jobs(bid), self.ttl)
            if not with_record:
                self.scripts.same_life(batch=self.keys.batch(bid), others=[self.keys.jobs(bid)], client=pipe)

    # -- work ---------------------------------------------------------------------------------
    def load_requests(self, bid: str, custom_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        raw = self.conn.hmget(self.keys.requests(bid), custom_ids) if custom_ids else []
        return {cid: (json.loads(r) if r is not None else None) for cid, r in zip(custom_ids, raw)}

    def done_ids(self, bid: str, custom_ids: list[str]) -> set[str]:
        """Which of these already have a final result (so a re-run never calls or bills them again)."""
        if not custom_ids:
            return set()  # one HMGET: the lines of a re-run come back whole, but it is one command, not one per id
        found = self.conn.hmget(self.keys.results(bid), custom_ids)
        return {cid for cid, line in zip(custom_ids, found) if line is not None}

    def open_ids(self, bid: str, page: int = 1000) -> list[str]:
        """The batch's requests that have no result yet, in input order."""
        k = self.keys
        out: list[str] = []
        for start in range(0, self.conn.llen(k.ids(bid)), page):
            ids = [_text(i) for i in self.conn.lrange(k.ids(bid), start, start + page - 1)]
            out += [cid for cid, res in zip(ids, self.conn.hmget(k.results(bid), ids)) if res is None]
        return out

    def commit(self, bid: str, custom_id: str, line: dict[str, Any], outcome: str, *, pool: str = "") -> bool:
        """Store one final result and fold it into the batch's sums and the aggregates; False if one
        was already there (commit_many says how)."""
        return self.commit_many(bid, [(custom_id, line, outcome)], pool=pool)[0] == 1

    def commit_many(self, bid: str, entries: list[Entry], *, pool: str = "") -> list[int]:
        """Store final results of one batch, each at most once; per entry 1 written (or this very line
        was, by an earlier send), 0 another answer was there, -1 the batch is gone.

        Lines of one hour go in one script call (lua/commit.lua), up to GROUP at a time: when all are
        new, that is the same as committing them one by one, with the counters added once per
        group; otherwise the script writes nothing and they are sent one by one, under the rules of a
        single line. Each line's figures are read from the line once (aggregates.counters): the batch
        record, the hourly and per-batch aggregates and the spend all take them from that one
        reading. A line's cost is what the provider billed for this answer (zero for an error),
        counted in `spent` once per answer: a call sent twice is paid twice even though one result is
        kept, but a commit that the Redis client sends again (a timeout during a Redis pause) is
        recognised and counted once. The same spend goes on the batch's `pool` (its tenant, if any), in
        the same script call: the key's spend is live and exact. A batch whose record is gone (expired, evicted, lost in a
        restart) is never re-created: -1, and a warning.
        """
        staged = [_staged(cid, line, outcome) for cid, line, outcome in entries]
        by_hour: dict[str, list[int]] = {}
        for i, one in enumerate(staged):
            by_hour.setdefault(one.hour, []).append(i)
        codes = [0] * len(staged)
        for positions in by_hour.values():
            for at in range(0, len(positions), self.GROUP):
                part = positions[at : at + self.GROUP]
                got = self._commit_group(bid, [staged[i] for i in part], pool) if len(part) > 1 else []
                if not got:  # one line, or a group that must go line by line
                    got = [self._commit_group(bid, [staged[i]], pool)[0] for i in part]
                for i, code in zip(part, got):
                    codes[i] = code
        if -1 in codes:
            log.warning("batch %s is gone (expired after OTB_RESULT_TTL, evicted, or lost in a Redis restart): "
                        "%d results not stored", bid, codes.count(-1))
        return codes

    GROUP = 500  # lines per script call at most

    def _commit_group(self, bid: str, group: list[_Staged], pool: str) -> list[int]:
        """One script call for lines of one batch and one hour; [] if it must go line by line."""
        record: dict[str, int] = {}
        agg: dict[str, int] = {}
        for one in group:
            record[one.outcome] = record.get(one.outcome, 0) + 1
            for name in aggregates.RECORD_COUNTERS:
                if name in one.counts:
                    record[name] = record.get(name, 0) + one.counts[name]
            for field, amount in one.increments:
                agg[field] = agg.get(field, 0) + amount
        items: list[str | bytes | int] = [x for pair in record.items() for x in pair]
        items += [x for pair in agg.items() for x in pair]
        for one in group:
            items += [one.custom_id, one.text, one.outcome]
        k = self.keys
        hour, start = group[0].hour, group[0].hour_start
        pipe = self.conn.pipeline(transaction=False) if self.wait_replicas else None
        got = self.scripts.commit(
            client=pipe, results=k.results(bid), batch=k.batch(bid), agg_hour=k.agg_hour(hour), agg_hours=k.agg_hours,
            events=k.events(bid), all_events=k.all_events, batch_agg=k.batch_agg(bid), open=k.open,
            answers=k.answers(bid), pool=k.tenant(pool) if pool else "", ttl=self.ttl, now=f"{max(one.at for one in group):.3f}", hour=hour,
            hour_start=start, agg_ttl=self.aggregate_ttl, spend=sum(one.spend for one in group),
            answer=hashlib.sha256(group[0].text).hexdigest()[:20] if len(group) == 1 else "",
            n_batch=len(record), n_agg=len(agg), items=items)
        if pipe is not None:  # WAIT on the connection that committed: it waits for that write
            got = pipe.execute_command("WAIT", self.wait_replicas, self.wait_ms).execute()[0]  # type: ignore[no-untyped-call]
        return [int(code) for code in got]

    def uncommit(self, bid: str, custom_id: str, line_json: str, outcome: str, *, pipe: Any = None) -> bool | None:
        """Remove one final result so the request can run again; False if it changed meanwhile or the
        batch is closing or closed. With `pipe`, queued on it (the answer comes with its execute)."""
        k = self.keys
        line = json.loads(line_json)
        hour, _ = aggregates.hour_of(_committed_at(line))
        got = self.scripts.uncommit(
            results=k.results(bid), batch=k.batch(bid), agg_hour=k.agg_hour(hour), batch_agg=k.batch_agg(bid),
            open=k.open, custom_id=custom_id, line=line_json, outcome=outcome, hour=hour,
            counters=aggregates.increments(line, sign=-1), client=pipe)
        return None if pipe is not None else bool(got)

    def close(self, bid: str, closing: str) -> str | None:
        """in_progress -> `closing` (cancelling / expiring); returns the status the batch now has."""
        got = self.scripts.close(batch=self.keys.batch(bid), closing=closing)
        return _text(got) if got is not None else None

    def raw_results(self, bid: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.conn.hgetall(self.keys.results(bid)).items()}

    def reserve(self, bid: str, custom_id: str, pico: int, max_pico: int | None, *, pool: str = "",
                pool_max_pico: int | None = None, lease: str = "", hold_for: float = 3600) -> int:
        """Hold `pico` for a call about to be sent, in the batch budget (`max_pico`) and in its pool's
        (`pool_max_pico`, the tenant `pool`'s --max-cost), each if any: 1 held, -1 not yet (wait for calls
        in flight to settle), 0 never (what was spent plus this would pass one of them).
        The hold stops counting when `lease` lapses (its worker died) or after `hold_for` seconds."""
        k = self.keys
        return int(self.scripts.reserve(batch=k.batch(bid), holds=k.reservations(bid),
                                        pool=k.tenant(pool) if pool else "",
                                        pool_holds=k.tenant_reserved(pool) if pool else "",
                                        custom_id=custom_id, pico=pico, max_pico=max_pico or 0, lease=lease,
                                        hold_for=int(hold_for), pool_max=pool_max_pico or 0,
                                        pool_field=pool_hold(bid, custom_id)))

    def release(self, bid: str, custom_id: str, pool: str = "") -> None:
        """Drop the call's holds (in the batch's budget and its pool's) and their share of each sum, in one
        script call (lua/release.lua)."""
        k = self.keys
        self.scripts.release(batch=k.batch(bid), holds=k.reservations(bid), pool=k.tenant(pool) if pool else "",
                             pool_holds=k.tenant_reserved(pool) if pool else "", custom_id=custom_id,
                             pool_field=pool_hold(bid, custom_id))

    def count_parked(self, bid: str, n: int, until: float = 0.0, reason: str = "") -> int:
        """Add `n` parked requests (negative: resumed) to the batch record; -1 if the batch is gone."""
        return int(self.scripts.count_parked(batch=self.keys.batch(bid), n=n, resume_at=f"{until:.3f}", reason=reason))

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
        cost = {n: from_pico(int(raw.get(f"cost_{n}_pico", 0))) for n in COST_BUCKETS}
        cost["total"] = normalize(sum(cost.values(), Decimal(0)))
        lost = self._lost(bid, counts)
        by_route = {route: int(raw.get(counter, 0)) for route, counter in aggregates.ROUTE_COUNTERS.items()}
        options = json.loads(raw.get("options") or "{}")
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
            "saved": format(from_pico(int(raw.get(aggregates.SAVED_COUNTER, 0))), "f"),  # vs standard prices
            "mode": options.get("mode") or "realtime",
            "succeeded_by_route": {"realtime": max(counts["succeeded"] - sum(by_route.values()), 0), **by_route},
            "max_cost": _budget(raw),
            "usage": {n: int(raw.get(n, 0)) for n in aggregates.TOKEN_COUNTERS},
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


Entry = tuple[str, dict[str, Any], str]  # custom_id, result line, outcome


def pool_hold(bid: str, custom_id: str) -> str:
    """A call's name among its pool's holds (custom_ids repeat across batches; batch ids hold no space)."""
    return f"{bid} {custom_id}"


@dataclass(frozen=True)
class _Staged:
    """A result line as the commit script takes it, its figures read once."""

    custom_id: str
    text: bytes
    outcome: str
    at: float  # the line's completed_at: its hour, and the batch's end if it is the last
    hour: str
    hour_start: int
    counts: dict[str, int]
    increments: list[tuple[str, int]]
    spend: int


def _staged(custom_id: str, line: dict[str, Any], outcome: str) -> _Staged:
    assert outcome in OUTCOMES
    counts = aggregates.counters(line)
    at = _committed_at(line)  # the line's own time decides its hour, here and in `uncommit`
    hour, start = aggregates.hour_of(at)
    flat = aggregates.increments(line, counts=counts)
    return _Staged(custom_id, _line_text(line), outcome, at, hour, start, counts,
                   list(zip(flat[::2], flat[1::2])), sum(counts.get(c, 0) for c in aggregates.COST_COUNTERS))


def _line_text(line: dict[str, Any]) -> bytes:
    """A result line as stored: compact JSON, UTF-8. orjson (a tenth of json's time, for every result),
    json for what orjson refuses (an integer past 64 bits, a lone surrogate). A NaN, which no provider
    sends, would be written null where json wrote NaN (not JSON)."""
    try:
        return orjson.dumps(line)
    except TypeError:
        return json.dumps(line, separators=(",", ":")).encode()


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
