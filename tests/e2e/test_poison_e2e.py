"""Probes for poison input: one crafted request must never wedge another request's chunk or batch.

Real redis-server, real `otb worker` processes and the emulator. Each test was red before its fix
(issue 8 part 5 item 1): see the docstrings for what happened then.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from bench.harness import settle
from producer.client import Client
from worker.settings import Settings

from ..conftest import otb, worker_env

pytestmark = pytest.mark.e2e

FAST = {"OTB_LEASE_TTL": "3", "OTB_CHUNK_SIZE": "10", "OTB_CONCURRENCY": "20"}


def chat(cid: str, text: str) -> dict:
    return {"custom_id": cid, "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": text}]}


def nested_schema(depth: int) -> dict:
    """A chat body whose JSON schema is `depth` levels of {"items": ...} deep (as text, built without recursion)."""
    schema = "{\"items\":" * depth + "{}" + "}" * depth
    line = ('{"custom_id":"deep","model":"google/gemini-3-flash","messages":[{"role":"user","content":"hi"}],'
            '"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":' + schema + '}}}')
    return {"raw": line}


def test_a_line_nested_deeper_than_providers_accept_is_refused_at_submit(redis_server, emulator, real_redis, tmp_path):
    """Before: a body 960 levels deep passed `otb submit`, then failed 5 attempts as upstream_unreachable."""
    src = tmp_path / "deep.jsonl"
    src.write_text(nested_schema(960)["raw"] + "\n")
    proc = otb(["submit", str(src)], worker_env(redis_server.url, emulator.url))
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "nested" in err and "levels" in err and "Traceback" not in err
    assert real_redis.zcard("otb:batches") == 0 and real_redis.llen("rq:queue:otb") == 0


def test_a_poison_request_cannot_wedge_another_users_batch(redis_server, emulator, real_redis, registry, spawn_worker):
    """Before: the innocent chunk claimed the poison chunk, crashed with it (RecursionError) 4 times over,
    paid 40 calls and stayed in_progress forever in RQ's failed registry."""
    settings = Settings(redis_url=redis_server.url, chunk_size=10)
    client = Client(real_redis, settings, registry)
    innocent = client.submit([chat(f"i{n}", f"#emu:slow=800 innocent {n}") for n in range(10)])
    poisoned = client.submit([chat(f"p{n}", f"fine {n}") for n in range(3)])
    # a stored record no worker can decode (written by an older producer, or by anyone with Redis access)
    deep = "[" * 5000 + "]" * 5000
    raw = '{"url":"/v1/chat/completions","line":2,"body":{"model":"google/gemini-3-flash","messages":' + deep + "}}"
    real_redis.hset(f"otb:batch:{poisoned}:requests", "p1", raw)
    calls_before = emulator.stats()["calls"]
    spawn_worker(worker_env(redis_server.url, emulator.url, **FAST))
    for bid in (innocent, poisoned):
        status = settle(client, bid)
        assert status["status"] == "completed", status
    assert client.status(innocent)["request_counts"]["succeeded"] == 10
    lines = {ln["custom_id"]: ln for ln in client.results(poisoned)}
    assert lines["p0"]["meta"]["outcome"] == lines["p2"]["meta"]["outcome"] == "succeeded"
    bad = lines["p1"]
    assert bad["meta"]["outcome"] == "errored" and "cannot be read" in json.dumps(bad)
    assert emulator.stats()["calls"] - calls_before == 12  # each good request paid once
    assert real_redis.zcard("rq:failed:otb") == 0


def test_a_chunk_whose_work_horse_keeps_dying_ends_its_open_requests(redis_server, emulator, real_redis, registry,
                                                                     spawn_worker):
    """Before: after RQ's retries the chunk sat in RQ's failed registry and its batch stayed in_progress."""
    client = Client(real_redis, Settings(redis_url=redis_server.url, chunk_size=10), registry)
    bid = client.submit([chat("quick", "fast"), chat("stuck", "#emu:slow=600000 never answers")])
    worker = spawn_worker(worker_env(redis_server.url, emulator.url, **FAST))
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 4 and time.monotonic() < deadline:  # RQ retries a chunk 3 times: kill its horse 4 times
        horses = [pid for pid in worker.session_pids() if pid != worker.proc.pid]
        if horses and real_redis.hget(f"otb:batch:{bid}", "succeeded") == b"1":
            os.kill(horses[0], 9)
            kills += 1
            time.sleep(0.5)
        time.sleep(0.05)
    assert kills == 4
    status = settle(client, bid, 30)
    assert status["status"] == "completed"
    lines = {ln["custom_id"]: ln for ln in client.results(bid)}
    assert lines["quick"]["meta"]["outcome"] == "succeeded"
    assert lines["stuck"]["meta"]["outcome"] == "errored"
    assert lines["stuck"]["error"]["code"] == "chunk_failed"
    assert "signal 9" in lines["stuck"]["error"]["message"]
    log = worker.stop()
    assert "its work horse" in log and "was killed by SIGKILL (signal 9)" in log  # not only "terminated unexpectedly"
