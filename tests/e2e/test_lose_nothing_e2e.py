"""Break things for real and check every request still ends with exactly one result and exact money."""

from __future__ import annotations

import json
import pickle
import subprocess
import time
import zlib
from decimal import Decimal

import pytest
import redis

from producer.client import Client
from worker.registry import Registry
from worker.settings import Settings

from bench.harness import chunks_held_by, wait_taken_over

from ..conftest import RedisServer, otb, worker_env

pytestmark = pytest.mark.e2e

FAST = {"OTB_LEASE_TTL": "3", "OTB_CHUNK_SIZE": "10", "OTB_CONCURRENCY": "5", "OTB_STOP_GRACE": "10"}


def slow_batch(n: int, ms: int = 400, prefix: str = "r") -> list[dict]:
    models = ["google/gemini-3-flash", "anthropic/claude-haiku-5-5"]
    return [{"custom_id": f"{prefix}{i}", "model": models[i % 2],
             "messages": [{"role": "user", "content": f"#emu:slow={ms} question {i}"}]} for i in range(n)]


def client_for(url: str, registry: Registry) -> Client:
    return Client(redis.Redis.from_url(url), Settings(redis_url=url, chunk_size=10), registry)


def wait_final(client: Client, bid: str, timeout: float = 90) -> dict:
    return client.wait(bid, timeout=timeout)


def assert_exactly_once(client: Client, bid: str, n: int) -> list[dict]:
    status = client.status(bid)
    lines = list(client.results(bid))
    assert len(lines) == n and len({ln["custom_id"] for ln in lines}) == n
    counts = status["request_counts"]
    assert counts["total"] == n and counts["processing"] == 0
    assert sum(counts[k] for k in ("succeeded", "errored", "canceled", "expired")) == n
    assert sum(Decimal(ln["cost"]["total"]) for ln in lines) == Decimal(status["cost"]["total"])
    return lines


def test_killed_workers_lose_nothing_and_recover_fast(redis_server, emulator, real_redis, registry, spawn_worker):
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client = client_for(redis_server.url, registry)
    bid = client.submit(slow_batch(300, ms=600))
    spawn_worker(env)  # a survivor, always running
    recoveries = []
    for _ in range(3):  # kill a worker and its horse mid-chunk, three times over
        victim = spawn_worker(env)
        held: list[str] = []
        deadline = time.monotonic() + 20
        while not held and time.monotonic() < deadline:  # until it is mid-chunk
            time.sleep(0.1)
            pids = victim.session_pids()
            held = chunks_held_by(real_redis, pids)
        assert held, "the victim never started a chunk"
        time.sleep(0.3)
        assert victim.kill_all() >= 2  # the worker and its work horse
        killed_at = time.monotonic()
        for job_id in held:
            recoveries.append(wait_taken_over(real_redis, job_id, pids, killed_at))
    status = wait_final(client, bid)
    assert status["status"] == "completed"
    lines = assert_exactly_once(client, bid, 300)
    assert all(ln["meta"]["outcome"] == "succeeded" for ln in lines)
    assert Decimal(status["spent"]) >= Decimal(status["cost"]["total"])  # calls in flight at a kill are paid twice
    assert max(recoveries) < 60


def test_a_chunk_popped_by_a_worker_killed_before_it_started_it_still_runs(redis_server, emulator, real_redis,
                                                                          registry, spawn_worker):
    """A worker killed between RQ's pop and the start of the job (a few milliseconds; CI once hit it in
    bench.chaos) leaves the job 'queued' in no queue: the janitor queues it again, two rescue rounds on."""
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client = client_for(redis_server.url, registry)
    bid = client.submit(slow_batch(30, ms=50))
    popped = real_redis.lpop("rq:queue:otb")  # what the dead worker's BLPOP took
    assert popped is not None
    started = time.monotonic()
    spawn_worker(env)
    status = wait_final(client, bid, timeout=60)
    assert status["status"] == "completed" and status["request_counts"]["succeeded"] == 30, status
    assert_exactly_once(client, bid, 30)
    assert real_redis.get(f"otb:recoveries:{popped.decode()}") == b"1"
    assert time.monotonic() - started < 6 * 3 + 10  # two or three rescue rounds of 2 x lease ttl


def test_sigterm_lets_calls_in_flight_finish_and_hands_back_the_rest(redis_server, emulator, real_redis, registry,
                                                                     spawn_worker):
    env = worker_env(redis_server.url, emulator.url, **{**FAST, "OTB_CHUNK_SIZE": "30"})
    client = Client(real_redis, Settings(redis_url=redis_server.url, chunk_size=30), registry)
    bid = client.submit(slow_batch(30, ms=1500))
    first = spawn_worker(env)
    deadline = time.monotonic() + 30  # a loaded machine may take seconds to start the worker
    while not real_redis.keys("otb:lease:*") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the chunk has its lease: its first wave of calls is in flight
    started = time.monotonic()
    first.proc.terminate()
    first.proc.wait(timeout=20)
    took = time.monotonic() - started
    log = first.stop()
    assert took < 6, log  # in-flight calls (1.5 s each) finished; nothing waited for the whole chunk
    assert "handed back" in log or "drain" in log
    done_by_first = client.status(bid)["request_counts"]["succeeded"]
    assert 0 < done_by_first < 30
    spawn_worker(env)
    wait_final(client, bid)
    lines = assert_exactly_once(client, bid, 30)
    assert all(ln["meta"]["outcome"] == "succeeded" for ln in lines)


