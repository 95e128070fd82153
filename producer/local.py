"""The embedded stack for `otb run` / `otb demo`: in-process Redis, in-process worker, optional emulator.

Nothing here changes behaviour under test; it only assembles the same parts in one process. The
embedded parts (fakeredis, RQ, the worker, the emulator) are imported where they are used:
`connect_shared` is on the path of every `otb` command and must start fast.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from worker.connection import connect as connect_redis
from worker.connection import RETRIES, ensure_reachable
from worker.errors import ConfigError

if TYPE_CHECKING:
    import redis

    from worker.emulator import EmulatorConfig
    from worker.registry import Registry
    from worker.settings import Settings


EMULATOR_KEY = "emulator-key-not-secret"
NO_REDIS_URL = ("REDIS_URL is not set. Workers and producers share one Redis, e.g. "
                "export REDIS_URL=redis://127.0.0.1:6379/0 (`otb run` and `otb demo` work without it).")


def connect(settings: Settings) -> redis.Redis:
    """A shared Redis from REDIS_URL, or (embedded default) a private in-process fakeredis."""
    if settings.redis_url:
        return connect_redis(settings.redis_url)
    return embedded_redis()


def embedded_redis() -> redis.Redis:
    """A private in-process Redis: nothing outside this process (no `otb worker`) can see it."""
    import fakeredis

    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def connect_shared(settings: Settings, *, retries: int = RETRIES) -> redis.Redis:
    """The Redis workers share, checked at once: ConfigError if REDIS_URL is unset or nothing answers.

    Without REDIS_URL a submit would land in a private Redis no worker sees and never finish, so
    the embedded stack is only ever chosen explicitly (`otb run`, `otb demo`, `Client.embedded()`).
    """
    if not settings.redis_url:
        raise ConfigError(NO_REDIS_URL)
    ensure_reachable(settings.redis_url)
    return connect_redis(settings.redis_url, retries=retries)


@contextmanager
def emulated(settings: Settings, registry: Registry, config: EmulatorConfig | None = None) -> Iterator[Settings]:
    """Start the built-in provider emulator and point both adapters at it (placeholder keys where unset)."""
    from worker.emulator import EmulatorConfig, start_background
    from worker.providers import ADAPTERS

    with ExitStack() as stack:
        emu = start_background(config or EmulatorConfig(), registry)
        stack.callback(emu.stop)
        keys = {p: settings.api_keys.get(p) or EMULATOR_KEY for p in ADAPTERS}
        yield settings.pointed_at(emu.url).with_(api_keys=keys)


def drain(conn: redis.Redis, settings: Settings) -> None:
    """Run every queued job in this process until the queue is empty."""
    from rq.serializers import JSONSerializer

    from worker import jobs
    from worker.native import run_until_done
    from worker.queues import queues_for
    from worker.rqworker import InProcessWorker

    jobs.configure(settings)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    worker = InProcessWorker(queues_for(conn, settings), connection=conn, serializer=JSONSerializer)
    while True:
        worker.work(burst=True, logging_level="WARNING")
        if not run_until_done(conn, settings):  # native lines: polled here; what they hand back runs next round
            break
