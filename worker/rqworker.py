"""`otb worker`: a stock RQ forking Worker (JSON serializer) plus graceful draining and a janitor.

- SIGTERM (warm shutdown) is forwarded to the work horse, which stops starting requests, gives the
  calls in flight `stop_grace` seconds, and hands the rest back to the queue (jobs.run_chunk).
  A second SIGTERM is RQ's cold shutdown.
- A janitor thread re-enqueues chunks whose worker died (lease lapsed) and expires batches past
  their completion window (recovery.py), so recovery needs no one to act.
- Only this project's job functions run: RQ would import and call whatever a job names (a JSON job
  naming `os.system` ran), so anyone with write access to Redis could run code here.
- A chunk that fails for good (RQ's retries spent on an exception or on a work horse that keeps
  dying) ends its open requests as `chunk_failed`, so its batch finishes instead of waiting forever.
- A Redis that refuses writes (maxmemory reached, read-only, MISCONF) pauses the worker; it used to
  kill it. The registry file is read again before each chunk; a broken file keeps the last good one.
- With `--burst`, the worker ends when the queue is empty and no native provider batch is open: it
  polls those (its poller thread) until they end, since what they hand back comes to the queue.
- With `--metrics-port`, each work horse hands its metrics to this process over a pipe, which serves
  them with the queue's gauges (metrics.py, metrics_serve.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import redis
from rq import SimpleWorker, Worker
from rq.worker.base import BaseWorker
from rq.exceptions import DeserializationError, StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from . import http, jobs, metrics
from .connection import connect, durability_warnings
from .errors import ConfigError, OTBError, RequestFailed
from .native import NativePoller, native_open
from .queues import CHUNK_JOB, queues_for
from .recovery import Janitor, end_requests
from .ratelimit import load_limits
from .registry import current_registry
from .settings import Settings
from .store import Store
from .writes import Refusals, refused_write

log = logging.getLogger("otb.worker")

JOB_FUNCTIONS = frozenset({CHUNK_JOB})  # everything a worker of this project will run


class NameTaken(OTBError):
    """Another live worker has the name asked for."""


class ChunkJobs(BaseWorker):
    """What every worker of this project does around a job, forking or in-process: run only this
    project's chunk jobs (anything else is failed unrun), and when RQ gives up on a chunk, end its
    open requests as `chunk_failed` instead of leaving them open forever."""

    refusals = Refusals("the worker waits for it (nothing is lost; free memory or raise maxmemory)")

    # -- what runs ------------------------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        refusal = refusal_of(job)
        if refusal is not None:
            log.error("job %s refused, not run: %s", job.id, refusal)
            job.retries_left = 0
            self.handle_job_failure(job, queue, exc_string=f"refused by otb worker: {refusal}",
                                    execution=self.prepare_execution(job))
            return
        current_registry(jobs.current_settings().registry_path)  # the horse inherits it: read here, once
        try:
            super().execute_job(job, queue)
        except redis.ResponseError as exc:  # RQ's own bookkeeping after the job (state, failure) was refused
            if not refused_write(exc):
                raise
            self.refusals.refused(exc)  # the chunk's lease and the janitor keep its requests safe meanwhile

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        """RQ's success writes (status finished, the job's expiry in CHUNK_RESULT_TTL), unless the run lost its
        lease: then a janitor has queued the job again, or another worker runs it, and those writes would
        land on that run's record (a job still queued an hour later expired, and its requests waited for the
        janitor's rescue). This run only removes its own execution once the chunk was taken over; if it
        was not yet, the execution stays in the started registry, where the janitor finds it."""
        taken = jobs.GIVEN_UP.pop(job.id, None)
        if taken is None:
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        if taken:
            with self.connection.pipeline() as pipe:
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()
        log.info("chunk %s: its lease was lost, so its RQ record is left to its next run", job.id)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
                           execution: Any = None) -> None:
        if execution is not None and not self._still_running_here(job, execution):
            log.warning("chunk %s: its work horse ended after the chunk was given to another run (its lease had "
                        "lapsed); that run has it, so RQ neither retries nor fails it here", job.id)
            return  # RQ's retry would queue it a second time, and its save() would write this stale copy back
        final = not job.should_retry and self._stopped_job_id != job.id and refusal_of(job) is None
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        if final:
            self._end_failed_chunk(job, exc_string)

    def _still_running_here(self, job: Job, execution: Any) -> bool:
        """Is this execution still in the started registry? A janitor that takes a chunk over removes it
        (recovery._recover_started), as does RQ's own clean-up when it has failed or retried the job."""
        try:
            return self.connection.zscore(job.started_job_registry.key, execution.composite_key) is not None
        except redis.RedisError:
            return True  # unknown: RQ's usual handling, as before

    def _end_failed_chunk(self, job: Job, exc_string: str) -> None:
        """RQ gave up on the chunk: its requests without a result end with the reason, not silence."""
        bid, custom_ids = job.args[0], list(job.args[1])
        reason = _last_line(exc_string) or "unknown error"
        error = RequestFailed(f"the worker could not run this request's chunk ({reason}), after RQ's retries; "
                              f"`otb retry {bid}` runs it again", code="chunk_failed", type="api_error", status_code=500)
        try:
            ended = end_requests(Store.of(self.connection, jobs.current_settings()), bid, custom_ids, error, "errored")
        except redis.RedisError as exc:  # left as they are: the janitor re-runs the chunk once its lease lapses
            log.error("chunk %s failed for good and its requests could not be ended: %s", job.id, exc)
            return
        metrics.abandoned("chunk_failed")
        log.error("chunk %s failed for good (%s): %d open requests of %s ended as chunk_failed", job.id, reason, ended, bid)


