"""Recovery bookkeeping on fakeredis: what the janitor leaves in Redis when it takes chunks back."""

from __future__ import annotations

import fakeredis
import pytest
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from producer.client import Client
from worker import clock
from worker.keys import Keys
from worker.queues import queue_for
from worker.recovery import claim_next, finish_claimed, recover_abandoned, recover_claimed, rescue_stranded
from worker.settings import Settings

from .conftest import ROOT


def chat(cid: str) -> dict:
    return {"custom_id": cid, "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def setup(registry):  # type: ignore[no-untyped-def]
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    settings = Settings(registry_path=ROOT / "registry.json", chunk_size=3, result_ttl=3 * 24 * 3600)
    client = Client(conn, settings, registry)
    return conn, settings, client.submit([chat(f"r{i}") for i in range(6)])


def recovery_keys(conn: fakeredis.FakeRedis) -> dict[str, int]:
    """Every recovery counter left in Redis, with its TTL (-1: kept for ever)."""
    return {k.decode(): conn.ttl(k) for k in conn.scan_iter("otb:recoveries*")}


def test_a_claimed_chunk_taken_back_leaves_a_counter_that_expires(setup):
    conn, settings, _ = setup
    got = claim_next(conn, settings, Keys().lease("a-runner-that-died"))
    assert got is not None
    assert recover_claimed(conn, settings, now=clock.now() + settings.lease_ttl * 3) == [got[0]]
    counters = recovery_keys(conn)
    assert counters and all(0 < ttl <= settings.result_ttl for ttl in counters.values()), counters


def test_a_started_chunk_whose_worker_died_leaves_a_counter_per_chunk_that_expires(setup):
    conn, settings, _ = setup
    queue = queue_for(conn, settings)
    job = Job.fetch(queue.get_job_ids()[0], connection=conn, serializer=JSONSerializer)
    queue.remove(job)
    with conn.pipeline() as pipe:  # what a worker does when it starts a job; then it dies without a lease
        job.prepare_for_execution("a-worker-that-died", pipe)
        Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()
    began = job.started_at.timestamp()
    assert recover_abandoned(conn, settings, now=began + settings.lease_ttl * 3) == [job.id]
    assert recovery_keys(conn) == {Keys().recoveries(job.id): settings.result_ttl}
    assert queue.get_job_ids()[0] == job.id  # back at the front of the queue


def test_a_chunk_recovered_too_often_ends_its_requests_as_worker_crashed(setup):
    conn, settings, bid = setup
    settings = settings.with_(max_recoveries=2)
    keys = Keys()
    for round_ in range(settings.max_recoveries + 1):
        got = claim_next(conn, settings, keys.lease("a-runner-that-died"))
        assert got is not None
        conn.delete(keys.recovering(got[0]))  # the previous round's lock, lapsed
        assert recover_claimed(conn, settings, now=clock.now() + settings.lease_ttl * 3) == (
            [got[0]] if round_ < settings.max_recoveries else [])
    status = Client(conn, settings).status(bid)
    assert status["request_counts"]["errored"] == 3, status
    assert conn.get(keys.recoveries(got[0])) == b"3" and not conn.hexists(keys.claimed, got[0])


def test_a_started_chunk_without_a_lease_is_taken_back_once_one_ttl_old_not_before(setup):
    conn, settings, _ = setup
    queue = queue_for(conn, settings)
    job = Job.fetch(queue.get_job_ids()[0], connection=conn, serializer=JSONSerializer)
    queue.remove(job)
    with conn.pipeline() as pipe:  # started, then its worker vanished (or is cut off) and its lease lapsed
        job.prepare_for_execution("a-worker-that-died", pipe)
        Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()
    began = job.started_at.timestamp()
    assert recover_abandoned(conn, settings, now=began + settings.lease_ttl * 0.5) == []  # may not hold it yet
    assert recover_abandoned(conn, settings, now=began + settings.lease_ttl * 1.2) == [job.id]  # was 2 x ttl


def rescue_round(conn: fakeredis.FakeRedis, settings: Settings) -> dict[str, int]:
    """One janitor's rescue round; the previous round's lock has lapsed."""
    conn.delete(Keys().rescuing)
    return rescue_stranded(conn, settings)


def test_a_chunk_popped_by_a_worker_that_died_before_starting_it_is_queued_again_on_the_second_round(setup):
    """RQ pops with BLPOP from several queues: a worker killed right after the pop leaves the job
    'queued' but in no queue. Seen so on two rounds, it goes back to the front of its queue."""
    conn, settings, bid = setup
    queue = queue_for(conn, settings)
    job_id, other = queue.get_job_ids()
    conn.lrem(queue.key, 1, job_id)  # the pop; the worker dies before it records the start
    assert Job.fetch(job_id, connection=conn, serializer=JSONSerializer).get_status() == JobStatus.QUEUED
    assert rescue_round(conn, settings) == {}
    assert queue.get_job_ids() == [other]  # once is no proof: it may be on its way to a work horse
    assert rescue_round(conn, settings) == {}
    assert queue.get_job_ids() == [job_id, other]
    assert conn.get(Keys().recoveries(job_id)) == b"1" and not conn.exists(Keys().unplaced(job_id))


def test_a_popped_chunk_that_is_on_its_way_is_never_queued_twice(setup):
    conn, settings, _ = setup
    queue = queue_for(conn, settings)
    job_id, claimed_id = queue.get_job_ids()
    conn.lrem(queue.key, 1, job_id)
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    with conn.pipeline() as pipe:  # the worker's parent records the execution before it forks
        Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()
    assert claim_next(conn, settings, Keys().lease("a-live-runner")) is not None  # the other one: claimed, and
    Job.fetch(claimed_id, connection=conn, serializer=JSONSerializer).set_status(JobStatus.QUEUED)  # not yet started
    for _ in range(3):
        rescue_round(conn, settings)
    assert queue.get_job_ids() == [] and not list(conn.scan_iter("otb:unplaced:*"))
    assert conn.get(Keys().recoveries(job_id)) is None


def test_an_unplaced_chunk_seen_once_then_found_again_starts_its_count_over(setup):
    conn, settings, _ = setup
    queue = queue_for(conn, settings)
    job_id, _other = queue.get_job_ids()
    conn.lrem(queue.key, 1, job_id)
    rescue_round(conn, settings)
    assert conn.exists(Keys().unplaced(job_id))
    conn.rpush(queue.key, job_id)  # it was only slow: it is back where it belongs
    rescue_round(conn, settings)
    assert not conn.exists(Keys().unplaced(job_id)) and queue.get_job_ids().count(job_id) == 1


def test_an_unplaced_chunk_is_found_while_other_chunks_of_its_batch_run(setup):
    """A run claims chunk after chunk for up to half an hour: the lost one is not left waiting for it."""
    conn, settings, _ = setup
    queue = queue_for(conn, settings)
    job_id, running_id = queue.get_job_ids()
    conn.lrem(queue.key, 1, job_id)
    got = claim_next(conn, settings, Keys().lease("a-live-runner"), "")  # the other chunk runs (claimed: started)
    assert got is not None and got[0] == running_id
    conn.set(Keys().lease("a-live-runner"), "x")
    rescue_round(conn, settings)
    assert queue.get_job_ids() == []
    rescue_round(conn, settings)
    assert queue.get_job_ids() == [job_id]
    assert conn.hexists(Keys().claimed, running_id)  # the running one is left alone


def test_a_chunk_whose_worker_died_between_recording_its_execution_and_starting_it_is_taken_back(setup):
    """The parent records the execution, forks, and dies (or the horse dies starting): the job says queued,
    with a dead execution in the started registry. Taken back once it is a lease ttl old, not a minute on."""
    conn, settings, _ = setup
    queue = queue_for(conn, settings)
    job = Job.fetch(queue.get_job_ids()[0], connection=conn, serializer=JSONSerializer)
    conn.lrem(queue.key, 1, job.id)
    with conn.pipeline() as pipe:
        execution = Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()
    began = float(conn.hget(execution.key, "created_at"))  # RQ's clock
    assert recover_abandoned(conn, settings, now=began + 1) == []  # too young: its horse may be starting
    assert recover_abandoned(conn, settings, now=began + settings.lease_ttl * 2) == [job.id]
    assert queue.get_job_ids()[0] == job.id
    assert recover_abandoned(conn, settings, now=began + settings.lease_ttl * 4) == []  # once


def test_a_dead_runs_execution_left_beside_a_queued_chunk_is_dropped_not_queued_twice(setup):
    conn, settings, _ = setup
    queue = queue_for(conn, settings)
    job = Job.fetch(queue.get_job_ids()[0], connection=conn, serializer=JSONSerializer)
    with conn.pipeline() as pipe:  # a janitor queued it again and died before removing the old execution
        execution = Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()
    began = float(conn.hget(execution.key, "created_at"))
    assert recover_abandoned(conn, settings, now=began + settings.lease_ttl * 2) == []
    assert queue.get_job_ids().count(job.id) == 1
    assert StartedJobRegistry(queue=queue).get_job_ids(cleanup=False) == []


def test_a_chunk_queued_again_keeps_its_record_while_it_waits(setup):
    """A run that lost its lease unnoticed had RQ mark the job finished, with an hour's expiry; queued again
    by the janitor, the record must not expire in a backlog (the dequeue drops such a job silently)."""
    conn, settings, _ = setup
    got = claim_next(conn, settings, Keys().lease("a-runner-that-died"))
    assert got is not None
    conn.expire(Job.key_for(got[0]), 3600)
    assert recover_claimed(conn, settings, now=clock.now() + settings.lease_ttl * 3) == [got[0]]
    assert conn.ttl(Job.key_for(got[0])) == -1


def test_two_janitors_that_both_see_a_batch_stranded_rescue_it_once(setup, monkeypatch):
    """A rescue round can outlast the round's lock (a Redis restart mid-round): two janitors then both
    find no live job for the batch before either queues one. Only one queues its requests again."""
    import worker.recovery as recovery

    conn, settings, bid = setup
    queue = queue_for(conn, settings)
    for job_id in queue.get_job_ids():  # the chunks are lost (with Redis data, say)
        conn.lrem(queue.key, 1, job_id)
        conn.delete(Job.key_for(job_id))
    monkeypatch.setattr(recovery, "_live_jobs", lambda *_: {})  # both look before either has queued
    monkeypatch.setattr(recovery, "_has_live_job", lambda *_: False)
    assert rescue_round(conn, settings) == {bid: 6}
    assert rescue_round(conn, settings) == {}
    assert len(queue.get_job_ids()) == 2  # the 6 requests once, in chunks of 3
