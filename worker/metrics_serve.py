"""Serving the metrics: `/metrics` over HTTP for `otb worker --metrics-port`, an ASGI app for `otb serve`,
and the queue's depth and oldest chunk's age, read from Redis at scrape time.

Apart from worker/metrics.py (what is counted) so that only a process that serves pays for importing
the HTTP side of prometheus-client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, make_asgi_app, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rq.job import Job
from rq.queue import Queue
from rq.utils import utcparse

from . import clock, metrics
from .errors import ConfigError
from .queues import queues_for
from .settings import Settings

log = logging.getLogger("otb.metrics")


class QueueCollector(Collector):
    """Per queue (the batch queue and its interactive twin): queued jobs and the age of the oldest, read
    from Redis when scraped (nothing kept in between)."""

    HEAD = 10  # queued chunks looked at for the oldest: RQ pops from the head, so the oldest are there

    def __init__(self, conn: redis.Redis, settings: Settings, now: Callable[[], float] | None = None) -> None:
        self.conn, self.queues = conn, queues_for(conn, settings)
        self.now = now or clock.now

    def collect(self) -> Iterator[Metric]:
        try:
            read = {queue.name: self.read(queue) for queue in self.queues}
        except (redis.RedisError, ValueError) as exc:  # Redis down: these gauges are left out of this scrape, the rest still served
            log.warning("queue metrics not read: %s", exc)
            return
        yield _gauge("otb_queue_chunks", "Chunk jobs waiting in the queue.", {n: d for n, (d, _) in read.items()})
        yield _gauge("otb_queue_oldest_chunk_age_seconds",
                     "Seconds the oldest queued chunk has waited (0 when the queue is empty).",
                     {n: a for n, (_, a) in read.items()})

    def read(self, queue: Queue) -> tuple[int, float]:
        """Jobs in `queue` and the seconds the oldest of those at its head has waited."""
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.llen(queue.key)
            pipe.lrange(queue.key, 0, self.HEAD - 1)
            depth, head = pipe.execute()
        if not head:
            return int(depth), 0.0
        with self.conn.pipeline(transaction=False) as pipe:
            for job_id in head:
                pipe.hget(Job.key_for(_text(job_id)), "enqueued_at")
            stamps = [utcparse(_text(s)).timestamp() for s in pipe.execute() if s]
        return int(depth), max(self.now() - min(stamps), 0.0) if stamps else 0.0


class _Own(Collector):
    """This process's metrics (metrics.registry()), for a registry that serves them beside the queue's."""

    def collect(self) -> Iterator[Metric]:
        yield from metrics.registry().collect()


def registry_for(conn: redis.Redis, settings: Settings) -> CollectorRegistry:
    """What a scrape of this process returns: its own counters and the queue, read from Redis then.
    From now on this process counts (until then its counts went nowhere)."""
    metrics.count_here()
    registry = CollectorRegistry(auto_describe=False)  # no describe: registering reads nothing from Redis
    registry.register(_Own())
    registry.register(QueueCollector(conn, settings))
    return registry


def serve(port: int, host: str, conn: redis.Redis, settings: Settings) -> Callable[[], None]:
    """Serve /metrics on host:port from a thread (`otb worker --metrics-port`); returns its stop."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry_for(conn, settings))
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def asgi_app(conn: redis.Redis, settings: Settings) -> Any:
    """/metrics for `otb serve`: `app.mount("/metrics", asgi_app(conn, settings))`."""
    return make_asgi_app(registry_for(conn, settings))


def _gauge(name: str, doc: str, by_queue: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["queue"])
    for queue, value in by_queue.items():
        family.add_metric([queue], value)
    return family


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