class InProcessWorker(ChunkJobs, SimpleWorker):
    """Runs chunk jobs in this process (`otb run`, `otb demo`, `Client.embedded`, `otb serve --emulator`)."""


class DrainingWorker(ChunkJobs, Worker):
    metrics_served = False  # set by run_worker with --metrics-port: horses hand their counts to this process
    burst_settings: Settings | None = None  # set by run_worker with --burst: it waits for open native batches
    _feed: metrics.HorseFeed | None = None

    # -- a work horse's metrics reach the parent, which serves them (worker/metrics.py) -------------
    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        self._feed = metrics.HorseFeed() if self.metrics_served else None
        super().fork_work_horse(job, queue)  # the horse never returns from it
        if self._feed is not None:
            self._feed.in_parent()

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        """In the horse, first: its counts go down the pipe, or nowhere when nothing serves them; and
        the garbage collector leaves alone what the horse inherited (jobs.horse_gc)."""
        jobs.horse_gc()
        if self._feed is not None:
            self._feed.in_horse()
        else:
            metrics.discard()
        super().main_work_horse(job, queue)

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        try:
            return super().perform_job(job, queue, execution)
        finally:
            if self._feed is not None:
                self._feed.close()  # the last counts, before RQ's os._exit

    def setup_work_horse_signals(self) -> None:
        """In the horse: SIGTERM means "drain", never "die mid-request"."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: jobs.DRAIN.set())

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]  # RQ leaves it untyped
        if self.horse_pid:
            log.warning("stop requested: asking the running chunk to drain")
            try:
                os.kill(self.horse_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        """Say which chunk lost its work horse, how, and what happens next (RQ says only "terminated")."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]
        peak = f"; it peaked at {rusage.ru_maxrss // 1024} MB" if rusage is not None else ""
        nxt = (f"RQ runs the chunk again ({job.retries_left} retries left)" if job.should_retry
               else "its open requests end as chunk_failed")
        log.error("chunk %s (%s): its work horse (pid %s) %s%s; %s", job.id, job.description, retpid,
                  _death(ret_val), peak, nxt)

    # -- a Redis that refuses writes pauses the worker, never kills it ----------------------------
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        self._tolerating(super().heartbeat, timeout)

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        self._tolerating(super().maintain_heartbeats, job, execution)

    def register_death(self) -> None:
        self._tolerating(super().register_death)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """The next job; in burst mode, an empty queue ends the worker only once no native provider batch
        is open either: burst means "until nothing is left", and an open provider batch's lines may still
        come back to the queue (the window's margin, a failed job). Its poller thread polls it meanwhile."""
        announced = False
        while True:
            # the native set before the queue: a line handed back is queued before its batch leaves the set
            open_native = self._native_open()
            result = self._dequeue(timeout, max_idle_time)
            if result is not None or not open_native or self._stop_requested:
                return result
            if not announced:
                log.warning("burst: the queue is empty, but %d batch(es) have native provider batches open; polling "
                            "them until they end (stop with Ctrl-C: another worker takes them over)", open_native)
                announced = True
            time.sleep(1.0)

    def _native_open(self) -> int:
        """Batches with open native provider batches (0 outside burst mode, where the worker never ends)."""
        if self.burst_settings is None:
            return 0
        try:
            return native_open(self.connection, self.burst_settings)
        except redis.RedisError:
            return 1  # unknown for now: keep waiting (the dequeue rides out the outage too)

    def _dequeue(self, timeout: int | None, max_idle_time: int | None) -> Any:
        while True:
            try:
                result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except redis.ResponseError as exc:  # taking a job off the queue is a write
                if not refused_write(exc):
                    raise
                self.refusals.refused(exc)
                if self._stop_requested:
                    raise StopRequested() from exc
                time.sleep(2)
                continue
            self.refusals.taken()
            return result

    def _tolerating(self, write: Any, *args: Any) -> None:
        try:
            write(*args)
        except redis.ResponseError as exc:
            if not refused_write(exc):
                raise
            self.refusals.refused(exc)
            return
        self.refusals.taken()


