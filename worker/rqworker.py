"""`otb worker`: a stock RQ forking Worker (JSON serializer) plus graceful draining and a janitor.

- SIGTERM (warm shutdown) is forwarded to the work horse, which stops starting requests, gives the
  calls in flight `stop_grace` seconds, and hands the rest back to the queue (jobs.run_chunk).
  A second SIGTERM is RQ's cold shutdown.
- A janitor thread re-enqueues chunks whose worker died (lease lapsed) and expires batches past
  their completion window (recovery.py), so recovery needs no one to act.
"""

from __future__ import annotations

import logging
import os
import signal

from rq import Worker
from rq.serializers import JSONSerializer

from . import jobs
from .connection import connect, durability_warnings
from .recovery import Janitor, queue_for
from .settings import Settings

log = logging.getLogger("otb.worker")


class DrainingWorker(Worker):
    def setup_work_horse_signals(self) -> None:
        """In the horse: SIGTERM means "drain", never "die mid-request"."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: jobs.DRAIN.set())

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()
        if self.horse_pid:
            log.warning("stop requested: asking the running chunk to drain")
            try:
                os.kill(self.horse_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None,
               logging_level: str = "WARNING") -> None:
    assert settings.redis_url
    conn = connect(settings.redis_url)
    for warning in durability_warnings(conn):
        log.warning(warning)
    jobs.configure(settings)
    janitor = Janitor(lambda: connect(settings.redis_url or ""), settings)
    janitor.start()
    worker = DrainingWorker([queue_for(conn, settings)], connection=conn, serializer=JSONSerializer, name=name,
                            job_monitoring_interval=10, worker_ttl=60, maintenance_interval=30)
    try:
        worker.work(burst=burst, logging_level=logging_level)
    finally:
        janitor.stopped.set()
