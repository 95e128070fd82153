"""Probes for a full Redis (maxmemory reached, noeviction): no result is dropped, no call is paid twice,
and a submission either lands whole or leaves nothing behind (issue 8 part 5 item 2).

Real redis-server, real `otb worker`, the emulator. Redis fills up by lowering `maxmemory` to what it
already holds, as a growing dataset would, and frees up by raising it again.
"""

from __future__ import annotations

import json
import time

import pytest

from bench.harness import RedisServer, settle
from producer.client import Client
from worker.settings import Settings

from ..conftest import otb, worker_env

pytestmark = pytest.mark.e2e


def fill(conn) -> None:  # type: ignore[no-untyped-def]
    """Make Redis full: from now on every write that needs memory is refused with OOM."""
    conn.config_set("maxmemory", max(int(conn.info("memory")["used_memory"]) - 1024, 1024 * 1024))


def test_a_full_redis_mid_batch_drops_no_result_and_pays_no_call_twice(emulator, registry, tmp_path, spawn_worker):
    """Before: results whose commit was refused were dropped while their chunk counted as done, the
    worker exited, and after memory was freed requests never got a result (some paid several times)."""
    server = RedisServer(tmp_path, extra=("--maxmemory-policy", "noeviction"))
    try:
        conn = server.client()
        n = 400
        client = Client(conn, Settings(redis_url=server.url, chunk_size=50), registry)
        bid = client.submit([{"custom_id": f"r{i}", "model": "google/gemini-3-flash",
                              "messages": [{"role": "user", "content": f"#emu:slow=300 question {i}"}]} for i in range(n)])
        calls_before = emulator.stats()["calls"]
        env = worker_env(server.url, emulator.url, OTB_LEASE_TTL="3", OTB_CHUNK_SIZE="50", OTB_CONCURRENCY="20")
        worker = spawn_worker(env)
        while int(conn.hget(f"otb:batch:{bid}", "succeeded") or 0) < 60:
            time.sleep(0.05)
        fill(conn)
        time.sleep(13)  # longer than RQ's heartbeat interval (10 s) and several lease lifetimes (3 s)
        stuck = int(conn.hget(f"otb:batch:{bid}", "succeeded") or 0)
        conn.config_set("maxmemory", 0)
        status = settle(client, bid, 60)
        alive = worker.proc.poll() is None
        log = worker.stop()
        assert status["request_counts"] == {"total": n, "succeeded": n, "errored": 0, "canceled": 0, "expired": 0,
                                             "processing": 0}, log[-3000:]
        lines = list(client.results(bid))
        assert sorted(ln["custom_id"] for ln in lines) == sorted(f"r{i}" for i in range(n))
        assert alive, log[-3000:]  # the worker rode it out
        assert stuck < n
        assert emulator.stats()["calls"] - calls_before == n  # no call was paid twice
        assert "refuses writes" in log
    finally:
        server.stop()


def test_submit_to_a_full_redis_says_so_in_one_line_and_leaves_nothing(emulator, tmp_path):
    """Before: a raw OutOfMemoryError traceback, and the request bodies written so far stayed behind."""
    server = RedisServer(tmp_path, extra=("--maxmemory-policy", "noeviction"))
    try:
        conn = server.client()
        src = tmp_path / "big.jsonl"
        text = "x" * 2000
        src.write_text("".join(json.dumps({"custom_id": f"r{i}", "model": "google/gemini-3-flash",
                                           "messages": [{"role": "user", "content": f"{text} {i}"}]}) + "\n"
                               for i in range(5000)))
        conn.config_set("maxmemory", int(conn.info("memory")["used_memory"]) + 2_000_000)  # room for a part only
        proc = otb(["submit", str(src)], worker_env(server.url, emulator.url))
        err = proc.stderr.decode()
        assert proc.returncode == 1
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "out of memory" in err and "nothing was enqueued" in err
        assert conn.dbsize() == 0, sorted(conn.keys())
    finally:
        server.stop()