def refusal_of(job: Job) -> str | None:
    """Why this worker will not run `job`, or None for one of this project's chunk jobs."""
    try:
        name = job.func_name
    except DeserializationError:
        return "its data is not JSON (this worker reads JSON jobs only)"
    if name not in JOB_FUNCTIONS:
        return f"it names {name!r}, which is not a job of this project (allowed: {', '.join(sorted(JOB_FUNCTIONS))})"
    callbacks = [n for n in (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name) if n]
    if callbacks:
        return f"it names callbacks ({', '.join(callbacks)}); this project's jobs have none"
    args = job.args
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], list) or job.kwargs:
        return "its arguments are not (batch id, [custom ids])"
    return None


def _death(status: int | None) -> str:
    if status is not None and os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.valid_signals() else "?"
        why = ", as the kernel's out-of-memory killer or `kill -9` does" if number == signal.SIGKILL else ""
        return f"was killed by {name} (signal {number}){why}"
    if status is not None and os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)} before the chunk finished (see the lines above)"
    return f"ended unexpectedly (wait status {status})"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].rstrip(";").strip() if lines else ""


def claim_name(conn: redis.Redis, name: str) -> None:
    """Free `--name` if the worker that had it died on this machine (RQ refuses it for up to 2 minutes
    after a crash); refuse it in one line if a live worker has it."""
    key = Worker.redis_worker_namespace_prefix + name
    info = {_str(k): _str(v) for k, v in conn.hgetall(key).items()}
    if not info or "death" in info:
        return
    host, pid = info.get("hostname", "?"), int(info.get("pid") or 0)
    if host == socket.gethostname() and pid and not _alive(pid):
        log.warning("worker name %r was left by a worker that died (pid %d); taking it over", name, pid)
        conn.delete(key)
        for registry in [Worker.redis_workers_keys, *(f"{Worker.redis_workers_keys}:{q}" for q in info.get("queues", "").split(",") if q)]:
            conn.srem(registry, key)
        return
    raise NameTaken(f"a worker named {name!r} is already running (pid {pid} on {host}); choose another --name"
                    + ("" if host == socket.gethostname() else "; if it crashed, the name is free within 2 minutes"))


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None,
               logging_level: str = "WARNING", metrics_port: int | None = None,
               metrics_host: str = "0.0.0.0") -> None:
    """Run `otb worker` until stopped; with `metrics_port`, serve /metrics there (worker/metrics.py)."""
    assert settings.redis_url
    conn = connect(settings.redis_url)
    for warning in durability_warnings(conn):
        log.warning(warning)
    try:
        current_registry(settings.registry_path)
        load_limits(settings.limits_path)  # read again by each chunk run: a bad file would fail every chunk
    except ConfigError as exc:
        raise ConfigError(f"cannot start: {exc}") from exc
    if name:
        claim_name(conn, name)
    jobs.configure(settings)
    settle_openssl()  # before any thread starts, and so before the first fork
    stop_metrics = _serve_metrics(settings, metrics_port, metrics_host) if metrics_port else None
    janitor = Janitor(lambda: connect(settings.redis_url or ""), settings)
    janitor.start()
    poller = NativePoller(lambda: connect(settings.redis_url or ""), settings)
    poller.start()
    worker = DrainingWorker(queues_for(conn, settings), connection=conn, serializer=JSONSerializer, name=name,
                            job_monitoring_interval=10, worker_ttl=60, maintenance_interval=30)
    worker.metrics_served = stop_metrics is not None
    worker.burst_settings = settings if burst else None
    try:
        worker.work(burst=burst, logging_level=logging_level)
    finally:
        janitor.stopped.set()
        poller.stopped.set()
        if stop_metrics is not None:
            stop_metrics()


def settle_openssl() -> None:
    """Fetch, in this thread and before any other starts, what a work horse will ask OpenSSL for.

    RQ forks a work horse while the worker's threads run (the janitor, the native poller). OpenSSL 3
    guards its table of algorithms with one lock and takes it to write whenever a lookup misses its
    cache. A horse forked while a thread of the parent held that lock (the janitor hashing its scripts
    for the first time, the poller loading its CA bundle) inherits it held by a thread that does not
    exist in the horse: its own first miss (hashing a script, sha1) waits forever, with its lease
    lapsing and its chunk run elsewhere (seen in the e2e suite: a worker started with work queued hung
    its first horse). With the hashes and the TLS setup fetched here first, what a horse asks for is
    in the cache it inherits, and lookups that hit take the lock only to read.
    """
    for name in ("sha1", "sha256"):  # scripts' SHAs (redis-py), result ids, key tags, answers' digests
        hashlib.new(name, b"").hexdigest()
    http.tls_context()  # the CA store and the TLS methods a call to a provider uses


def _serve_metrics(settings: Settings, port: int, host: str) -> Callable[[], None]:
    """/metrics on host:port; the queue gauges read Redis through a client that fails at once, so a
    scrape while Redis is down answers without them instead of waiting out the restart retries."""
    from .metrics_serve import serve

    return serve(port, host, connect(settings.redis_url or "", retries=0), settings)
