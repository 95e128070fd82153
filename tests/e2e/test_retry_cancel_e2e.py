"""`otb retry` killed part-way, `otb cancel` during a retry, requests left with neither result nor job.

Real redis-server, real `otb worker` processes and the real CLI; the emulator counts what is sent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from bench.harness import settle as final_status  # polled: after a retry the stream holds the earlier end event
from producer.client import Client
from producer.control import cancel
from worker.registry import Registry
from worker.settings import Settings

from ..conftest import ROOT, otb, worker_env

pytestmark = pytest.mark.e2e

FAST = {"OTB_LEASE_TTL": "3", "OTB_CHUNK_SIZE": "100", "OTB_CONCURRENCY": "50"}
LIVE = {"queued", "started", "scheduled", "deferred"}


def failing_once(n: int) -> list[dict]:
    """Requests whose first call is refused (400, fatal) and whose second succeeds: errored, then retryable."""
    tag = uuid.uuid4().hex[:8]  # the emulator remembers bodies it failed once: new ones for every test
    return [{"custom_id": f"r{i}", "model": "google/gemini-3-flash",
             "messages": [{"role": "user", "content": f"#emu:fail-first=1:400 retry probe {tag} {i}"}]}
            for i in range(n)]


def errored_batch(url: str, registry: Registry, env: dict[str, str], n: int) -> tuple[Client, str]:
    client = Client(redis.Redis.from_url(url), Settings(redis_url=url, chunk_size=100), registry)
    bid = client.submit(failing_once(n))
    assert otb(["worker", "--burst"], env, timeout=120).returncode == 0
    assert client.status(bid)["request_counts"]["errored"] == n
    return client, bid


def orphans(conn: redis.Redis, bid: str) -> list[str]:
    """Requests with no result that no live chunk job carries: nothing would ever finish them."""
    ids = [i.decode() for i in conn.lrange(f"otb:batch:{bid}:ids", 0, -1)]
    results = conn.hmget(f"otb:batch:{bid}:results", ids)
    open_ids = {cid for cid, res in zip(ids, results) if res is None}
    for raw in conn.smembers(f"otb:batch:{bid}:jobs"):
        try:
            job = Job.fetch(raw.decode(), connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        if job.get_status() in LIVE:
            open_ids -= set(job.args[1])
    return sorted(open_ids)


def start_retry(env: dict[str, str], bid: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "producer.cli", "retry", bid], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def when_retry_is_part_way(conn: redis.Redis, bid: str, n: int, proc: subprocess.Popen) -> int:
    """Block until the running `otb retry` has taken back some but not all errored results."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        errored = int(conn.hget(f"otb:batch:{bid}", "errored") or 0)
        if 0 < errored < n:
            return errored
        assert proc.poll() is None, "retry finished before it could be interrupted"
        time.sleep(0.002)
    raise AssertionError("retry never started")


