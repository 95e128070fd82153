"""HTTP calls go ahead of batch chunks: their own RQ queue, taken first by workers and by running chunks."""

from __future__ import annotations

import fakeredis
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer

from producer.client import Client
from worker.keys import Keys
from worker.recovery import claim_next, close_unstarted, interactive_name, queue_for, queues_for, recover_abandoned
from worker.settings import Settings

from ..conftest import ROOT


def chat(cid: str) -> dict:
    return {"custom_id": cid, "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}


def setup(registry):  # type: ignore[no-untyped-def]
    """A 6-request batch in 2 chunks on the batch queue, then one call on the interactive queue."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    settings = Settings(registry_path=ROOT / "registry.json", chunk_size=3)
    Client(conn, settings, registry).submit([chat(f"r{i}") for i in range(6)])
    call = Client(conn, settings.with_(queue_name=interactive_name(settings)), registry).submit([chat("call")])
    return conn, settings, call


def test_workers_take_the_interactive_queue_first(registry):
    conn, settings, _ = setup(registry)
    assert [q.name for q in queues_for(conn, settings)] == ["otb:interactive", "otb"]


def test_a_running_chunk_claims_a_waiting_call_before_more_batch_work(registry):
    conn, settings, call = setup(registry)
    first = claim_next(conn, settings, Keys().lease("runner"))
    assert first is not None and first[1] == call  # before: the batch's next chunk
    second = claim_next(conn, settings, Keys().lease("runner"))
    assert second is not None and second[1] != call


def test_a_started_call_whose_worker_died_is_recovered(registry):
    conn, settings, call = setup(registry)
    queue = queue_for(conn, settings, interactive=True)
    job = Job.fetch(queue.get_job_ids()[0], connection=conn, serializer=JSONSerializer)
    queue.remove(job)
    with conn.pipeline() as pipe:  # a worker took it, then died without a lease
        job.prepare_for_execution("a-worker-that-died", pipe)
        Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()
    began = job.started_at.timestamp()
    assert recover_abandoned(conn, settings, now=began + settings.lease_ttl * 3) == [job.id]
    assert queue.get_job_ids() == [job.id]


def test_closing_a_call_takes_its_job_off_the_interactive_queue(registry):
    conn, settings, call = setup(registry)
    assert close_unstarted(conn, settings, call, "batch_expired") == 1
    assert queue_for(conn, settings, interactive=True).get_job_ids() == []
