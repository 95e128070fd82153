"""One limit, many workers: the shared limiter on a real Redis lets through what one limit allows, no more."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest
import redis

from producer.client import Client
from worker.ratelimit import Limiter, RateLimits, Scope
from worker.settings import Settings

from ..conftest import worker_env

pytestmark = pytest.mark.e2e


def _hammer(url: str, start_at: float, seconds: float, out: "mp.Queue[int]") -> None:
    """One worker process taking capacity as fast as the limiter allows, from a common start time."""
    limiter = Limiter(redis.Redis.from_url(url))
    scope = Scope.of("google", "gemini-3-flash-preview", "key-A", RateLimits(rpm=600, input_tpm=60_000))
    time.sleep(max(0.0, start_at - time.time()))
    taken, end = 0, time.time() + seconds
    while time.time() < end:
        wait = limiter.try_acquire(scope, 50, 0)
        if wait == 0:
            taken += 1
        else:
            time.sleep(min(wait, 0.05))
    out.put(taken)


def test_four_processes_share_one_limit(redis_server, real_redis):
    ctx = mp.get_context("spawn")
    out: mp.Queue[int] = ctx.Queue()
    seconds = 3.0
    start_at = time.time() + 4  # after every process has started
    procs = [ctx.Process(target=_hammer, args=(redis_server.url, start_at, seconds, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    total = sum(out.get(timeout=5) for _ in procs)
    # bucket of 5% of a minute (30 requests), refilled at 95% of 600/min = 9.5/s
    allowed = 30 + 9.5 * seconds
    assert total <= allowed + 1, total  # a local-memory limiter would let ~4x through
    assert total >= 0.8 * allowed, total


def test_tokens_are_estimated_then_corrected(real_redis):
    limiter = Limiter(real_redis)
    scope = Scope.of("anthropic", "claude-haiku-5-5", "key-B", RateLimits(input_tpm=6000))  # bucket holds 300
    assert limiter.try_acquire(scope, 250, 0) == 0
    limiter.correct(scope, 250, 40, 0, 0)  # the call used 40 tokens, not 250: 210 come back
    assert limiter.try_acquire(scope, 250, 0) == 0
    assert limiter.try_acquire(scope, 250, 0) > 0  # now the bucket is short


def test_a_cool_down_holds_every_caller_of_the_model_and_only_that_model(real_redis):
    limiter = Limiter(real_redis)
    hot = Scope.of("anthropic", "claude-opus-5-5", "key-C", RateLimits())
    other = Scope.of("anthropic", "claude-haiku-5-5", "key-C", RateLimits())
    limiter.cool_down(hot, 1.5, "529 overloaded_error")
    assert 1.3 < limiter.try_acquire(hot, 1, 0) <= 1.5
    assert limiter.try_acquire(other, 1, 0) == 0
    limiter.cool_down(hot, 0.2, "shorter")  # never shortened
    assert limiter.try_acquire(hot, 1, 0) > 1.0


def test_workers_stay_under_the_providers_limit(redis_server, real_redis, registry, tmp_path, spawn_worker):
    from worker.emulator import EmulatorConfig, start_background

    emu = start_background(EmulatorConfig(rpm_limit=600), registry)  # the provider: 600 requests a minute
    try:
        limits = tmp_path / "limits.json"
        limits.write_text(json.dumps({"google/gemini-3-flash": {"rpm": 600}}))
        env = worker_env(redis_server.url, emu.url, OTB_LIMITS=str(limits), OTB_CHUNK_SIZE="20")
        client = Client(real_redis, Settings(redis_url=redis_server.url, chunk_size=20), registry)
        bid = client.submit([{"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": f"q{i}"}]}
                             for i in range(100)])
        started = time.monotonic()
        for _ in range(3):
            spawn_worker(env)
        status = client.wait(bid, timeout=60)
        elapsed = time.monotonic() - started
        assert status["request_counts"]["succeeded"] == 100
        assert emu.stats()["rate_limited"] == 0  # three workers, one shared limit: no 429 at all
        assert elapsed >= (100 - 30) / 10  # paced: a 30-request burst, then at most 10/s
    finally:
        emu.stop()
