"""The worker process around RQ: what it runs, and a Redis that refuses writes pauses it, never kills it."""

from __future__ import annotations

from datetime import datetime, timezone

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


def test_an_in_process_worker_ends_a_chunk_that_fails_for_good(registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """`otb run`, `otb demo` and `otb serve --emulator` run chunks in-process: a chunk RQ gives up on
    must end its requests as chunk_failed there too, not leave the batch open forever."""
    import json

    from producer.submit import submit
    from worker import jobs
    from worker.queues import queues_for
    from worker.rqworker import InProcessWorker
    from worker.settings import Settings
    from worker.store import Store

    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    settings = Settings(chunk_size=2)
    lines = [json.dumps({"custom_id": f"r{i}", "model": "google/gemini-3-flash",
                         "messages": [{"role": "user", "content": "hi"}]}).encode() for i in range(3)]
    bid = submit(conn, settings, registry, lines).batch_id

    def broken(batch_id: str, custom_ids: list[str]) -> dict[str, int]:
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "run_chunk", broken)
    jobs.configure(settings)
    InProcessWorker(queues_for(conn, settings), connection=conn, serializer=JSONSerializer).work(burst=True)
    status = Store.of(conn, settings).status(bid)
    assert status is not None and status["status"] == "completed"
    assert status["request_counts"]["errored"] == 3
    codes = {json.loads(raw)["error"]["code"] for raw in Store.of(conn, settings).raw_results(bid).values()}
    assert codes == {"chunk_failed"}


@pytest.mark.parametrize("taken", [True, False])
def test_a_run_that_lost_its_lease_leaves_the_jobs_record_to_its_next_run(conn: fakeredis.FakeRedis,
                                                                          taken: bool) -> None:
    """The janitor queued the chunk again when its lease lapsed; when the old run ends, RQ used to mark the
    job finished and let it expire in CHUNK_RESULT_TTL: a chunk still queued then was dropped by RQ,
    and its requests waited for the janitor's rescue. Now the job stays queued, with no expiry; the old
    run's own execution goes once the chunk was taken over (else the janitor finds it there)."""
    from rq.executions import Execution
    from rq.job import JobStatus

    from worker import jobs

    queue = Queue("otb", connection=conn, serializer=JSONSerializer)
    job = chunk_job(conn)
    job.origin = queue.name
    with conn.pipeline() as pipe:
        execution = Execution.create(job, 60, pipeline=pipe)
        job.started_job_registry.add_execution(execution, pipeline=pipe, ttl=60)  # the old run's
        pipe.execute()
    queue.enqueue_job(job)  # ... and the janitor's re-enqueue
    worker = DrainingWorker([queue], connection=conn, serializer=JSONSerializer)
    jobs.GIVEN_UP[job.id] = taken
    worker.handle_job_success(job, queue, queue.started_job_registry, execution)
    assert Job.fetch(job.id, connection=conn, serializer=JSONSerializer).get_status() == JobStatus.QUEUED
    assert conn.ttl(job.key) == -1 and queue.job_ids == [job.id]
    assert (job.id in job.started_job_registry.get_job_ids(cleanup=False)) is not taken
    assert job.id not in jobs.GIVEN_UP

    # a run that kept its lease: RQ's own success writes, as before
    job.set_status(JobStatus.STARTED)
    job.started_at = job.ended_at = datetime.now(timezone.utc)
    worker.handle_job_success(job, queue, queue.started_job_registry, execution)
    assert Job.fetch(job.id, connection=conn, serializer=JSONSerializer).get_status() == JobStatus.FINISHED
    assert conn.ttl(job.key) > 0
