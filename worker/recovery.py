"""The life of chunk jobs beyond RQ: leases, claims, recovery, parking, closing batches (queues.py enqueues).

Stock RQ notices a dead worker only after its heartbeat TTL (job_monitoring_interval + 60 s) and
the next maintenance pass of some idle worker: minutes (reference/rq.md §1). Here the process
running a chunk holds a short lease (`otb:lease:{job}`, lease.py); the chunks it claims from the
queue are recorded under that lease and its owner's token (`otb:claimed`). A janitor thread in every
`otb worker` re-enqueues started or claimed chunks whose lease has lapsed (or is another's), at its
first pass after: a holder that comes back finds its lease lost and starts no new call (lease.py). Re-running a chunk
is safe: committed requests are skipped (chunk.py), so only calls in flight at the kill are sent
again. Re-runs count against `max_recoveries`: a chunk that kills every worker it touches (a poison
input) ends its open requests as `worker_crashed` and shows up in RQ's failed registry.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from . import clock, metrics
from .errors import BatchClosed, RequestFailed
from .keys import Keys
from .queues import CHUNK_JOB, CHUNK_RESULT_TTL, enqueue_chunks, interactive_name, queue_for, queues_for
from .results import error_line
from .scripts import Scripts
from .settings import Settings
from .store import Store

if TYPE_CHECKING:
    from .lease import Lease

log = logging.getLogger("otb.recovery")


def park(conn: redis.Redis, settings: Settings, bid: str, parked: list[tuple[str, float, str]]) -> None:
    """Set requests aside until the provider will take them (a daily quota, a long cool-down)."""
    store = Store.of(conn, settings)
    resume_at = clock.now() + max(wait for _, wait, _ in parked)
    reason = parked[0][2]
    member = json.dumps({"batch": bid, "ids": [cid for cid, _, _ in parked]})
    if store.count_parked(bid, len(parked), resume_at, reason) < 0:
        return  # the batch is gone: nothing to come back for
    conn.zadd(store.keys.parked, {member: resume_at})
    log.warning("%d requests of %s parked until %s: %s", len(parked), bid,
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(resume_at)), reason)


def resume_parked(conn: redis.Redis, settings: Settings, *, now: float | None = None) -> int:
    """Enqueue parked requests whose time has come; returns how many."""
    store = Store.of(conn, settings)
    key = store.keys.parked
    resumed = 0
    for member in conn.zrangebyscore(key, 0, clock.now() if now is None else now):
        if not conn.zrem(key, _text(member)):
            continue  # another janitor took it
        entry = json.loads(_text(member))
        bid, ids = entry["batch"], entry["ids"]
        enqueue_chunks(conn, settings, bid, ids, f"resume{int(clock.now() * 1000)}")
        store.count_parked(bid, -len(ids))
        resumed += len(ids)
    return resumed


def recover_abandoned(conn: redis.Redis, settings: Settings, *, now: float | None = None) -> list[str]:
    """Re-enqueue started chunks whose lease lapsed, on either queue; returns their job ids."""
    now = clock.now() if now is None else now
    return [job for queue in queues_for(conn, settings) for job in _recover_started(conn, settings, queue, now)]


def _recover_started(conn: redis.Redis, settings: Settings, queue: Queue, now: float) -> list[str]:
    started = StartedJobRegistry(queue=queue)
    store = Store.of(conn, settings)
    recovered, alive = [], []
    for job_id, execution_id in started.get_job_and_execution_ids(cleanup=False):
        execution = Execution(execution_id, job_id, connection=conn)
        if conn.exists(store.keys.lease(job_id)):
            alive.append(execution.composite_key)
            continue
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            started.remove_execution(execution)
            continue
        began = max(job.started_at.timestamp() if job.started_at else 0.0, _created_at(conn, execution))
        status = job.get_status()
        if status not in (JobStatus.STARTED, JobStatus.QUEUED) or now - began < settings.lease_ttl:
            continue  # finished meanwhile, or too young to hold its lease yet (forked, not yet running)
        if status == JobStatus.QUEUED and conn.lpos(queue.key, job_id) is not None:
            started.remove_execution(execution)  # queued again already: this execution is a dead run's leftover
            continue
        # STARTED, or QUEUED with no run: its worker died between recording the execution and the work
        # horse starting the job (the fork, the horse's start-up), which RQ would notice only a minute on
        count = _take_for_recovery(conn, store.keys, settings, job_id)
        if count is None:
            continue  # another janitor is on it
        recovered.append(job_id)
        if count > settings.max_recoveries:
            _give_up(conn, store, queue, job, count, settings)
            started.remove_execution(execution)
            continue
        log.warning("chunk %s lost its worker (no lease for %.0f s): re-enqueued", job_id, now - began)
        queue_again(queue, job)  # first: a crash between the two leaves it queued, never lost
        started.remove_execution(execution)
        metrics.taken_over("started")
    if alive:  # RQ's own clean-up retries a job whose worker's heartbeats stopped (the parent killed alone,
        # frozen, refused writes), even while its work horse runs it: the lease says it runs, so its entry is
        # kept from expiring for as long as the lease lives
        conn.zadd(started.key, {key: now + max(60.0, settings.lease_ttl * 4) for key in alive}, xx=True, gt=True)
    return recovered


def queue_again(queue: Queue, job: Job) -> None:
    """Put a chunk back at the front of its queue, its record kept for as long as it waits: RQ leaves an
    expiry it had (a run that lost its lease unnoticed had it marked finished, expiring in an hour), and
    a job whose record expires in a backlog is dropped by the dequeue without a word."""
    with queue.connection.pipeline() as pipe:
        queue.enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.persist(job.key)
        pipe.execute()


def _created_at(conn: redis.Redis, execution: Execution) -> float:
    """When RQ started this execution (before the fork; the job's `started_at`, written by the work
    horse, may still be a former run's)."""
    raw = conn.hget(execution.key, "created_at")
    try:
        return float(_text(raw)) if raw is not None else 0.0
    except ValueError:
        return 0.0


def _take_for_recovery(conn: redis.Redis, keys: Keys, settings: Settings, job_id: str) -> int | None:
    """Lock `job_id` for this janitor and count one more recovery of it; None if another janitor has it.

    The count (`otb:recoveries:{job}`) lives `result_ttl` after the chunk's last recovery: every
    recovery happens while its batch lives, so a counter outlives its batch by one lifetime at most.
    """
    if not conn.set(keys.recovering(job_id), "1", nx=True, ex=int(settings.lease_ttl * 2)):
        return None
    with conn.pipeline() as pipe:
        pipe.incr(keys.recoveries(job_id))
        pipe.expire(keys.recoveries(job_id), settings.result_ttl)
        count, _ = pipe.execute()
    return int(count)


def _give_up(conn: redis.Redis, store: Store, queue: Queue, job: Job, count: int, settings: Settings) -> None:
    """A chunk that killed its worker too often: end its open requests as errored, never silently."""
    bid, custom_ids = job.args[0], list(job.args[1])
    log.error("chunk %s died with its worker %d times; ending its open requests as worker_crashed", job.id, count)
    error = RequestFailed(
        f"the worker running this request died {count} times (killed or out of memory); not retried further",
        code="worker_crashed", type="api_error", status_code=500)
    end_requests(store, bid, custom_ids, error, "errored")
    metrics.abandoned("worker_crashed")
    job.set_status(JobStatus.FAILED)
    queue.failed_job_registry.add(job, ttl=settings.result_ttl, exc_string="worker died repeatedly")


def claim_next(conn: redis.Redis, settings: Settings, lease_key: str, owner: str = "") -> tuple[str, str, list[str]] | None:
    """The next queued chunk job, taken by a running chunk whose own requests have all started.

    It leaves the RQ queue and is recorded in `otb:claimed` with the claimer's lease and token,
    atomically, and only while the claimer owns that lease (`owner`; "" claims unchecked); if the
    claimer dies or loses its lease, the janitor puts it back (recover_claimed). Returns (job id,
    batch, custom_ids).
    """
    claims, raw = Keys(settings.key_prefix).claimed, None
    for queue in queues_for(conn, settings):  # a waiting HTTP call before more batch work
        raw = Scripts(conn).claim(queue=queue.key, claims=claims, lease=lease_key, owner=owner,
                                  now=f"{clock.now():.3f}")
        if raw:
            break
    if not raw:
        return None
    job_id = _text(raw)
    try:
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        if job.func_name != CHUNK_JOB:
            raise NoSuchJobError(job_id)
    except NoSuchJobError:
        with conn.pipeline() as pipe:  # not a chunk job of ours: give it back untouched
            queue.push_job_id(job_id, pipeline=pipe, at_front=True)
            pipe.hdel(claims, job_id)
            pipe.execute()
        return None
    job.set_status(JobStatus.STARTED)
    return job_id, job.args[0], list(job.args[1])


def finish_claimed(conn: redis.Redis, settings: Settings, job_ids: list[str], lease: Lease | None = None) -> None:
    """Claimed chunks are done (or handed back): mark their RQ jobs finished and drop the claims.

    With the claimer's `lease`, only the claims still its own, while it still holds that lease: a
    claimer frozen past its lease comes back to find its chunks queued again and claimed by others,
    whose claims it must neither mark finished nor drop (were the new claimer to die then, nothing
    would take the chunk back). Two round trips for all of them (which are ours and still exist, then
    their updates), not four per job: a run that claims one-request calls finishes one job per call.
    """
    if not job_ids:
        return
    claims = Keys(settings.key_prefix).claimed
    with conn.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(Job.key_for(job_id))
        if lease is not None:
            pipe.hmget(claims, job_ids)
            pipe.get(lease.key)
        answers = pipe.execute()
    exists = answers[:len(job_ids)]
    if lease is not None:
        mine, holder = answers[len(job_ids):]
        ours = holder is not None and _text(holder) == lease.owner
        keep = [ours and claim is not None and _claim_of(claim)[2] == lease.owner for claim in mine]
        job_ids, exists = [j for j, k in zip(job_ids, keep) if k], [e for e, k in zip(exists, keep) if k]
        if not job_ids:
            return
    jobs = [Job(job_id, connection=conn, serializer=JSONSerializer) for job_id in job_ids]
    with conn.pipeline(transaction=False) as pipe:
        for job, there in zip(jobs, exists):
            if there:  # a job gone meanwhile is not written again
                job.set_status(JobStatus.FINISHED, pipeline=pipe)
                job.cleanup(ttl=CHUNK_RESULT_TTL, pipeline=pipe)
        pipe.hdel(Keys(settings.key_prefix).claimed, *job_ids)
        pipe.execute()


def recover_claimed(conn: redis.Redis, settings: Settings, *, now: float | None = None) -> list[str]:
    """Claimed chunks whose claimer's lease lapsed (or is another's now) go back to the front of the queue.

    A claim names its claimer's token and was made while the claimer owned the lease, so it is
    abandoned as soon as the lease is not the claimer's. One without a token (an unchecked claim)
    waits until it is 2 x `lease_ttl` old, as before tokens."""
    now = clock.now() if now is None else now
    queue, keys = queue_for(conn, settings), Keys(settings.key_prefix)
    back = []
    for raw_id, raw in conn.hgetall(keys.claimed).items():
        job_id = _text(raw_id)
        lease_key, at, owner = _claim_of(raw)
        if _claimer_holds(conn, lease_key, owner) or (not owner and now - float(at) < settings.lease_ttl * 2):
            continue
        count = _take_for_recovery(conn, keys, settings, job_id)
        if count is None:
            continue
        if count > settings.max_recoveries:
            try:
                _give_up(conn, Store.of(conn, settings), queue,
                         Job.fetch(job_id, connection=conn, serializer=JSONSerializer), count, settings)
            except NoSuchJobError:
                pass
            conn.hdel(keys.claimed, job_id)
            continue
        log.warning("claimed chunk %s lost its worker: re-enqueued", job_id)
        with conn.pipeline() as pipe:
            queue.push_job_id(job_id, pipeline=pipe, at_front=True)
            pipe.persist(Job.key_for(job_id))  # a record given an expiry as a finished job lives while queued
            Job(job_id, connection=conn, serializer=JSONSerializer).set_status(JobStatus.QUEUED, pipeline=pipe)
            pipe.hdel(keys.claimed, job_id)
            pipe.execute()
        back.append(job_id)
        metrics.taken_over("claimed")
    return back


def _claim_of(raw: object) -> tuple[str, str, str]:
    """A claim's value (claim.lua): its claimer's lease key, when (unix s), and token ("" when unchecked)."""
    lease_key, at, owner = (_text(raw).split(" ") + [""])[:3]
    return lease_key, at, owner


def _claimer_holds(conn: redis.Redis, lease_key: str, owner: str) -> bool:
    holder = conn.get(lease_key)
    return holder is not None and (not owner or _text(holder) == owner)


def wait_taken_over(conn: redis.Redis, settings: Settings, job_id: str, owner: str) -> bool:
    """A run that lost its lease waits (up to 2 x `lease_ttl`) until a janitor has taken its chunk: once
    the run ends, RQ marks the job finished, and a chunk not yet re-queued then would strand the
    requests the run left. Taken: queued again, claimed, leased by another, or ended. False on time out."""
    keys, deadline = Keys(settings.key_prefix), time.monotonic() + settings.lease_ttl * 2
    while time.monotonic() < deadline:
        try:
            status = conn.hget(Job.key_for(job_id), "status")
            holder = conn.get(keys.lease(job_id))
            if (status is None or _text(status) != JobStatus.STARTED.value or conn.hexists(keys.claimed, job_id)
                    or (holder is not None and _text(holder) != owner)):
                return True
        except redis.RedisError as exc:
            log.warning("chunk %s: Redis unavailable while waiting for its takeover (%s)", job_id, exc)
        time.sleep(0.2)
    return False


def close_unstarted(conn: redis.Redis, settings: Settings, bid: str, code: str) -> int:
    """Take a batch's not-yet-started chunks off the queue and end their requests with `code`."""
    store = Store.of(conn, settings)
    closed = 0
    for job_id in sorted(_text(j) for j in conn.smembers(store.keys.jobs(bid))):
        if not any(conn.lrem(queue.key, 0, job_id) for queue in queues_for(conn, settings)):
            continue  # running or done: the worker checks the batch before each call
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
            custom_ids = list(job.args[1])
        except NoSuchJobError:
            continue
        closed += end_requests(store, bid, custom_ids, BatchClosed(code), _outcome(code))
        job.set_status(JobStatus.CANCELED)
    return closed


def end_requests(store: Store, bid: str, custom_ids: list[str], error: RequestFailed, outcome: str) -> int:
    """End those of `custom_ids` that have no result yet with `error`, without running them."""
    done = store.done_ids(bid, custom_ids)
    try:
        requests = store.load_requests(bid, [c for c in custom_ids if c not in done])
    except (ValueError, RecursionError):  # a record no one can read: end them without model and tags
        requests = {}
    ended = 0
    for cid in custom_ids:
        if cid not in done:
            meta = _meta_of(store, bid, requests.get(cid))
            ended += store.commit(bid, cid, error_line(bid, cid, error, meta), outcome)
    return ended


def expire_due(conn: redis.Redis, settings: Settings, *, now: float | None = None) -> list[str]:
    """Batches whose completion window has ended, on Redis's clock: close them and what has not started."""
    store = Store.of(conn, settings)
    now = store.redis_now() if now is None else now
    due = [_text(b) for b in conn.zrangebyscore(store.keys.deadlines, 0, now)]
    for bid in due:
        if store.close(bid, "expiring") == "expiring":
            close_unstarted(conn, settings, bid, "batch_expired")
        conn.zrem(store.keys.deadlines, bid)
    return due


LIVE_JOB = {JobStatus.QUEUED.value, JobStatus.STARTED.value, JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value}


def rescue_stranded(conn: redis.Redis, settings: Settings) -> dict[str, int]:
    """Find requests of unfinished batches that have neither a result nor a live job, and finish them.

    Nothing should leave such requests (retry takes results back and queues their job in one
    transaction), but an interrupted retry of an earlier version did, and a job lost with Redis data
    can: without this, the batch would stay `in_progress` or `cancelling` for ever. Requests of a
    running batch are queued again (at most `max_recoveries` times, then they end `worker_crashed`);
    those of a closing batch end cancelled or expired at once. A job whose status says queued but that
    is nowhere (a worker died holding it between queue and start) is queued again (_requeue_unplaced).
    One janitor does a round every 2 x `lease_ttl`. Returns {batch: requests rescued}.
    """
    store = Store.of(conn, settings)
    if not conn.set(store.keys.rescuing, "1", nx=True, px=int(settings.lease_ttl * 2000)):
        return {}
    rescued: dict[str, int] = {}
    queued: list[str] = []  # chunk jobs whose status says queued: are they anywhere?
    for bid in [_text(b) for b in conn.zrange(store.keys.open, 0, -1)]:
        record = store.batch(bid) or {}
        status = record.get("status")
        if status not in ("in_progress", "cancelling", "expiring"):
            conn.zrem(store.keys.open, bid)  # finished, or gone: nothing to watch
            continue
        live = _live_jobs(conn, store, bid)
        queued.extend(job_id for job_id, job_status in live.items() if job_status == JobStatus.QUEUED.value)
        if live or int(record.get("parked") or 0) > 0 or _native(conn, store, bid):
            continue  # queued, running or claimed (or lost on the way); parked; or in a provider's batch
        stranded = store.open_ids(bid)
        if not stranded or _has_live_job(conn, store, bid) or _native(conn, store, bid):  # again: a retry may have
            continue  # queued a job meanwhile
        if not conn.set(store.keys.rescuing_batch(bid), "1", nx=True, px=int(settings.lease_ttl * 2000)):
            continue  # another janitor's round (one that outlasted the round lock) rescues it: not twice
        rescued[bid] = len(stranded)
        _finish_stranded(conn, settings, store, bid, status, stranded)
    _requeue_unplaced(conn, settings, store, queued)
    return rescued


def _native(conn: redis.Redis, store: Store, bid: str) -> bool:
    """Does a native poller still look after lines of `bid` (they are in a provider's batch)?"""
    return conn.zscore(store.keys.native_due, bid) is not None


def _has_live_job(conn: redis.Redis, store: Store, bid: str) -> bool:
    """Does a queued, running or claimed chunk job still carry requests of `bid`?"""
    return bool(_live_jobs(conn, store, bid))


def _live_jobs(conn: redis.Redis, store: Store, bid: str) -> dict[str, str]:
    """The chunk jobs of `bid` whose status says queued, running or claimed: job id -> status."""
    ids = [_text(j) for j in conn.smembers(store.keys.jobs(bid))]
    pipe = conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(Job.key_for(job_id), "status")  # the status alone: a chunk job's data is large
    return {job_id: _text(s) for job_id, s in zip(ids, pipe.execute()) if s is not None and _text(s) in LIVE_JOB}


def _requeue_unplaced(conn: redis.Redis, settings: Settings, store: Store, queued: list[str]) -> list[str]:
    """Queue again the chunks whose status says queued but that are in no queue, no started registry and no
    claim, on two rescue rounds (2 x `lease_ttl` apart, within 6). A worker killed (or cut off from Redis)
    between taking a job off the queue and recording its execution leaves it so: RQ pops with BLPOP when
    it listens on several queues, as ours does, and keeps no intermediate list then. Nothing else would
    ever run such a chunk, and its batch would stay open for good. The second look lets a job pass
    through that window normally; one found there twice is queued again (counted against
    `max_recoveries`)."""
    if not queued:
        return []
    unplaced = set(queued) - _placed(conn, settings, queued)
    requeued = []
    for job_id in sorted(unplaced):
        if conn.set(store.keys.unplaced(job_id), "1", nx=True, px=int(settings.lease_ttl * 6000)):
            continue  # first seen so: look again next round
        count = _take_for_recovery(conn, store.keys, settings, job_id)
        if count is None:
            continue
        conn.delete(store.keys.unplaced(job_id))
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        queue = queue_for(conn, settings, interactive=job.origin == interactive_name(settings))
        if count > settings.max_recoveries:
            _give_up(conn, store, queue, job, count, settings)
            continue
        log.warning("chunk %s was taken off its queue by a worker that never started it: re-enqueued", job_id)
        queue_again(queue, job)
        metrics.taken_over("unplaced")
        requeued.append(job_id)
    found = set(queued) - unplaced
    if found:
        conn.delete(*(store.keys.unplaced(job_id) for job_id in found))
    return requeued


QUEUE_PAGE = 10_000  # job ids read at a time when looking through a queue


def _placed(conn: redis.Redis, settings: Settings, job_ids: list[str]) -> set[str]:
    """Those of `job_ids` that are in a queue, a started registry or a claim: one pass over each queue (a
    page at a time, until all are found), then the registries, then the claims. In that order a job
    on its way (queue -> execution recorded, or queue -> claim, in one step each) is seen in one of
    them; only one in the window between (or passed over as the queue moved under a page) is not."""
    left = set(job_ids)
    for queue in queues_for(conn, settings):
        start = 0
        while left:
            page = conn.lrange(queue.key, start, start + QUEUE_PAGE - 1)
            left -= {_text(j) for j in page}
            if len(page) < QUEUE_PAGE:
                break
            start += QUEUE_PAGE
    for queue in queues_for(conn, settings):
        if left:
            left -= set(StartedJobRegistry(queue=queue).get_job_ids(cleanup=False))
    if left:
        ids = sorted(left)
        claimed = conn.hmget(Keys(settings.key_prefix).claimed, ids)
        left -= {job_id for job_id, claim in zip(ids, claimed) if claim is not None}
    return set(job_ids) - left


def _finish_stranded(conn: redis.Redis, settings: Settings, store: Store, bid: str, status: str,
                     stranded: list[str]) -> None:
    if status != "in_progress":
        code = "batch_cancelled" if status == "cancelling" else "batch_expired"
        end_requests(store, bid, stranded, BatchClosed(code), _outcome(code))
        return
    if conn.hincrby(store.keys.batch(bid), "rescues", 1) > settings.max_recoveries:
        error = RequestFailed(f"no worker ran this request after {settings.max_recoveries} rescues (its job was lost)",
                              code="worker_crashed", type="api_error", status_code=500)
        end_requests(store, bid, stranded, error, "errored")
        return
    jobs = enqueue_chunks(conn, settings, bid, stranded, f"rescue{int(clock.now() * 1000)}")
    log.warning("%d requests of %s had neither a result nor a job: queued again as %s", len(stranded), bid,
                ", ".join(jobs))


def _meta_of(store: Store, bid: str, record: dict[str, Any] | None) -> dict[str, Any]:
    """Model and tags of a request that ends without running, so reports group it with its peers."""
    batch = store.batch(bid) or {}
    tags = {**json.loads(batch.get("metadata") or "{}"), **((record or {}).get("tags") or {})}
    return {"model": (record or {}).get("body", {}).get("model"), "tags": tags, "attempts": 0}


def _outcome(code: str) -> str:
    return "canceled" if code == "batch_cancelled" else "expired"


class Janitor(threading.Thread):
    """Runs in every `otb worker` parent: recovery and expiry every `interval` seconds."""

    def __init__(self, connect: Any, settings: Settings, interval: float | None = None) -> None:
        super().__init__(name="otb-janitor", daemon=True)
        self.connect, self.settings = connect, settings
        self.interval = interval if interval is not None else max(settings.lease_ttl / 3, 1.0)
        self.stopped = threading.Event()

    def run(self) -> None:
        conn = self.connect()
        while not self.stopped.wait(self.interval):
            try:
                recover_abandoned(conn, self.settings)
                recover_claimed(conn, self.settings)
                expire_due(conn, self.settings)
                resume_parked(conn, self.settings)
                rescue_stranded(conn, self.settings)
            except redis.RedisError as exc:
                log.warning("janitor: Redis unavailable (%s); retrying", exc)
            except Exception:  # never let the janitor die silently
                log.exception("janitor pass failed")


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
