"""The whole stack in one process, for `otb serve --emulator`: embedded Redis, worker, emulator.

A newcomer points the seed's snippets at one command and sees them answered. The parts are the real
ones (the same app, submit path, chunk jobs, janitor and adapters as with REDIS_URL): only the Redis
is fakeredis in this process's memory, shared by its threads, and the providers are the built-in
emulator on a loopback port. The worker is an RQ worker on a thread of this process that takes both
queues, calls first (as `otb worker` does), so calls and batch chunks both run here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import fakeredis
import redis
import redis.asyncio as aioredis
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from worker import jobs
from worker.emulator import EmulatorConfig
from worker.queues import queues_for
from worker.recovery import Janitor
from worker.registry import Registry
from worker.native import NativePoller
from worker.rqworker import InProcessWorker
from worker.settings import Settings

from .local import emulated

WORKER_TTL = 20  # seconds: the thread's worker notices a stop within WORKER_TTL - 15 (RQ's dequeue timeout)


class ThreadWorker(InProcessWorker):
    """An RQ worker on a thread of the serving process. Jobs run on its thread (a fork would not
    share the in-memory Redis), the job timeout is a timer (SIGALRM reaches only the main thread),
    and SIGINT/SIGTERM stay with the server."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        """Signals are the server's: it stops, and this daemon thread with it."""

    def stop(self) -> None:
        """Take no more jobs; the thread ends at its next dequeue timeout."""
        self._stop_requested = True


@dataclass(frozen=True)
class Standalone:
    """The running stack: settings pointed at the emulator, and the embedded Redis's clients."""

    settings: Settings
    conn: redis.Redis
    server: fakeredis.FakeServer
    emulator_url: str

    def async_redis(self) -> aioredis.Redis:
        """An asyncio client of the same embedded Redis (the calls' waits block on it)."""
        return fakeredis.FakeAsyncRedis(server=self.server)


@contextmanager
def standalone(settings: Settings, registry: Registry, config: EmulatorConfig | None = None) -> Iterator[Standalone]:
    """Start the embedded Redis, the emulator, a worker thread and the janitor; stop them on exit."""
    server = fakeredis.FakeServer()
    conn = fakeredis.FakeRedis(server=server)
    with ExitStack() as stack:
        settings = stack.enter_context(emulated(settings, registry, config))
        jobs.configure(settings)
        logging.getLogger("rq.worker").setLevel(logging.WARNING)
        worker = ThreadWorker(queues_for(conn, settings), connection=conn, serializer=JSONSerializer,
                              worker_ttl=WORKER_TTL)
        thread = threading.Thread(target=worker.work, kwargs={"logging_level": "WARNING"}, name="otb-worker",
                                  daemon=True)
        thread.start()
        stack.callback(worker.stop)
        janitor = Janitor(lambda: conn, settings)  # parked requests resume, lapsed leases and windows end
        janitor.start()
        stack.callback(janitor.stopped.set)
        poller = NativePoller(lambda: conn, settings)  # native batches (a 24 h API batch's Claude lines)
        poller.start()
        stack.callback(poller.stopped.set)
        yield Standalone(settings, conn, server, settings.base_url("anthropic"))
