"""The embedded stack for `otb run` / `otb demo`: in-process Redis, in-process worker, optional emulator.

Nothing here changes behaviour under test; it only assembles the same parts in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import fakeredis
import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from worker import jobs
from worker.connection import connect as connect_redis
from worker.emulator import EmulatorConfig, start_background
from worker.recovery import queue_for
from worker.registry import Registry
from worker.providers import ADAPTERS
from worker.settings import Settings


EMULATOR_KEY = "emulator-key-not-secret"


def connect(settings: Settings) -> redis.Redis:
    """A shared Redis from REDIS_URL, or (embedded default) a private in-process fakeredis."""
    if settings.redis_url:
        return connect_redis(settings.redis_url)
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@contextmanager
def emulated(settings: Settings, registry: Registry, config: EmulatorConfig | None = None) -> Iterator[Settings]:
    """Start the built-in provider emulator and point both adapters at it (placeholder keys where unset)."""
    with ExitStack() as stack:
        emu = start_background(config or EmulatorConfig(), registry)
        stack.callback(emu.stop)
        keys = {p: settings.api_keys.get(p) or EMULATOR_KEY for p in ADAPTERS}
        yield settings.pointed_at(emu.url).with_(api_keys=keys)


def drain(conn: redis.Redis, settings: Settings) -> None:
    """Run every queued job in this process until the queue is empty."""
    jobs.configure(settings)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    worker = SimpleWorker([queue_for(conn, settings)], connection=conn, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING")
