"""The worker process around RQ: what it runs, and a Redis that refuses writes pauses it, never kills it."""

from __future__ import annotations

import fakeredis
import pytest
import redis
from rq import Worker
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from worker.queues import CHUNK_JOB
from worker.rqworker import DrainingWorker, refusal_of
from worker.writes import Refusals


@pytest.fixture
def conn() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def chunk_job(conn: fakeredis.FakeRedis, func: str = CHUNK_JOB, args: tuple = ("batch_1", ["a", "b"])) -> Job:
    return Job.create(func, args=args, connection=conn, serializer=JSONSerializer)


def test_only_this_projects_chunk_jobs_are_run(conn: fakeredis.FakeRedis) -> None:
    assert refusal_of(chunk_job(conn)) is None
    assert "os.system" in (refusal_of(chunk_job(conn, "os.system", ("touch /tmp/x",))) or "")
    assert "arguments" in (refusal_of(chunk_job(conn, args=("batch_1",))) or "")


def test_a_full_redis_during_rqs_own_bookkeeping_does_not_kill_the_worker(
        conn: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen under load: the chunk's results were stored, then RQ's own write of the worker's state
    after the job met a full Redis, and the OutOfMemoryError ended the whole worker."""
    def full(self: Worker, job: Job, queue: Queue) -> None:
        raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    monkeypatch.setattr(Worker, "execute_job", full)
    monkeypatch.setattr("worker.rqworker.current_registry", lambda path: None)
    monkeypatch.setattr(DrainingWorker, "refusals", Refusals("waiting"))
    queue = Queue("otb", connection=conn, serializer=JSONSerializer)
    worker = DrainingWorker([queue], connection=conn, serializer=JSONSerializer)
    assert worker.refusals.since is None
    worker.execute_job(chunk_job(conn), queue)  # before: the error escaped and RQ's loop quit
    assert worker.refusals.since is not None  # ... and the worker now knows Redis refuses writes


def test_other_redis_errors_still_surface(conn: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Worker, job: Job, queue: Queue) -> None:
        raise redis.exceptions.ResponseError("ERR unknown command")

    monkeypatch.setattr(Worker, "execute_job", broken)
    monkeypatch.setattr("worker.rqworker.current_registry", lambda path: None)
    queue = Queue("otb", connection=conn, serializer=JSONSerializer)
    with pytest.raises(redis.exceptions.ResponseError):
        DrainingWorker([queue], connection=conn, serializer=JSONSerializer).execute_job(chunk_job(conn), queue)
