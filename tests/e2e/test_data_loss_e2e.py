"""Redis loses a batch under a running worker: the batch must not come back as a 'completed' record of
counters alone (no total, negative processing, no expiry), and what a submit leaves behind is bounded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from producer.client import Client
from worker.settings import Settings

from ..conftest import ROOT, RedisServer, otb, worker_env

pytestmark = pytest.mark.e2e

FAST = {"OTB_LEASE_TTL": "3", "OTB_CHUNK_SIZE": "10", "OTB_CONCURRENCY": "5"}


def slow(n: int, ms: int, tag: str) -> list[dict]:
    return [{"custom_id": f"r{i}", "model": "google/gemini-3-flash",
             "messages": [{"role": "user", "content": f"#emu:slow={ms} {tag} {i}"}]} for i in range(n)]


def assert_nothing_immortal_or_negative(conn: redis.Redis, bid: str) -> None:
    """Every key of the batch still expires, and a surviving record never counts past its total."""
    for key in conn.keys(f"otb:batch:{bid}*"):
        assert conn.ttl(key) > 0, f"{key!r} never expires: {conn.hgetall(key) if conn.type(key) == b'hash' else ''}"
    record = {k.decode(): v.decode() for k, v in conn.hgetall(f"otb:batch:{bid}").items()}
    if record:
        done = sum(int(record.get(k, 0)) for k in ("succeeded", "errored", "canceled", "expired"))
        assert "total" in record and done <= int(record["total"]), record


def test_a_batch_that_outlives_its_ttl_is_not_brought_back(redis_server, emulator, real_redis, registry):
    env = worker_env(redis_server.url, emulator.url, OTB_RESULT_TTL="2", **{**FAST, "OTB_CHUNK_SIZE": "40"})
    client = Client(real_redis, Settings(redis_url=redis_server.url, result_ttl=2, chunk_size=40), registry)
    bid = client.submit(slow(40, 800, "ttl"))  # one chunk, 8 waves of 0.8 s: the records expire in the third
    calls = emulator.stats()["calls"]
    assert otb(["worker", "--burst"], env, timeout=120).returncode == 0
    assert_nothing_immortal_or_negative(real_redis, bid)
    assert emulator.stats()["calls"] - calls < 40  # once the batch is gone, its requests are not sent
    time.sleep(2.1)
    shown = otb(["status", bid], env)
    assert shown.returncode == 1 and "not found" in shown.stderr.decode(), shown.stdout.decode()


def test_a_redis_restart_without_persistence_does_not_resurrect_the_batch(emulator, registry, tmp_path, spawn_worker):
    server = RedisServer(tmp_path, appendonly=False)  # and no save points: a restart forgets everything
    try:
        env = worker_env(server.url, emulator.url, **FAST)
        conn = server.client()
        client = Client(conn, Settings(redis_url=server.url, chunk_size=10), registry)
        bid = client.submit(slow(40, 1000, "restart"))
        spawn_worker(env)
        deadline = time.monotonic() + 30
        while int(conn.hget(f"otb:batch:{bid}", "succeeded") or 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.restart(pause=0.2)
        time.sleep(3)  # the calls in flight at the restart come back and commit
        conn = server.client()
        assert_nothing_immortal_or_negative(conn, bid)
        assert client.store.status(bid) is None or client.store.status(bid)["status"] == "lost"
    finally:
        server.stop()


def jsonl(path: Path, n: int, text: str) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"r{i}", "model": "google/gemini-3-flash",
                                        "messages": [{"role": "user", "content": text}]}) + "\n" for i in range(n)))
    return path


def test_a_killed_submit_leaves_bodies_that_expire_soon(redis_server, emulator, real_redis, tmp_path):
    src = jsonl(tmp_path / "big.jsonl", 60000, "x" * 300)
    env = worker_env(redis_server.url, emulator.url)
    proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "submit", str(src)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not real_redis.keys("otb:batch:*:requests") and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    staged = real_redis.keys("otb:batch:*:requests")
    assert staged and not real_redis.keys("otb:batch:batch_????????????????????????")  # it never landed
    ttl = real_redis.ttl(staged[0])
    assert 0 < ttl <= 900, f"a partial copy of {real_redis.hlen(staged[0])} bodies is kept {ttl} s"


def test_a_repeated_cli_submit_with_one_idempotency_key_stores_one_copy(redis_server, emulator, real_redis, tmp_path):
    src = jsonl(tmp_path / "b.jsonl", 5000, "y" * 200)
    env = worker_env(redis_server.url, emulator.url)
    first = otb(["submit", str(src), "--json", "--idempotency-key", "nightly"], env)
    used = real_redis.info("memory")["used_memory"]
    again = otb(["submit", str(src), "--json", "--idempotency-key", "nightly"], env)
    assert json.loads(again.stdout)["id"] == json.loads(first.stdout)["id"]
    grown = real_redis.info("memory")["used_memory"] - used
    assert len(real_redis.keys("otb:batch:*:requests")) == 1, f"a repeat stored another copy (+{grown} bytes)"
    assert grown < 100_000, f"a repeat grew Redis by {grown} bytes"
