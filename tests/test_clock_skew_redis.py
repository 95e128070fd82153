"""Batch expiry is judged on Redis's clock (TIME), not on the clock of the machine that reads it (real redis-server)."""

from __future__ import annotations

import time
import types

import worker.batch
import worker.recovery
from producer.client import Client
from worker import clock
from worker.batch import BatchGate
from worker.recovery import expire_due
from worker.settings import Settings

from .conftest import ROOT


def test_a_machine_clock_two_hours_ahead_does_not_expire_a_one_hour_window(real_redis, redis_server, registry,
                                                                            monkeypatch):
    client = Client(real_redis, Settings(redis_url=redis_server.url, registry_path=ROOT / "registry.json"), registry)
    chat = {"custom_id": "a", "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}
    ahead = time.time() + 7200
    skewed = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    skewed.time = lambda: ahead
    for module in (worker.batch, worker.recovery):
        monkeypatch.setattr(module, "time", skewed)
    with clock.pinned(ahead):  # producer and worker both run 2 h ahead of Redis
        bid = client.submit([chat], completion_window=3600)
        assert BatchGate(client.store, bid).closed_code() is None
        assert expire_due(real_redis, client.settings) == []
    status = client.status(bid)
    assert status["status"] == "in_progress"
    assert abs(status["expires_at"] - (client.store.redis_now() + 3600)) < 60