def test_a_retry_killed_part_way_leaves_every_request_with_a_result_or_a_job(redis_server, emulator, real_redis,
                                                                             registry):
    n = 3000
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client, bid = errored_batch(redis_server.url, registry, env, n)
    proc = start_retry(env, bid)
    when_retry_is_part_way(real_redis, bid, n, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    left = orphans(real_redis, bid)
    assert left == [], f"{len(left)} requests have neither a result nor a job"
    # the rest is still errored, so a second retry picks it up; then every request ends succeeded
    assert otb(["retry", bid], env).returncode == 0
    assert otb(["worker", "--burst"], env, timeout=120).returncode == 0
    status = client.status(bid)
    assert status["status"] == "completed" and status["request_counts"]["succeeded"] == n


def test_cancel_during_a_retry_wins(redis_server, emulator, real_redis, registry):
    n = 3000
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client, bid = errored_batch(redis_server.url, registry, env, n)
    proc = start_retry(env, bid)
    when_retry_is_part_way(real_redis, bid, n, proc)
    said = cancel(real_redis, client.settings, bid)["status"]
    proc.wait(timeout=60)
    calls = emulator.stats()["calls"]
    assert otb(["worker", "--burst"], env, timeout=120).returncode == 0
    status = final_status(client, bid, timeout=30)
    sent = emulator.stats()["calls"] - calls
    assert said in ("cancelling", "cancelled"), (said, status["status"], sent)
    assert (status["status"], sent) == ("cancelled", 0)
    again = otb(["retry", bid], env)
    assert again.returncode == 1 and f"batch {bid} is cancelled" in again.stderr.decode()  # no worker ran before the cancel: nothing retried may be sent after it
    counts = status["request_counts"]
    assert counts["errored"] + counts["canceled"] == n and counts["processing"] == 0


def test_the_janitor_finishes_requests_left_with_neither_result_nor_job(redis_server, emulator, real_redis, registry,
                                                                        spawn_worker):
    """What an interrupted retry of an earlier version left: results taken back, nothing enqueued."""
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client = Client(real_redis, Settings(redis_url=redis_server.url, chunk_size=100), registry)
    reqs = failing_once(40)
    running, cancelled = client.submit(reqs[:20]), client.submit(reqs[20:])
    assert otb(["worker", "--burst"], env, timeout=120).returncode == 0
    for bid in (running, cancelled):
        for cid, raw in client.store.raw_results(bid).items():
            if int(cid[1:]) % 2:
                assert client.store.uncommit(bid, cid, raw, "errored")
        assert len(orphans(real_redis, bid)) == 10
    assert otb(["cancel", cancelled], env).returncode == 0
    spawn_worker(env)
    assert final_status(client, running)["status"] == "completed"
    assert final_status(client, cancelled)["status"] == "cancelled"
    assert client.status(running)["request_counts"]["succeeded"] == 10
    assert client.status(cancelled)["request_counts"]["canceled"] == 10


def test_retry_expired_reruns_what_the_window_expired_in_a_fresh_window(redis_server, emulator, real_redis, registry):
    """A batch whose window ended before any worker ran it: every line expired. Plain `otb retry` says
    how to re-run them; `--expired` opens the batch again with a fresh window of its length, and each
    line then succeeds once."""
    env = worker_env(redis_server.url, emulator.url, **FAST)
    client = Client(real_redis, Settings(redis_url=redis_server.url, chunk_size=100), registry)
    bid = client.submit([{"custom_id": f"x{i}", "model": "google/gemini-3-flash",
                          "messages": [{"role": "user", "content": f"late {i} {uuid.uuid4().hex}"}]} for i in range(4)],
                        completion_window=10)
    ends = float(real_redis.hget(f"otb:batch:{bid}", "expires_at"))
    while (lambda t: t[0] + t[1] / 1e6)(real_redis.time()) <= ends:
        time.sleep(0.2)  # no worker yet: the window runs out
    assert otb(["worker", "--burst"], env, timeout=120).returncode == 0
    expired = final_status(client, bid)
    assert expired["status"] == "expired" and expired["request_counts"]["expired"] == 4
    plain = otb(["retry", bid], env)
    assert plain.returncode == 1 and "otb retry --expired" in plain.stderr.decode()
    assert client.retry(bid, expired=True) == 4
    renewed = float(real_redis.hget(f"otb:batch:{bid}", "expires_at"))
    assert renewed > ends + 10 - 1  # a fresh window of the batch's length, from the retry
    assert real_redis.zscore("otb:deadlines", bid) == renewed
    assert otb(["worker", "--burst"], env, timeout=120).returncode == 0
    status = final_status(client, bid)
    assert status["status"] == "completed" and status["request_counts"]["succeeded"] == 4
    assert status["request_counts"]["expired"] == 0 and client.retry(bid, expired=True) == 0
    lines = [json.loads(raw) for raw in client.store.raw_results(bid).values()]
    assert sorted(line["custom_id"] for line in lines) == [f"x{i}" for i in range(4)]
    assert {line["meta"]["route"] for line in lines} == {"realtime"}


def test_retry_of_lines_refused_at_submit_says_why_nothing_ran(redis_server, emulator, tmp_path):
    """`otb retry` said "0 errored requests re-enqueued" while status showed errored lines: they were
    refused at submit (--keep-valid), and running them again would refuse them again."""
    env = worker_env(redis_server.url, emulator.url)
    src = tmp_path / "mixed.jsonl"
    src.write_text('{"custom_id":"a","model":"google/gemini-3-flash","messages":[{"role":"user","content":"hi"}]}\n'
                   '{"custom_id":"b","model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}\n')
    sub = otb(["submit", str(src), "--keep-valid", "--json"], env)
    assert sub.returncode == 0, sub.stderr.decode()
    bid = json.loads(sub.stdout)["id"]
    done = otb(["retry", bid], env)
    assert done.returncode == 0 and done.stdout.decode().strip() == f"{bid}: 0 errored requests re-enqueued"
    assert done.stderr.decode().startswith("note: 1 errored line was refused at submit"), done.stderr.decode()
