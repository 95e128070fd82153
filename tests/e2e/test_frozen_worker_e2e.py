"""A worker frozen (SIGSTOP) past its chunk's lease, taken over, then resumed: it sends nothing more.

Real processes: a redis-server, `bench.counting_emulator` (which records when each request body
arrived, on CLOCK_MONOTONIC, shared by every process here), two `otb worker`s with OTB_LEASE_TTL=2.
Worker A runs alone until its chunk has calls in flight and requests waiting for a slot; then its
worker and work horse are stopped, B starts and finishes the batch (its janitor re-queues A's chunks
once A's lease lapses). A is resumed after the batch completed: its answers for the calls that were in
flight arrive and their commits are refused, and it must find its lease lost and send none of the
requests that waited (it used to send them all: each paid twice, then refused).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.chaos import _check, _wait_http
from bench.harness import chunks_held_by
from bench.throughput import child_pids, stop_session
from producer.client import Client
from worker.settings import Settings

from ..conftest import ROOT, WorkerProcess, free_port, worker_env

pytestmark = pytest.mark.e2e

N = 100


@pytest.fixture
def counting_emulator(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    with open(tmp_path / "emulator.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.counting_emulator", "--port", str(port),
                                 "--latency-ms", "400"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/_counting/repeats")
        yield url
    finally:
        stop_session(proc)


def signal_all(worker: WorkerProcess, sig: int) -> None:
    for pid in worker.session_pids():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_until(what: Any, timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {why}")
        time.sleep(0.05)


def test_a_worker_resumed_after_its_chunks_were_taken_over_sends_nothing_more(
        real_redis, redis_server, counting_emulator, registry, tmp_path):  # type: ignore[no-untyped-def]
    env = worker_env(redis_server.url, counting_emulator, OTB_LEASE_TTL="2", OTB_CONCURRENCY="4",
                     OTB_CHUNK_SIZE="20")
    client = Client(real_redis, Settings(redis_url=redis_server.url, registry_path=ROOT / "registry.json",
                                         chunk_size=20), registry)
    a = WorkerProcess(env, log=tmp_path / "a.log")
    b: WorkerProcess | None = None
    try:
        bid = client.submit([{"custom_id": f"f{i}", "model": "google/gemini-3-flash", "max_tokens": 16,
                              "messages": [{"role": "user", "content": f"frozen question {i}"}]} for i in range(N)])
        key = f"otb:batch:{bid}"
        # A has committed a few, so its chunk has calls in flight and most of its requests still waiting.
        wait_until(lambda: int(real_redis.hget(key, "succeeded") or 0) >= 4 and chunks_held_by(real_redis, a.session_pids()),
                   60, "worker A runs a chunk")
        signal_all(a, signal.SIGSTOP)
        held = chunks_held_by(real_redis, a.session_pids())
        waiting = N - int(real_redis.hget(key, "succeeded") or 0)
        b = WorkerProcess(env, log=tmp_path / "b.log")
        wait_until(lambda: real_redis.hget(key, "status") == b"completed", 120, "worker B completes the batch")
        frozen = real_redis.hgetall(f"{key}:results")

        resumed = time.monotonic()
        signal_all(a, signal.SIGCONT)
        quiet: list[float] = []

        def a_is_done() -> bool:  # no work horse and nothing held, for a second running
            if child_pids(a.proc.pid) or chunks_held_by(real_redis, a.session_pids()):
                quiet.clear()
                return False
            quiet.append(time.monotonic())
            return quiet[-1] - quiet[0] >= 1.0
        wait_until(a_is_done, 60, "worker A's run ends after it is resumed")

        repeated = httpx.get(counting_emulator + "/_counting/sends", timeout=30).json()["repeated"]
        sent_after_resume = sum(1 for sends in repeated for _, at in sends if at >= resumed)
        report = _check(real_redis, bid, N)
        events = real_redis.xrange(f"{key}:events")
        commits = Counter(fields[b"custom_id"] for _, fields in events if fields.get(b"type") == b"request")
        a_log = (tmp_path / "a.log").read_text()
    finally:
        signal_all(a, signal.SIGCONT)
        a.stop(timeout=10)
        if b is not None:
            b.stop(timeout=10)

    assert held and waiting > 4  # it was frozen mid-chunk, with requests waiting for a slot
    # Resumed, it sent no request upstream again (B had run and committed them all).
    assert sent_after_resume == 0, repeated
    assert "lost" in a_log and "no new calls" in a_log
    # Every request has one result, committed once; counters and cost equal the result lines; nothing
    # changed once A was back (its late commits were refused).
    assert report["results"] == N and report["lost"] == 0 and report["counts_match"] is True
    assert sum(commits.values()) == N and max(commits.values()) == 1
    assert real_redis.hgetall(f"{key}:results") == frozen
