"""Cost reports from the running aggregates (worker/aggregates.py): grouped, filtered, exact.

`build_report` reads only the hourly aggregate hashes in the time range, never the result lines,
so its cost is independent of how many results a batch has. Every figure is an integer sum
(tokens, requests, pico-dollars), rendered as decimal strings: the report's total equals the sum of
the `cost.total` of the result lines it covers, to the last digit, and `saved` the sum of their
`meta.saved` (what the same answers would have cost at standard prices, less what they cost). JSON schema: "otb.report/1"
(see README).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis

from worker import aggregates, clock
from worker.keys import Keys
from worker.pricing import COST_BUCKETS, from_pico

GROUPS = ("batch", "model", "provider", "route", "day", "tag")
OUTCOMES = ("succeeded", "errored", "canceled", "expired")
TOKENS = tuple((counter.removesuffix("_tokens"), counter) for counter in aggregates.TOKEN_COUNTERS)  # (column, counter)
COSTS = COST_BUCKETS


@dataclass
class Query:
    group_by: list[str] = field(default_factory=lambda: ["model"])  # batch, model, provider, route, day, tag, tag:KEY
    batch: str | None = None
    model: str | None = None
    provider: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    timezone: str = "UTC"


@dataclass
class Acc:
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, counter: str, value: int) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + value

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        costs = {name: from_pico(c.get(f"cost_{name}_pico", 0)) for name in COSTS}
        return {
            "requests": c.get("requests", 0),
            **{o: c.get(o, 0) for o in OUTCOMES},
            "tokens": {name: c.get(counter, 0) for name, counter in TOKENS},
            "cost": {**{k: format(v, "f") for k, v in costs.items()},
                     "total": format(from_pico(sum(c.get(f"cost_{n}_pico", 0) for n in COSTS)), "f")},
            "saved": format(from_pico(c.get(aggregates.SAVED_COUNTER, 0)), "f"),  # vs the same lines at standard prices
        }


def build_report(conn: redis.Redis, prefix: str, query: Query) -> dict[str, Any]:
    tz = ZoneInfo(query.timezone)
    rows: dict[tuple[str, ...], Acc] = {}
    total, errors = Acc(), dict[str, int]()
    series_day: dict[tuple[str, str], int] = {}
    series_model: dict[str, int] = {}
    rerouted: dict[tuple[str, str], int] = {}
    for dims, counter, value, start in _entries(conn, Keys(prefix), query, tz):
        if not _matches(dims, query):
            continue
        day = dt.datetime.fromtimestamp(start, tz).date().isoformat()
        if counter.startswith("err:"):
            errors[counter[4:]] = errors.get(counter[4:], 0) + value
            continue
        key = tuple(_group_value(g, dims, day) for g in query.group_by)
        rows.setdefault(key, Acc()).add(counter, value)
        total.add(counter, value)
        if counter.startswith("cost_"):
            shown = _model_label(dims)
            series_day[(day, shown)] = series_day.get((day, shown), 0) + value
            series_model[shown] = series_model.get(shown, 0) + value
        if counter == "requests" and dims["model"] != dims["billed_model"]:
            pair = (dims["model"], dims["billed_model"])
            rerouted[pair] = rerouted.get(pair, 0) + value
    return {
        "schema": "otb.report/1",
        "generated_at": clock.utcnow().isoformat(timespec="seconds"),
        "timezone": query.timezone,
        "filters": {"batch": query.batch, "model": query.model, "provider": query.provider, "tags": query.tags,
                    "since": query.since.isoformat() if query.since else None,
                    "until": query.until.isoformat() if query.until else None},
        "group_by": list(query.group_by),
        "rows": [{"group": dict(zip(query.group_by, key)), **acc.to_json()} for key, acc in sorted(rows.items())],
        "total": total.to_json(),
        "errors": dict(sorted(errors.items())),
        "rerouted": [{"model": m, "billed_model": b, "requests": n} for (m, b), n in sorted(rerouted.items())],
        "series": {
            "cost_by_day_model": [{"day": d, "model": m, "cost": format(from_pico(v), "f")}
                                  for (d, m), v in sorted(series_day.items()) if v],
            "cost_by_model": [{"model": m, "cost": format(from_pico(v), "f")}
                              for m, v in sorted(series_model.items(), key=lambda kv: -kv[1]) if v],
        },
    }


def _entries(conn: redis.Redis, keys: Keys, query: Query, tz: ZoneInfo) -> Iterator[tuple[dict[str, Any], str, int, float]]:
    """(dimensions, counter, value, hour start) of every aggregate in the query's time range.

    A query by batch (`--batch`, `--by batch`) reads the batches' own hashes (they expire with the
    batch); any other reads the long-lived hourly hashes, which hold no batch id. Fields written
    before the batch id left the hourly hashes still carry one and count in both kinds of query.
    """
    low = _epoch(query.since, tz) // 3600 * 3600 if query.since else float("-inf")
    high = _epoch(query.until, tz) if query.until else float("inf")
    by_batch = bool(query.batch) or "batch" in query.group_by
    hours = cast(list[tuple[bytes, float]], conn.zrangebyscore(keys.agg_hours, low, f"({high}", withscores=True))
    for raw_hour, start in hours:
        for raw_field, raw_value in _hash(conn, keys.agg_hour(_text(raw_hour))).items():
            dims, counter = aggregates.parse_field(_text(raw_field))
            if not by_batch or dims["batch"] is not None:
                yield dims, counter, int(raw_value), start
    if not by_batch:
        return
    batches = [query.batch] if query.batch else [_text(b) for b in cast(list[bytes], conn.zrange(keys.batches, 0, -1))]
    for bid in batches:
        for raw_field, raw_value in _hash(conn, keys.batch_agg(bid)).items():
            hour, dims, counter = aggregates.parse_batch_field(_text(raw_field), bid)
            start = dt.datetime.strptime(hour, "%Y%m%d%H").replace(tzinfo=dt.timezone.utc).timestamp()
            if low <= start < high:
                yield dims, counter, int(raw_value), start


def _hash(conn: redis.Redis, key: str) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], conn.hgetall(key))


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _epoch(moment: dt.datetime, tz: ZoneInfo) -> int:
    return int((moment if moment.tzinfo else moment.replace(tzinfo=tz)).timestamp())


def _matches(dims: dict[str, Any], q: Query) -> bool:
    if q.batch and dims["batch"] != q.batch:  # (old hourly fields; a batch's own hash is its own)
        return False
    if q.model and q.model not in (dims["model"], dims["billed_model"]):
        return False
    if q.provider and dims["model"].split("/", 1)[0] != q.provider:
        return False
    return all(dims["tags"].get(k) == v for k, v in q.tags.items())


def _model_label(dims: dict[str, Any]) -> str:
    """The requested id, and the model billed when the provider served another one."""
    return dims["model"] if dims["model"] == dims["billed_model"] else f"{dims['model']} -> {dims['billed_model']}"


def _group_value(group: str, dims: dict[str, Any], day: str) -> str:
    if group == "batch":
        return dims["batch"] or "(none)"
    if group == "model":
        return _model_label(dims)
    if group == "provider":
        return dims["model"].split("/", 1)[0] if "/" in dims["model"] else "(invalid line)"
    if group == "route":
        return str(dims["route"])
    if group == "day":
        return day
    if group == "tag":
        return ",".join(f"{k}={v}" for k, v in sorted(dims["tags"].items())) or "(none)"
    if group.startswith("tag:"):
        return str(dims["tags"].get(group[4:], "(none)"))
    raise ValueError(f"cannot group by {group!r}; use one of {', '.join(GROUPS)} or tag:KEY")


def total_of_lines(lines: Iterable[dict[str, Any] | None]) -> Decimal:
    """Σ cost.total of result lines: what a report's total must equal."""
    return sum((Decimal(line["cost"]["total"]) for line in lines if line), Decimal(0))
