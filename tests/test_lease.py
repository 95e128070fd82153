"""Chunk leases belong to their holder (real redis-server): a stale holder can neither extend nor drop
the lease of the worker that took its chunk over, learns that it lost it, and then sends nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from producer.client import Client
from worker import clock
from worker.keys import Keys
from worker.lease import Lease, LeaseLost
from worker.recovery import claim_next, recover_claimed
from worker.settings import Settings

from .conftest import ROOT

KEY = Keys().lease("job-1")


def wait_for(what, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.02)
    return False


def test_a_holder_whose_lease_was_taken_over_neither_extends_nor_deletes_it(real_redis: redis.Redis) -> None:
    stale = Lease(real_redis, KEY, ttl=0.6)
    with stale:
        real_redis.set(KEY, "the-taker", px=60_000)  # it lapsed; the worker that took the chunk holds it now
        assert wait_for(stale.lost.is_set)  # its next refresh (ttl/3) finds another's
        assert real_redis.get(KEY) == b"the-taker" and real_redis.pttl(KEY) > 50_000  # not extended
        assert not stale.holds()
    assert real_redis.get(KEY) == b"the-taker"  # nor deleted on exit


def test_a_holder_whose_lease_lapsed_does_not_set_it_again(real_redis: redis.Redis) -> None:
    stale = Lease(real_redis, KEY, ttl=0.6)
    with stale:
        real_redis.delete(KEY)  # lapsed while its worker was cut off
        assert wait_for(stale.lost.is_set)
        assert real_redis.exists(KEY) == 0


def test_a_held_lease_is_refreshed_and_dropped_on_exit(real_redis: redis.Redis) -> None:
    with Lease(real_redis, KEY, ttl=0.6) as lease:
        time.sleep(1.5)  # well past one ttl: only the refreshes keep it
        assert real_redis.get(KEY) == lease.owner.encode() and not lease.lost.is_set() and lease.holds()
    assert real_redis.exists(KEY) == 0


def test_the_send_gate_waits_for_a_refresh_after_a_stall_and_refuses_once_lost(real_redis: redis.Redis) -> None:
    lease = Lease(real_redis, KEY, ttl=30)
    with lease:
        lease.held_until = time.monotonic() - 1  # as after a SIGSTOP longer than the lease: not known to hold
        assert not lease.holds()
        asyncio.run(asyncio.wait_for(lease.confirm(), 5))  # still ours: the refresh it asked for confirms it
        assert lease.holds()
        real_redis.set(KEY, "the-taker")
        lease.held_until = time.monotonic() - 1
        with pytest.raises(LeaseLost):
            asyncio.run(asyncio.wait_for(lease.confirm(), 5))


def test_a_claimer_that_lost_its_lease_claims_nothing_and_its_claims_are_taken_back_at_once(
        real_redis: redis.Redis, registry) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(registry_path=ROOT / "registry.json", chunk_size=2)
    chat = {"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}
    Client(real_redis, settings, registry).submit([{**chat, "custom_id": f"r{i}"} for i in range(6)])
    keys = Keys()
    with Lease(real_redis, KEY, ttl=30) as lease:
        got = claim_next(real_redis, settings, KEY, lease.owner)
        assert got is not None
        assert recover_claimed(real_redis, settings, now=clock.now() + 1) == []  # its claimer holds the lease
        real_redis.set(KEY, "the-taker")  # lapsed and taken over
        assert claim_next(real_redis, settings, KEY, lease.owner) is None
        assert real_redis.hlen(keys.claimed) == 1
        # Not 2 x ttl later: the claim names its claimer, who no longer holds the lease.
        assert recover_claimed(real_redis, settings, now=clock.now() + 1) == [got[0]]
        assert real_redis.hlen(keys.claimed) == 0
