"""The native route's state in Redis: which batches have provider batches, and each provider batch's part.

Everything a poller knows lives here, so any `otb worker` can take over after a kill or a Redis
restart: a batch's lines waiting to be planned (`todo`, written at submit), its parts (one provider
batch each: provider, model, state, intent marker, provider id, progress) and their custom_ids.
States of a part: planned -> creating (the intent is recorded: a create may have happened) -> created
(the provider id is recorded) -> done; `cancelling` when we asked the provider to stop it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from ..keys import Keys
from ..settings import Settings

PLANNED, CREATING, CREATED, CANCELLING, DONE = "planned", "creating", "created", "cancelling", "done"


@dataclass
class Part:
    """One provider batch of a batch's native lines."""

    n: int
    provider: str
    model: str  # registry id
    count: int
    sent: int = 0  # requests in the create (count, less lines that could not go by then)
    state: str = PLANNED
    group: str = ""  # what every request of the part shares: Anthropic headers, Gemini call path
    marker: str = ""  # the intent's unique mark: custom_id prefix (Anthropic), displayName (Gemini)
    intent_at: float = 0.0  # when the create was about to be sent (this machine's clock)
    provider_id: str = ""
    input_file: str = ""  # Gemini: the uploaded JSONL
    created_at: float = 0.0
    polls: int = 0
    quiet: int = 0  # polls in a row that saw no progress (the backoff)
    next_poll: float = 0.0
    status: str = ""  # the provider's own word for where the batch is
    progress: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def fields(self) -> dict[Any, Any]:
        """The part as a Redis hash (typed loosely: redis-py's mapping type is invariant)."""
        return {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in asdict(self).items()}

    @classmethod
    def of(cls, raw: dict[bytes, bytes]) -> "Part":
        got = {k.decode(): v.decode() for k, v in raw.items()}
        kwargs: dict[str, Any] = {}
        for name, kind in cls.__annotations__.items():
            if name not in got:
                continue
            value = got[name]
            if kind == "int":
                kwargs[name] = int(value)
            elif kind == "float":
                kwargs[name] = float(value)
            elif name == "progress":
                kwargs[name] = json.loads(value or "{}")
            else:
                kwargs[name] = value
        return cls(**kwargs)


class NativeState:
    """Reads and writes of the native route's keys (names in keys.py), each batch's expiring with it."""

    def __init__(self, conn: redis.Redis, keys: Keys, ttl: int) -> None:
        self.conn, self.keys, self.ttl = conn, keys, ttl

    def register(self, pipe: Any, bid: str, ids: list[str], now: float) -> None:
        """In the caller's transaction (a submit, or a retry that sends lines native again): these lines
        go native; a poller plans them at once, into parts after those the batch has already."""
        for start in range(0, len(ids), 1000):
            pipe.rpush(self.keys.native_todo(bid), *ids[start:start + 1000])
        pipe.hsetnx(self.keys.native(bid), "parts", 0)
        pipe.hset(self.keys.native(bid), "planned", 0)
        for key in (self.keys.native_todo(bid), self.keys.native(bid)):
            pipe.expire(key, self.ttl)
        pipe.zadd(self.keys.native_due, {bid: now})

    def info(self, bid: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.conn.hgetall(self.keys.native(bid)).items()}

    def todo(self, bid: str) -> list[str]:
        return [_text(i) for i in self.conn.lrange(self.keys.native_todo(bid), 0, -1)]

    def waiting(self, bid: str) -> int:
        """Lines registered and not planned into a part yet."""
        return int(self.conn.llen(self.keys.native_todo(bid)))

    def save_plan(self, bid: str, parts: list[tuple[Part, list[str]]], extras: dict[str, str], planned: int) -> None:
        """The parts, their ids and the lines' extras land together, and the `planned` ids read from the
        head of the todo list go (a re-plan after a kill starts over; ids a retry pushed meanwhile stay
        for the next plan)."""
        with self.conn.pipeline(transaction=True) as pipe:
            if extras:
                pipe.hset(self.keys.native_extras(bid), mapping=extras)  # type: ignore[arg-type]
                pipe.expire(self.keys.native_extras(bid), self.ttl)
            for part, ids in parts:
                pipe.delete(self.keys.native_ids(bid, part.n))
                for start in range(0, len(ids), 1000):
                    pipe.rpush(self.keys.native_ids(bid, part.n), *ids[start:start + 1000])
                pipe.hset(self.keys.native_part(bid, part.n), mapping=part.fields())
                pipe.expire(self.keys.native_ids(bid, part.n), self.ttl)
                pipe.expire(self.keys.native_part(bid, part.n), self.ttl)
            pipe.hset(self.keys.native(bid), mapping={"parts": parts[-1][0].n + 1 if parts else self.count(bid),
                                                      "planned": 1})
            pipe.ltrim(self.keys.native_todo(bid), planned, -1)
            pipe.execute()

    def count(self, bid: str) -> int:
        """How many parts the batch has had (a retry's plan numbers its parts after them)."""
        return int(self.conn.hget(self.keys.native(bid), "parts") or 0)

    def parts(self, bid: str) -> list[Part]:
        count = self.count(bid)
        pipe = self.conn.pipeline(transaction=False)
        for n in range(count):
            pipe.hgetall(self.keys.native_part(bid, n))
        return [Part.of(raw) for raw in pipe.execute() if raw]

    def save(self, bid: str, part: Part, *, pipe: Any = None) -> None:
        """The part as it is now (with `pipe`, queued on the caller's transaction)."""
        (pipe if pipe is not None else self.conn).hset(self.keys.native_part(bid, part.n), mapping=part.fields())

    def extras(self, bid: str, ids: list[str]) -> list[dict[str, Any] | None]:
        raw = self.conn.hmget(self.keys.native_extras(bid), ids) if ids else []
        return [json.loads(x) if x is not None else None for x in raw]

    def ids(self, bid: str, n: int) -> list[str]:
        return [_text(i) for i in self.conn.lrange(self.keys.native_ids(bid, n), 0, -1)]

    def known(self, provider_id: str) -> bool:
        return bool(self.conn.sismember(self.keys.native_known, provider_id))

    def record_created(self, bid: str, part: Part) -> None:
        """Right after the create: the provider id, and that no other intent may claim it."""
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.native_known, part.provider_id)
            pipe.hset(self.keys.native_part(bid, part.n), mapping=part.fields())
            pipe.execute()

    def due(self, now: float, limit: int = 20) -> list[str]:
        return [_text(b) for b in self.conn.zrangebyscore(self.keys.native_due, 0, now, start=0, num=limit)]

    def schedule(self, bid: str, at: float) -> None:
        self.conn.zadd(self.keys.native_due, {bid: at})

    def finish(self, bid: str) -> bool:
        """No poller needs to look at the batch any more, unless a retry registered lines meanwhile
        (then it stays due); whether it left."""
        with self.conn.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.keys.native_todo(bid))  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                if pipe.llen(self.keys.native_todo(bid)):
                    return False
                pipe.multi()
                pipe.zrem(self.keys.native_due, bid)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def active(self, bid: str) -> bool:
        """Does a poller still look after native lines of this batch (so they are not stranded)?"""
        return self.conn.zscore(self.keys.native_due, bid) is not None


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def native_state(conn: redis.Redis, settings: Settings) -> NativeState:
    return NativeState(conn, Keys(settings.key_prefix), settings.result_ttl)
