"""Group commit on a real redis-server: a group of results is exactly its lines committed one by one
(lua/commit.lua, Store.commit_many), whatever the group holds, and the run's Committer writes what
finishes together in one script call without ever losing or doubling a result."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest

from producer.client import Client
from worker.commits import Committer
from worker.settings import Settings
from worker.store import Store
from worker.writes import Writes

from .conftest import ROOT


def chat(cid: str) -> dict:
    return {"custom_id": cid, "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}


def line(cid: str, request_id: str, output: str = "0.000002", *, model: str = "google/gemini-3-flash",
         hour: str = "12", tags: dict | None = None, input_tokens: int = 7) -> dict:
    """A succeeded result line as a worker commits it (the request id makes an answer unique)."""
    return {"id": f"batch_req_{cid}", "custom_id": cid, "error": None,
            "response": {"status_code": 200, "request_id": request_id, "body": {}},
            "cost": {"input": "0", "cache_read": "0", "cache_write": "0", "output": output, "total": output},
            "meta": {"outcome": "succeeded", "model": model, "billed_model": model, "tags": tags or {},
                     "usage": {"input_tokens": input_tokens, "output_tokens": 3},
                     "completed_at": f"2026-12-02T{hour}:00:00.000+00:00"}}


@pytest.fixture
def client(real_redis, redis_server, registry) -> Client:
    return Client(real_redis, Settings(redis_url=redis_server.url, registry_path=ROOT / "registry.json"), registry)


def everything(conn, bid: str) -> dict:
    """What a commit changes, minus the event ids: the batch record, its results, both aggregates, the
    events (type, id, outcome) and the hours index."""
    def strs(h: dict) -> dict:
        return {k.decode(): v.decode() for k, v in h.items()}
    record = strs(conn.hgetall(f"otb:batch:{bid}"))
    for volatile in ("id", "created_at", "completed_at"):
        record.pop(volatile, None)
    events = [{k.decode(): v.decode() for k, v in fields.items() if k != b"batch"}
              for _, fields in conn.xrange(f"otb:batch:{bid}:events")]
    hours = {k.decode(): strs(conn.hgetall(k)) for k in conn.scan_iter("otb:agg:2*")}
    return {"record": record, "results": strs(conn.hgetall(f"otb:batch:{bid}:results")),
            "batch_agg": strs(conn.hgetall(f"otb:batch:{bid}:agg")), "hours": hours, "events": events,
            "index": [(m.decode(), s) for m, s in conn.zrange("otb:agg:hours", 0, -1, withscores=True)]}


def mixed(bid: str) -> list[tuple[str, dict, str]]:
    """Lines of two models, two tag sets and two hours."""
    return [(f"r{i}", line(f"r{i}", f"q{i}", f"0.00000{i + 1}", model="google/gemini-3-flash" if i % 2 else
                           "anthropic/claude-haiku-5-5", hour="12" if i < 5 else "13", tags={"t": str(i % 3)}),
             "succeeded") for i in range(8)]


def test_a_group_is_exactly_its_lines_one_by_one(client, real_redis, redis_server, registry):
    """The same 8 lines, committed as a group and one by one into twin batches: every key the commit
    touches ends the same, the batch completes, and the group took one script call per hour."""
    grouped, single = client.submit([chat(f"r{i}") for i in range(8)]), client.submit([chat(f"r{i}") for i in range(8)])
    calls = real_redis.info("commandstats")["cmdstat_evalsha"]["calls"] if "cmdstat_evalsha" in real_redis.info("commandstats") else 0
    assert client.store.commit_many(grouped, mixed(grouped)) == [1] * 8
    evalsha = real_redis.info("commandstats")["cmdstat_evalsha"]["calls"] - calls
    for cid, ln, outcome in mixed(single):
        assert client.store.commit(single, cid, ln, outcome)
    a, b = everything(real_redis, grouped), everything(real_redis, single)
    assert a["record"]["status"] == "completed" and a["record"]["succeeded"] == "8"
    assert {k: v for k, v in a.items() if k != "hours"} == {k: v for k, v in b.items() if k != "hours"}
    assert evalsha <= 3  # one per hour (2), whatever loading the script took
    assert Decimal(client.status(grouped)["spent"]) == Decimal("0.000036")


def test_a_group_holding_a_committed_line_goes_line_by_line(client, real_redis):
    bid = client.submit([chat(f"r{i}") for i in range(4)])
    store = client.store
    assert store.commit(bid, "r1", line("r1", "first"), "succeeded")
    group = [("r0", line("r0", "a"), "succeeded"), ("r1", line("r1", "first"), "succeeded"),  # resent: counts as written
             ("r1", line("r1", "second"), "succeeded"),  # a duplicate execution's answer: not kept, its spend counted
             ("r2", line("r2", "c"), "succeeded")]
    assert store.commit_many(bid, group) == [1, 1, 0, 1]
    status = client.status(bid)
    assert status["request_counts"]["succeeded"] == 3 and status["status"] == "in_progress"
    assert Decimal(status["cost"]["total"]) == Decimal("0.000006")
    assert Decimal(status["spent"]) == Decimal("0.000008")  # r0, r1, r2 and the second answer of r1
    assert real_redis.xlen(f"otb:batch:{bid}:events") == 3
    assert store.commit_many(bid, group) == [1, 1, 0, 1]  # the whole group sent again: nothing changes
    assert client.status(bid) == status


def test_a_group_larger_than_what_is_left_counts_no_more_than_the_total(client, real_redis):
    bid = client.submit([chat(f"r{i}") for i in range(3)])
    group = [(f"r{i}", line(f"r{i}", f"q{i}"), "succeeded") for i in range(5)]  # two ids the batch does not have
    assert client.store.commit_many(bid, group) == [1] * 5
    status = client.status(bid)
    assert status["status"] == "completed"
    assert status["request_counts"]["succeeded"] == 3 and status["request_counts"]["processing"] == 0


def test_a_group_for_a_batch_that_is_gone_writes_nothing(client, real_redis):
    bid = client.submit([chat("a"), chat("b")])
    real_redis.delete(*client.store.keys.of_batch(bid))
    assert client.store.commit_many(bid, [("a", line("a", "1"), "succeeded"), ("b", line("b", "2"), "succeeded")]) == [-1, -1]
    assert real_redis.keys(f"otb:batch:{bid}*") == []


def test_counters_past_what_lua_adds_exactly_stay_exact(client, real_redis):
    """Sums are added in Lua (doubles) only while both sides have at most 15 digits; beyond, HINCRBY."""
    bid = client.submit([chat("a"), chat("b"), chat("c")])
    big = 9_007_199_254_740_993  # 2**53 + 1: a double cannot hold it
    real_redis.hset(f"otb:batch:{bid}", "cost_output_pico", big)
    real_redis.hset(f"otb:batch:{bid}", "input_tokens", 10**14)
    assert client.store.commit_many(bid, [(c, line(c, c), "succeeded") for c in "ab"]) == [1, 1]
    record = real_redis.hgetall(f"otb:batch:{bid}")
    assert int(record[b"cost_output_pico"]) == big + 2 * 2_000_000
    assert int(record[b"input_tokens"]) == 10**14 + 14


def test_the_committer_writes_what_finishes_together_in_one_call(client, real_redis):
    bid = client.submit([chat(f"r{i}") for i in range(50)])
    store = Store(real_redis)
    calls = real_redis.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    async def run() -> list[bool]:
        committer = Committer(store, Writes(real_redis, "otb"), quiet=lambda: False, linger=0.2)
        won = await asyncio.gather(*(committer.commit(bid, f"r{i}", line(f"r{i}", f"q{i}"), "succeeded") for i in range(50)))
        await committer.close()
        assert committer.flushes == 1 and committer.committed == 50
        return won

    assert asyncio.run(run()) == [True] * 50
    assert real_redis.info("commandstats")["cmdstat_evalsha"]["calls"] - calls == 1
    assert client.status(bid)["status"] == "completed"


def test_a_lone_result_is_not_held_back(client, real_redis):
    """With no other call in flight (quiet), a result is written at once, not after the linger."""
    bid = client.submit([chat("a")])

    async def run() -> float:
        committer = Committer(Store(real_redis), Writes(real_redis, "otb"), quiet=lambda: True, linger=30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await committer.commit(bid, "a", line("a", "1"), "succeeded")
        await committer.close()
        return loop.time() - started

    assert asyncio.run(run()) < 10  # the linger (30 s) was not waited out
    assert client.status(bid)["status"] == "completed"


def test_results_whose_requests_were_cut_off_are_still_written(client, real_redis):
    """A stop's grace cancels the requests still waiting for their commit: their answers were paid, so
    the committer writes them all the same when the run closes it."""
    bid = client.submit([chat(f"r{i}") for i in range(3)])

    async def run() -> None:
        committer = Committer(Store(real_redis), Writes(real_redis, "otb"), quiet=lambda: False, linger=30)
        waiting = [asyncio.ensure_future(committer.commit(bid, f"r{i}", line(f"r{i}", str(i)), "succeeded"))
                   for i in range(3)]
        await asyncio.sleep(0.05)
        for task in waiting:
            task.cancel()
        await committer.close()

    asyncio.run(run())
    assert client.status(bid)["request_counts"]["succeeded"] == 3


def test_a_refused_group_waits_whole_and_lands_once(client, real_redis):
    """Redis full (maxmemory, noeviction) while a group is written: it waits and is sent again, whole;
    every result lands once and the spend is counted once."""
    bid = client.submit([chat(f"r{i}") for i in range(20)])
    refusals: list[BaseException] = []

    class Counted(Writes):
        def refused(self, exc: BaseException) -> None:
            refusals.append(exc)
            super().refused(exc)

    async def run() -> list[bool]:
        committer = Committer(Store(real_redis), Counted(real_redis, "otb"), quiet=lambda: False, linger=0.05)
        won = await asyncio.gather(*(committer.commit(bid, f"r{i}", line(f"r{i}", str(i)), "succeeded") for i in range(20)))
        await committer.close()
        return won

    real_redis.config_set("maxmemory-policy", "noeviction")
    real_redis.config_set("maxmemory", 1)  # full: every write that needs memory is refused
    freed = threading.Timer(1.0, real_redis.config_set, ("maxmemory", 0))
    freed.start()
    try:
        assert asyncio.run(run()) == [True] * 20
    finally:
        freed.join()
        real_redis.config_set("maxmemory", 0)
    assert refusals and "maxmemory" in str(refusals[0])
    status = client.status(bid)
    assert status["status"] == "completed" and Decimal(status["spent"]) == Decimal("0.00004")
