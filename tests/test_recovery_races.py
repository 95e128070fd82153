"""Crash-recovery races an outside review of the recovery paths found (each failed before its fix): a chunk
queued twice and run twice at once, a stale claimer finishing another's claim, RQ's own clean-up retrying a
chunk a live work horse runs, a chunk whose worker died before its horse started it."""

from __future__ import annotations

import time

import pytest
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import clean_registries
from rq.serializers import JSONSerializer

from worker.keys import Keys
from worker.lease import HeldElsewhere, Lease
from worker.queues import queue_for, queues_for
from worker.recovery import claim_next, finish_claimed, recover_abandoned, recover_claimed
from worker.rqworker import DrainingWorker

from .test_recovery import rescue_round, setup  # noqa: F401  (setup: the fixture)


def lease_of(conn, key: str, owner: str) -> Lease:
    """A claimer's lease as finish_claimed reads it: its key and its owner's token (not taken here)."""
    lease = Lease(conn, key, 15)
    lease.owner = owner
    return lease


def start_in_worker(conn, settings, worker: DrainingWorker) -> tuple[Job, Execution]:
    """What an RQ worker does with the first queued chunk: pop it, record the execution (parent), mark it
    started (horse)."""
    queue = queue_for(conn, settings)
    job_id = queue.get_job_ids()[0]
    conn.lrem(queue.key, 1, job_id)
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    execution = worker.prepare_execution(job)
    with conn.pipeline() as pipe:
        job.prepare_for_execution(worker.name, pipe)
        pipe.persist(job.key)
        pipe.execute()
    return job, execution


def test_a_horse_killed_after_its_chunk_was_taken_over_does_not_queue_it_a_second_time(setup):
    """The horse's lease lapsed (frozen, or cut off from Redis) and the janitor queued the chunk again;
    then the horse dies (OOM, kill -9 of the horse alone). Its parent's monitor_work_horse sees a status
    that is not finished/failed and calls handle_job_failure, whose RQ retry pushes the job id again
    (and job.save() writes the parent's stale copy of the job over the record). Two copies in the queue:
    two runs at once (a Lease steals the other's; a claimed copy is not fenced at all)."""
    conn, settings, _ = setup
    worker = DrainingWorker(queues_for(conn, settings), connection=conn, serializer=JSONSerializer)
    job, execution = start_in_worker(conn, settings, worker)
    queue = queue_for(conn, settings)
    assert recover_abandoned(conn, settings, now=time.time() + settings.lease_ttl * 3) == [job.id]
    assert queue.get_job_ids().count(job.id) == 1
    job.get_status()  # monitor_work_horse: 'queued', not finished/failed -> handle_job_failure
    worker.handle_job_failure(job, queue=queue, exc_string="Work-horse terminated unexpectedly", execution=execution)
    assert queue.get_job_ids().count(job.id) == 1, queue.get_job_ids()


def test_rqs_started_registry_cleanup_leaves_a_chunk_whose_lease_is_held_alone(setup):
    """The horse runs and refreshes its lease; its parent is gone (SIGKILL of the parent alone: the horse
    has its own process group), frozen, or its heartbeats were refused (maxmemory). 70 s later RQ's
    maintenance (clean_registries in any idle worker) finds the execution expired and the job 'started',
    and retries it: a second run of a live chunk."""
    conn, settings, _ = setup
    worker = DrainingWorker(queues_for(conn, settings), connection=conn, serializer=JSONSerializer)
    job, execution = start_in_worker(conn, settings, worker)
    conn.set(Keys().lease(job.id), "the-live-horse", px=int(settings.lease_ttl * 1000))
    conn.zadd(job.started_job_registry.key, {execution.composite_key: time.time() - 1})  # heartbeats overdue
    recover_abandoned(conn, settings, now=time.time())  # a janitor pass (every ttl/3) sees the lease held
    queue = queue_for(conn, settings)
    clean_registries(queue)
    assert job.id not in queue.get_job_ids(), "RQ queued a chunk that a live horse still holds"


