"""Store and Lua behaviour on a real redis-server: spend after a pause, lost batches, budgets, clocks,
idempotency, what a submit leaves behind, and what a batch leaves behind once it is gone."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from decimal import Decimal

import pytest
import redis
from redis.backoff import ExponentialBackoff

from producer.options import SubmitOptions
from producer.client import Client
from producer.local import drain
from producer.submit import IdempotencyConflict, submit
from worker.connection import TransientRetry, mask_url
from worker.queues import enqueue_chunks
from worker.recovery import rescue_stranded
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, RedisServer


def chat(cid: str, text: str = "hello") -> dict:
    return {"custom_id": cid, "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": text}]}


def result(cid: str, request_id: str, total: str = "0.000002") -> dict:
    """A succeeded result line as a worker commits it (an answer's request id makes it unique)."""
    return {"id": f"batch_req_{cid}", "custom_id": cid, "error": None,
            "response": {"status_code": 200, "request_id": request_id, "body": {}},
            "cost": {"input": "0", "cache_read": "0", "cache_write": "0", "output": total, "total": total},
            "meta": {"outcome": "succeeded", "model": "google/gemini-3-flash", "tags": {},
                     "completed_at": "2026-12-02T12:00:00.000+00:00"}}


def commit(store: Store, bid: str, cid: str, request_id: str) -> bool:
    """Commit a succeeded line that cost (and spent) $0.000002."""
    return store.commit(bid, cid, result(cid, request_id, "0.000002"), "succeeded")


@pytest.fixture
def client(real_redis, redis_server, registry) -> Client:
    return Client(real_redis, Settings(redis_url=redis_server.url, registry_path=ROOT / "registry.json"), registry)


# -- item 7: spend counted once per provider answer, whatever the retries of the write ------------
def test_a_commit_resent_after_a_redis_pause_counts_its_spend_once(tmp_path, registry):
    server = RedisServer(tmp_path)
    try:
        conn = redis.Redis.from_url(server.url, socket_timeout=0.3,
                                    retry=TransientRetry(ExponentialBackoff(cap=0.3, base=0.05), 40),
                                    retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        client = Client(conn, Settings(redis_url=server.url), registry)
        bid = client.submit([chat("a"), chat("b"), chat("c")])
        store = client.store
        assert commit(store, bid, "c", "warm-up")  # the script is loaded; the next call is one EVALSHA

        def paused(call):  # type: ignore[no-untyped-def]
            """Run `call` while Redis is stopped for 1 s: the client times out and sends it again."""
            os.kill(server.proc.pid, signal.SIGSTOP)
            wake = threading.Timer(1.0, os.kill, (server.proc.pid, signal.SIGCONT))
            wake.start()
            try:
                return call()
            finally:
                wake.join()

        won = paused(lambda: commit(store, bid, "a", "answer-1"))  # the write and its resend: one answer
        assert Decimal(client.status(bid)["spent"]) == Decimal("0.000004")  # warm-up + answer-1
        assert won
        paused(lambda: commit(store, bid, "a", "answer-2"))  # a duplicate execution's answer: paid again, once
        status = client.status(bid)
        assert Decimal(status["spent"]) == Decimal("0.000006"), status["spent"]
        assert Decimal(status["cost"]["total"]) == Decimal("0.000004")
        assert status["request_counts"]["succeeded"] == 2
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


# -- item 6: a batch whose keys vanished is never re-created, never negative, and says so ----------
def test_a_commit_to_a_batch_that_is_gone_does_not_bring_it_back(client, real_redis):
    bid = client.submit([chat("a"), chat("b")])
    real_redis.delete(*client.store.keys.of_batch(bid))  # expired, evicted, or lost in a restart
    assert not commit(client.store, bid, "a", "late answer")
    assert real_redis.keys(f"otb:batch:{bid}*") == []
    assert client.store.status(bid) is None


def test_counters_never_pass_the_total_and_lost_results_are_reported(client, real_redis):
    bid = client.submit([chat("a"), chat("b")])
    assert commit(client.store, bid, "a", "1") and commit(client.store, bid, "b", "2")
    real_redis.delete(client.store.keys.results(bid))  # evicted under allkeys-lru
    commit(client.store, bid, "a", "3")  # a re-run finds no result and commits again
    status = client.store.status(bid)
    counts = status["request_counts"]
    assert counts["succeeded"] == 2 and counts["processing"] == 0
    assert status["status"] == "lost" and status["lost"]["results"] == 1
    assert "Redis lost part of this batch" in status["lost"]["message"]


def test_every_key_of_a_batch_ends_with_its_record(client, real_redis):
    bid = client.submit([chat("a"), chat("b"), chat("c")], max_cost=Decimal("1"))
    for key in real_redis.keys(f"otb:batch:{bid}*"):
        real_redis.expire(key, 100)  # as if submitted long ago
    commit(client.store, bid, "a", "1")
    commit(client.store, bid, "a", "duplicate")
    assert client.store.reserve(bid, "b", 1, 10**12) == 1
    enqueue_chunks(real_redis, client.settings, bid, ["c"], "again")
    assert len(real_redis.keys(f"otb:batch:{bid}*")) == 9
    for key in real_redis.keys(f"otb:batch:{bid}*"):
        assert 0 < real_redis.ttl(key) <= 100, key


# -- item 14: idempotency covers the options --------------------------------------------------------
def test_an_idempotency_key_reused_with_another_budget_is_refused(client):
    first = client.submit([chat("a")], idempotency_key="k1", max_cost=Decimal("1"))
    assert client.submit([chat("a")], idempotency_key="k1", max_cost=Decimal("1")) == first
    with pytest.raises(IdempotencyConflict, match="different requests or options"):
        client.submit([chat("a")], idempotency_key="k1", max_cost=Decimal("2"))
    with pytest.raises(IdempotencyConflict):
        client.submit([chat("a")], idempotency_key="k1")


# -- item 8: a re-submit writes nothing; a failed submit leaves nothing ------------------------------
def test_a_submit_that_fails_midway_leaves_no_bodies_behind(client, real_redis, registry, tmp_path):
    src = tmp_path / "b.jsonl"
    src.write_text("".join(json.dumps(chat(f"r{i}", "x" * 200)) + "\n" for i in range(5000)))

    def raw():  # type: ignore[no-untyped-def]
        with src.open("rb") as fh:
            for n, line in enumerate(fh):
                if n == 4500:
                    raise MemoryError  # what running out of memory half-way looks like
                yield line

    with pytest.raises(MemoryError):
        submit(real_redis, client.settings, registry, raw())
    assert real_redis.keys("otb:batch:*") == []


def test_a_repeat_with_the_same_idempotency_key_writes_no_bodies(client, real_redis, registry, tmp_path):
    src = tmp_path / "b.jsonl"
    src.write_text("".join(json.dumps(chat(f"r{i}", "x" * 200)) + "\n" for i in range(3000)))

    def once() -> str:
        with src.open("rb") as fh:
            return submit(real_redis, client.settings, registry, fh, SubmitOptions(idempotency_key="nightly-42")).batch_id

    first = once()
    used = real_redis.info("memory")["used_memory"]
    assert once() == first
    assert len(real_redis.keys("otb:batch:*:requests")) == 1
    grown = real_redis.info("memory")["used_memory"] - used
    assert grown < 100_000, f"a repeat grew Redis by {grown} bytes"


# -- item 10: one batch per request leaves nothing per request once the batches are gone --------------
def test_aggregates_grow_with_groups_not_batches_and_indexes_are_pruned(real_redis, redis_server, registry, emulator):
    settings = Settings(redis_url=redis_server.url, registry_path=ROOT / "registry.json", result_ttl=2,
                        anthropic_base_url=emulator.url, google_base_url=emulator.url,
                        api_keys={"anthropic": "k", "google": "k"})
    client = Client(real_redis, settings, registry)

    def fields() -> int:
        return sum(real_redis.hlen(k) for k in real_redis.keys("otb:agg:2*"))

    client.submit_one({"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi 0"}]},
                      tags={"app": "search"})
    drain(real_redis, settings)
    one = fields()
    for i in range(1, 30):  # the web-app pattern: one batch per request
        client.submit_one({"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": f"hi {i}"}]},
                          tags={"app": "search"})
    drain(real_redis, settings)
    assert fields() == one, "the long-lived aggregates grew with the number of batches"
    time.sleep(2.5)  # every batch expires (result_ttl 2 s)
    client.submit_one({"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "late"}]})
    assert real_redis.zcard("otb:batches") == 1  # pruned with the batches it indexed
    drain(real_redis, settings)
    assert rescue_stranded(real_redis, settings) == {} and real_redis.zcard("otb:open") == 0


def test_the_masked_url_hides_a_password_that_holds_an_at_sign():
    assert mask_url("redis://:p@tP4ss@host:6379/0") == "redis://***@host:6379/0"
    assert mask_url("rediss://user:a@b:c@redis.example:6380/1") == "rediss://***@redis.example:6380/1"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