def test_cancel_stops_unstarted_requests_and_keeps_partial_results(redis_server, emulator, real_redis, registry,
                                                                   spawn_worker):
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client = client_for(redis_server.url, registry)
    bid = client.submit(slow_batch(60, ms=300))
    spawn_worker(env)
    time.sleep(1.0)
    proc = otb(["cancel", bid], env)
    assert proc.returncode == 0 and "cancel" in proc.stdout.decode()
    status = wait_final(client, bid, timeout=30)
    assert status["status"] == "cancelled"
    lines = assert_exactly_once(client, bid, 60)
    outcomes = {ln["meta"]["outcome"] for ln in lines}
    assert outcomes == {"succeeded", "canceled"}
    cancelled = [ln for ln in lines if ln["meta"]["outcome"] == "canceled"]
    assert all(ln["error"]["code"] == "batch_cancelled" and ln["cost"]["total"] == "0" for ln in cancelled)


def test_retry_reruns_only_the_errored_requests(redis_server, emulator, real_redis, registry, spawn_worker):
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client = client_for(redis_server.url, registry)
    reqs = slow_batch(10, ms=0)
    for r in reqs[:3]:
        r["messages"][0]["content"] = f"#emu:fail-first=1:400 {r['custom_id']}"  # fails once, fatally
    bid = client.submit(reqs)
    spawn_worker(env)
    first = wait_final(client, bid)
    assert first["request_counts"]["errored"] == 3
    kept = {ln["custom_id"]: ln for ln in client.results(bid) if ln["meta"]["outcome"] == "succeeded"}
    assert "3 errored requests re-enqueued" in otb(["retry", bid], env).stdout.decode()
    second = wait_final(client, bid)
    assert second["request_counts"]["succeeded"] == 10
    lines = assert_exactly_once(client, bid, 10)
    for ln in lines:  # the ones that had succeeded were not run again
        if ln["custom_id"] in kept:
            assert ln == kept[ln["custom_id"]]


def test_what_is_not_done_within_the_completion_window_expires(redis_server, emulator, real_redis, registry,
                                                                spawn_worker):
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client = client_for(redis_server.url, registry)
    bid = client.submit(slow_batch(40, ms=500), completion_window=2)
    spawn_worker(env)
    status = wait_final(client, bid, timeout=30)
    assert status["status"] == "expired"
    lines = assert_exactly_once(client, bid, 40)
    assert {ln["meta"]["outcome"] for ln in lines} == {"succeeded", "expired"}
    assert all(ln["error"]["code"] == "batch_expired" for ln in lines if ln["meta"]["outcome"] == "expired")


def test_submitting_twice_with_one_idempotency_key_gives_one_batch(redis_server, emulator, real_redis, tmp_path):
    env = worker_env(redis_server.url, emulator.url)
    src = tmp_path / "b.jsonl"
    src.write_text(json.dumps(slow_batch(3, ms=0)[0]) + "\n")
    ids = [json.loads(otb(["submit", str(src), "--json", "--idempotency-key", "order-42"], env).stdout)["id"]
           for _ in range(2)]
    assert ids[0] == ids[1]
    assert real_redis.zcard("otb:batches") == 1 and real_redis.llen("rq:queue:otb") == 1
    src.write_text(json.dumps(slow_batch(3, ms=0)[1]) + "\n")
    other = otb(["submit", str(src), "--idempotency-key", "order-42"], env)
    assert other.returncode == 1 and "already used for different requests" in other.stderr.decode()


def test_a_pickle_payload_on_the_queue_is_never_executed(redis_server, emulator, real_redis, registry, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (subprocess.call, (["touch", str(marker)],))

    payload = zlib.compress(pickle.dumps(("worker.jobs.run_chunk", None, Exploit(), {})))
    real_redis.hset("rq:job:evil", mapping={"data": payload, "status": "queued", "origin": "otb",
                                             "created_at": "2026-11-27T00:00:00.000000Z", "description": "evil"})
    real_redis.rpush("rq:queue:otb", "evil")
    real_redis.sadd("rq:queues", "rq:queue:otb")
    env = worker_env(redis_server.url, emulator.url)
    client = client_for(redis_server.url, registry)
    bid = client.submit(slow_batch(2, ms=0))  # queued behind the payload
    otb(["worker", "--burst"], env, timeout=60)
    assert not marker.exists()
    assert real_redis.hget("rq:job:evil", "status") == b"failed"
    assert client.status(bid)["request_counts"]["succeeded"] == 2  # the worker went on serving real work


def test_worker_warns_when_redis_keeps_nothing_on_disk(redis_server, emulator):
    env = worker_env(redis_server.url, emulator.url)
    proc = otb(["worker", "--burst"], env, timeout=60)
    assert "keeps nothing on disk" in (proc.stdout + proc.stderr).decode()


def test_a_redis_restart_mid_batch_loses_nothing(emulator, registry, tmp_path, spawn_worker):
    server = RedisServer(tmp_path, appendonly=True)
    try:
        env = worker_env(server.url, emulator.url, **FAST)
        client = client_for(server.url, registry)
        bid = client.submit(slow_batch(60, ms=300))
        workers = [spawn_worker(env), spawn_worker(env)]
        time.sleep(1.5)
        server.restart(pause=2.0)
        status = wait_final(client, bid)
        assert status["status"] == "completed"
        lines = assert_exactly_once(client, bid, 60)
        assert all(ln["meta"]["outcome"] == "succeeded" for ln in lines)
        for w in workers:
            w.stop()
    finally:
        server.stop()