def test_a_second_run_of_a_chunk_does_not_take_a_lease_its_live_holder_keeps(setup):
    """Lease.__enter__ is a plain SET: any duplicate execution of a job id (a double push) takes the live
    run's lease; both runs call until the first one's next refresh (ttl/3), the in-flight calls of the
    first are sent again by the second."""
    conn, settings, _ = setup
    key = Keys().lease("some-chunk")
    first = Lease(conn, key, 0.6)
    with first:
        with pytest.raises(HeldElsewhere):
            Lease(conn, key, 0.6).take()  # waits a ttl and a second: the first keeps it fresh meanwhile
        assert conn.get(key) == first.owner.encode() and first.holds()
    conn.set(key, "a-dead-run", px=500)  # a dead run's: waited for, then taken
    late = Lease(conn, key, 0.6)
    late.take()
    assert conn.get(key) == late.owner.encode()


def test_a_stale_claimer_does_not_finish_a_chunk_another_run_has_claimed_since(setup):
    """R1 claimed J, froze past its lease; the janitor put J back and R3 claimed it. R1 resumes, its last
    requests land before its lease thread has noticed the loss (mark_finished checks only `lost`), and
    finish_claimed marks J finished and deletes R3's claim unconditionally. If R3 then dies, nothing
    takes J back (recover_claimed sees no claim, recover_abandoned no execution)."""
    conn, settings, _ = setup
    keys = Keys()
    conn.set(keys.lease("r1"), "t1")
    got = claim_next(conn, settings, keys.lease("r1"), "t1")
    assert got is not None
    job_id = got[0]
    conn.delete(keys.lease("r1"))  # lapsed while R1 was frozen
    assert recover_claimed(conn, settings) == [job_id]
    conn.delete(keys.recovering(job_id))
    conn.set(keys.lease("r3"), "t3")
    assert claim_next(conn, settings, keys.lease("r3"), "t3")[0] == job_id
    finish_claimed(conn, settings, [job_id], lease_of(conn, keys.lease("r1"), "t1"))  # R1, resumed
    assert conn.hexists(keys.claimed, job_id), "R1 deleted R3's claim"
    assert Job.fetch(job_id, connection=conn, serializer=JSONSerializer).get_status() == JobStatus.STARTED
    finish_claimed(conn, settings, [job_id], lease_of(conn, keys.lease("r3"), "t3"))  # R3's own finish goes through
    assert not conn.hexists(keys.claimed, job_id)
    assert Job.fetch(job_id, connection=conn, serializer=JSONSerializer).get_status() == JobStatus.FINISHED


def test_a_worker_killed_between_prepare_execution_and_its_horse_leaves_a_chunk_the_janitor_queues(setup):
    """prepare_execution (parent) puts the execution in the started registry; the status becomes 'started'
    only in the horse (prepare_job_execution). Killed in between (parent and horse: bench.chaos's
    kill_all), the job is 'queued' with a dead execution. recover_abandoned skipped it (not STARTED) and
    _placed counted it as placed: only RQ's own maintenance, run by an idle worker 70 s on, dropped the
    entry. Now the janitor takes it back once it is a lease ttl old."""
    conn, settings, _ = setup
    worker = DrainingWorker(queues_for(conn, settings), connection=conn, serializer=JSONSerializer)
    queue = queue_for(conn, settings)
    job_id = queue.get_job_ids()[0]
    conn.lrem(queue.key, 1, job_id)
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    execution = worker.prepare_execution(job)  # ... and the worker is killed before the horse starts it
    conn.zadd(job.started_job_registry.key, {execution.composite_key: time.time() - 1})  # long dead
    later = time.time() + settings.lease_ttl * 10
    for _ in range(3):
        recover_abandoned(conn, settings, now=later)
        rescue_round(conn, settings)
    assert job_id in queue.get_job_ids(), "the chunk is in no queue and nothing of ours will queue it"
