"""The Batch API's records in Redis, per tenant: what OpenAI's Batch object holds beyond the engine's batch.

The engine's batch (`{p}:batch:{id}`, worker/store.py) has the counts, tokens and cost; this record
has the rest: the create's parameters, the phase the API is in (`validating`, `failed`,
`in_progress` while the engine runs, then the final status once the output files are written), the
validation errors, the output files, the times OpenAI reports, and the figures frozen at the end.
Both share one id, `batch_` + the creation time in milliseconds + random hex, so a tenant's ids sort
by time and its index is read by range after a cursor id, as files are.

A record lives `OTB_RESULT_TTL` (as long as its engine batch); `{p}:api:open` names the records not
final yet (or final, but whose `on_final` hooks have not run yet), for the finalizers of every
`otb serve`. A create and its Idempotency-Key land in one
transaction, so two creates with one key make one batch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from worker.keys import Keys

from .codec import Fields, text, text_hash
from .errors import ApiError
from .filestore import new_id

BATCH_ID = re.compile(r"^batch_[0-9a-f]{24}$")
WINDOW = 24 * 3600  # "24h", the one completion window OpenAI offers
FINAL = ("failed", "completed", "expired", "cancelled")
TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
_JSON = ("metadata", "errors", "figures")


def new_batch_id() -> str:
    return new_id("batch_")


@dataclass
class BatchRecord:
    """One API batch. `status` is the API's phase: validating, failed, in_progress (the engine decides
    what OpenAI sees: in_progress, cancelling or finalizing) or the final status."""

    id: str
    tenant: str
    endpoint: str
    input_file_id: str
    created_at: int
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_ttl: int | None = None  # seconds the output files live (output_expires_after), else the default
    budget: str | None = None  # USD: the key's --max-cost at create, the cap of the engine batch's pool
    status: str = "validating"
    model: str | None = None  # the one model of its lines, if one
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    figures: dict[str, Any] | None = None  # request_counts, usage and cost, frozen once final
    times: dict[str, int] = field(default_factory=dict)  # TIMES that have happened

    @property
    def expires_at(self) -> int:
        return self.created_at + WINDOW

    def fields(self) -> Fields:
        out: Fields = {}
        for name, value in asdict(self).items():
            if name == "times":
                out.update({k: str(v) for k, v in value.items()})
            elif name in _JSON:
                out[name] = "" if value is None else json.dumps(value, separators=(",", ":"))
            else:
                out[name] = "" if value is None else str(value)
        return out

    @classmethod
    def parse(cls, raw: dict[Any, Any]) -> "BatchRecord":
        f = text_hash(raw)
        loaded = {n: json.loads(f[n]) if f.get(n) else None for n in _JSON}
        return cls(id=f["id"], tenant=f["tenant"], endpoint=f["endpoint"], input_file_id=f["input_file_id"],
                   created_at=int(f["created_at"]), completion_window=f.get("completion_window") or "24h",
                   metadata=loaded["metadata"], output_ttl=int(f["output_ttl"]) if f.get("output_ttl") else None,
                   budget=f.get("budget") or None, status=f["status"], model=f.get("model") or None,
                   errors=loaded["errors"], output_file_id=f.get("output_file_id") or None,
                   error_file_id=f.get("error_file_id") or None, figures=loaded["figures"],
                   times={t: int(f[t]) for t in TIMES if f.get(t)})


@dataclass(frozen=True)
class Claim:
    """An idempotency claim: its Redis key, the digest of the create's parameters, and whether an
    earlier batch under it is returned (`check`) or only recorded for later (a first attempt without a
    key, so that the SDK's own retry of it finds the batch)."""

    name: str
    digest: str
    check: bool = True
    ttl: int | None = None


class BatchRecords:
    """Reads and writes records; every call names the tenant, and nothing reads across tenants."""

    def __init__(self, conn: redis.Redis, keys: Keys, ttl: int) -> None:
        self.conn, self.keys, self.ttl = conn, keys, ttl

    def get(self, tenant: str, bid: str) -> BatchRecord | None:
        """The tenant's own record; an unknown id, another tenant's and a malformed one read the same (None)."""
        if not BATCH_ID.match(bid):
            return None
        raw = self.conn.hgetall(self.keys.api_batch(tenant, bid))
        record = BatchRecord.parse(raw) if raw else None
        return record if record is not None and record.tenant == tenant else None

    def claimed(self, tenant: str, claim: Claim | None) -> BatchRecord | None:
        """The batch an idempotency claim already names (a 400 if it was made with other parameters)."""
        if claim is None or not claim.check:
            return None
        return self._earlier(tenant, claim, self.conn.get(claim.name))

    def _earlier(self, tenant: str, claim: Claim, raw: bytes | str | None) -> BatchRecord | None:
        if raw is None:
            return None
        bid, digest = text(raw).split(" ", 1)
        if digest != claim.digest:
            raise ApiError(400, "This Idempotency-Key was used with other parameters (batch "
                                f"{bid}); use a new key for a new batch.", code="idempotency_key_reused",
                           param="Idempotency-Key")
        return self.get(tenant, bid)

    def create(self, record: BatchRecord, claim: Claim | None, lock_owner: str, lock_ms: int) -> tuple[BatchRecord, bool]:
        """Store a new record (listed, open, locked by `lock_owner`) with its claim, in one transaction;
        or return the batch the claim already names, and False."""
        k, tenant = self.keys, record.tenant
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    if claim is not None:
                        pipe.watch(claim.name)
                        earlier = self._earlier(tenant, claim, pipe.get(claim.name)) if claim.check else None
                        if earlier is not None:
                            return earlier, False
                    pipe.multi()
                    pipe.hset(k.api_batch(tenant, record.id), mapping=record.fields())
                    pipe.expire(k.api_batch(tenant, record.id), self.ttl)
                    pipe.zadd(k.api_batches(tenant), {record.id: 0})
                    pipe.hset(k.api_open, record.id, tenant)
                    pipe.set(k.api_batch_lock(tenant, record.id), lock_owner, px=lock_ms)
                    if claim is not None:
                        pipe.set(claim.name, f"{record.id} {claim.digest}", ex=claim.ttl or self.ttl)
                    pipe.execute()
                    return record, True
                except redis.WatchError:
                    continue  # another create with this key landed meanwhile: look again

    def update(self, record: BatchRecord, expect: str, also: Callable[[Any], None] | None = None,
               **changes: Any) -> BatchRecord | None:
        """Set fields if the record still exists in phase `expect` (a record never comes back to life),
        with whatever `also` queues on the same transaction; the record as changed, or None."""
        key = self.keys.api_batch(record.tenant, record.id)
        times = {t: changes.pop(t) for t in TIMES if t in changes}
        changed = BatchRecord(**{**asdict(record), **changes, "times": {**record.times, **times}})
        fields: Fields = {n: v for n, v in changed.fields().items() if n in changes or n in times}
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if text(pipe.hget(key, "status") or b"") != expect:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    if also is not None:
                        also(pipe)
                    pipe.execute()
                    return changed
                except redis.WatchError:
                    continue

    def mark(self, record: BatchRecord, time_name: str, at: int) -> None:
        """Note when something happened (once: the first time counts), on a record that still exists."""
        if time_name in record.times:
            return
        key = self.keys.api_batch(record.tenant, record.id)
        with self.conn.pipeline() as pipe:
            try:
                pipe.watch(key)
                if not pipe.exists(key):
                    return
                pipe.multi()
                pipe.hsetnx(key, time_name, str(at))
                pipe.execute()
            except redis.WatchError:
                pass  # changed meanwhile (another server noted it, or the record is ending): theirs counts
        record.times.setdefault(time_name, at)

    def page(self, tenant: str, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """Up to `limit` records after the cursor id, newest first, and whether more follow. Index
        entries whose record has expired are dropped as they are met."""
        index = self.keys.api_batches(tenant)
        found: list[BatchRecord] = []
        cursor = after
        while len(found) <= limit:
            ids = [text(i) for i in self.conn.zrevrangebylex(index, f"({cursor}" if cursor else "+", "-", start=0,
                                                                num=max(limit + 1 - len(found), 100))]
            if not ids:
                break
            with self.conn.pipeline(transaction=False) as pipe:
                for bid in ids:
                    pipe.hgetall(self.keys.api_batch(tenant, bid))
                raws = pipe.execute()
            for bid, raw in zip(ids, raws):
                record = BatchRecord.parse(raw) if raw else None
                if record is None or record.tenant != tenant:
                    self.conn.zrem(index, bid)
                else:
                    found.append(record)
            cursor = ids[-1]
        return found[:limit], len(found) > limit

    def open_batches(self) -> Iterator[tuple[str, str]]:
        """(batch id, tenant) of every batch not final yet, from the shared index."""
        for bid, tenant in self.conn.hscan_iter(self.keys.api_open, count=500):
            yield text(bid), text(tenant)

    def tenants_of_open(self, bids: list[str]) -> list[str | None]:
        """The tenant of each of `bids` that is an open API batch, else None."""
        got = self.conn.hmget(self.keys.api_open, bids) if bids else []
        return [None if t is None else text(t) for t in got]

    def forget_open(self, bid: str) -> None:
        """Off the open index: a final batch leaves it once its hooks have run (context.ended)."""
        self.conn.hdel(self.keys.api_open, bid)
