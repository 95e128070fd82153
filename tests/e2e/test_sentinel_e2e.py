"""Redis high availability: REDIS_URL names three Sentinels, and the master dies mid-batch.

Real processes throughout: a master, a replica and three `redis-server --sentinel`, two `otb worker`
processes and the CLI (submit, status, results, report), all given only the `redis+sentinel://` URL.
The master is SIGKILLed while the batch runs; the Sentinels promote the replica, every client finds
it, and the batch ends with one result per request. A result committed on the old master and not yet
replicated is lost with it: the janitor runs that request again (paid twice, which `spent` shows).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from decimal import Decimal

import pytest

from bench.harness import SentinelTopology
from producer.client import Client
from worker.connection import connect
from worker.scripts import Scripts
from worker.settings import Settings
from worker.store import Store

from ..conftest import otb, worker_env
from ..test_store_redis import chat, result

pytestmark = pytest.mark.e2e

N = 300
FAST = {"OTB_LEASE_TTL": "3", "OTB_CHUNK_SIZE": "25", "OTB_CONCURRENCY": "10"}


def batch_file(path, n: int):  # type: ignore[no-untyped-def]
    path.write_text("".join(json.dumps({"custom_id": f"r{i}", "model": "google/gemini-3-flash",
                                        "messages": [{"role": "user", "content": f"#emu:slow=150 failover {i}"}]})
                            + "\n" for i in range(n)))
    return path


@pytest.fixture
def topology(tmp_path):  # type: ignore[no-untyped-def]
    topo = SentinelTopology(tmp_path)
    yield topo
    topo.stop()


def test_the_master_dies_mid_batch_and_every_request_ends_with_one_result(topology, emulator, registry, tmp_path,
                                                                         spawn_worker):
    env = worker_env(topology.url, emulator.url, **FAST)
    sub = otb(["submit", str(batch_file(tmp_path / "b.jsonl", N)), "--json"], env, timeout=60)
    assert sub.returncode == 0, sub.stderr.decode()
    bid = json.loads(sub.stdout)["id"]
    for _ in range(2):
        spawn_worker(env)

    client = Client(connect(topology.url), Settings(redis_url=topology.url), registry)
    deadline = time.monotonic() + 30
    while client.status(bid)["request_counts"]["succeeded"] < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    done_at_kill = client.status(bid)["request_counts"]["succeeded"]
    assert 0 < done_at_kill < N, done_at_kill
    old = topology.master.port
    topology.kill_master()
    topology.wait_promoted(timeout=30)
    assert topology.master_port() == topology.replica.port != old

    status = wait_completed(env, bid, timeout=90)
    counts = status["request_counts"]
    assert counts["total"] == counts["succeeded"] == N and counts["processing"] == 0, status

    out = otb(["results", bid], env, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    lines = [json.loads(x) for x in out.stdout.decode().splitlines()]
    assert [x["custom_id"] for x in lines] == [f"r{i}" for i in range(N)]  # one each, in input order
    cost = sum((Decimal(x["cost"]["total"]) for x in lines), Decimal(0))
    assert Decimal(status["cost"]["total"]) == cost > 0
    assert Decimal(status["spent"]) >= cost
    assert emulator.stats()["calls"] >= N

    report = otb(["report", "--batch", bid, "--format", "json"], env, timeout=60)
    assert report.returncode == 0, report.stderr.decode()
    total = json.loads(report.stdout)["total"]
    assert total["requests"] == N and Decimal(total["cost"]["total"]) == cost


def wait_completed(env: dict[str, str], bid: str, timeout: float) -> dict:
    """`otb status --json` (a fresh CLI process on the Sentinel URL) until the batch is completed."""
    deadline = time.monotonic() + timeout
    while True:
        shown = otb(["status", bid, "--json"], env, timeout=60)
        assert shown.returncode == 0, shown.stderr.decode()
        status = json.loads(shown.stdout)
        if status["status"] == "completed" or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_a_pipeline_cut_off_by_the_failover_loads_its_script_on_the_new_master(topology):
    """redis-py sends a pipeline again on the new master after a dropped connection; that master never
    saw the pipeline's scripts (SCRIPT LOAD is not replicated), so the resend must load them first."""
    conn = connect(topology.url)
    conn.hset("otb:batch:b1", "total", 1)
    conn.expire("otb:batch:b1", 600)
    assert conn.execute_command("WAIT", 1, 5000) == 1  # the record is on the replica before the master dies
    pipe = conn.pipeline(transaction=False)
    pipe.rpush("otb:batch:b1:jobs-list", "j1")
    Scripts(conn).same_life(batch="otb:batch:b1", others=["otb:batch:b1:jobs-list"], client=pipe)
    checked = pipe.load_scripts

    def checked_then_master_hangs() -> None:
        """The scripts are on the old master; then it stops answering and dies with the pipeline unanswered."""
        pipe.load_scripts = checked  # type: ignore[method-assign]  (once)
        checked()
        os.kill(topology.master.proc.pid, signal.SIGSTOP)
        threading.Timer(0.5, topology.kill_master).start()

    pipe.load_scripts = checked_then_master_hangs  # type: ignore[method-assign]
    assert pipe.execute() == [1, 1]
    assert topology.master_port() == topology.replica.port
    assert 0 < conn.pttl("otb:batch:b1:jobs-list") <= 600_000


def test_a_script_call_cut_off_by_the_failover_is_answered_by_the_new_master(topology):
    """The retry of a command whose master died under it asks the Sentinels again (redis-py alone
    redials the dead master until its retries run out), and loads the script the new master lacks."""
    conn = connect(topology.url)
    conn.hset("otb:batch:b2", "total", 1)
    conn.expire("otb:batch:b2", 600)
    conn.set("otb:batch:b2:other", 1)
    assert conn.execute_command("WAIT", 1, 5000) == 1
    scripts = Scripts(conn)
    os.kill(topology.master.proc.pid, signal.SIGSTOP)  # the call below is sent and never answered
    threading.Timer(0.5, topology.kill_master).start()
    assert scripts.same_life(batch="otb:batch:b2", others=["otb:batch:b2:other"]) == 1
    assert topology.master_port() == topology.replica.port
    assert 0 < conn.pttl("otb:batch:b2:other") <= 600_000


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_with_redis_wait_replicas_a_commit_returns_once_the_replica_has_it(tmp_path, registry, wait_replicas):
    """OTB_REDIS_WAIT_REPLICAS=1: the commit returns when the replica (50 ms away) has the result, so a
    failover right after it cannot lose it; without it, the commit returns before."""
    topo = SentinelTopology(tmp_path, replica_delay_ms=50, failover_timeout_ms=600_000)
    try:
        settings = Settings(redis_url=topo.url, redis_wait_replicas=wait_replicas, redis_wait_ms=5000)
        client = Client(connect(topo.url), settings, registry)
        bid = client.submit([chat("a")])
        store = Store.of(client.conn, settings)
        assert store.commit(bid, "a", result("a", "req_1"), "succeeded")
        on_replica = topo.replica.client().hexists(f"otb:batch:{bid}:results", "a")
        assert on_replica == bool(wait_replicas)
    finally:
        topo.stop()
