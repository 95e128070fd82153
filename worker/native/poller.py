"""The native route's poller: plans, creates, polls and imports provider batches, in every `otb worker`
parent (a thread, like the janitor), never in an RQ work horse held for hours.

A batch with native lines sits in a due-time sorted set; a poller takes a due batch with a lease (so
exactly one works on it at a time), advances each of its parts one step, and puts it back with the
time it next needs looking at. Every step is written to Redis before the next, so a killed worker or a
restarted Redis loses nothing: another poller picks the batch up where the state says.

Crash safety around the create, which no provider makes idempotent: the intent (a unique marker,
in each Anthropic custom_id and as Gemini's displayName) is recorded before the create, the provider
id right after. A part found `creating` had its create sent, maybe: the provider's batches are listed
and one matching the intent (Gemini: its displayName; Anthropic: made since the intent, with the
part's request count, not recorded by another intent) is taken instead of creating again.

The window: a part not ended by `expires_at - margin` (OTB_NATIVE_MARGIN) is cancelled at the
provider; what it finished is imported and the rest runs in real time (enqueue_chunks) while the
window lasts. A job that ends without results (Gemini FAILED or EXPIRED), or a batch the provider no
longer knows, goes the same way. A cancelled batch cancels its provider batches; what was answered
before the cancel took hold is kept (it is paid), the rest ends batch_cancelled.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import httpx
import redis

from .. import clock
from ..errors import BatchClosed, InvalidRequest, MissingApiKey, RequestFailed
from ..keys import Keys
from ..providers.anthropic.batches import MAX_REQUESTS
from ..queues import enqueue_chunks
from ..lease import HeldElsewhere, Lease
from ..recovery import end_requests
from ..registry import Registry, current_registry
from ..settings import Settings
from ..store import Store
from . import records
from .anthropic import AnthropicBatches
from .api import CANCELED, ERRORED, EXPIRED, SUCCEEDED, Answer, BatchApi, CallFailed, Poll
from .google import GeminiBatches
from .state import CANCELLING, CREATED, CREATING, DONE, PLANNED, NativeState, Part, native_state

log = logging.getLogger("otb.native")

PAGE = 500
MAX_PART_BYTES = 200 * 1024**2  # Anthropic refuses 256 MB; bodies grow a little on the way
NOT_FOUND_GRACE = 120.0  # a batch may answer 404 this long after its create (propagation)
MAX_BACKOFF = 8  # polls back off to this many intervals while nothing moves
EXIT_AFTER_CREATE = "exit-after-create"
CLOSED_CODE = {"cancelling": "batch_cancelled", "cancelled": "batch_cancelled", "expiring": "batch_expired",
               "expired": "batch_expired"}


class Runner:
    """One poller's work on due batches (its own HTTP client; the thread below calls `tick`)."""

    def __init__(self, conn: redis.Redis, settings: Settings, client: httpx.Client) -> None:
        self.conn, self.settings, self.client = conn, settings, client
        self.store = Store.of(conn, settings)
        self.state = native_state(conn, settings)

    def tick(self) -> int:
        """Advance every due batch this poller can claim; how many it advanced."""
        advanced = 0
        for bid in self.state.due(clock.now()):
            lease = Lease(self.conn, self.store.keys.native_lease(bid), self.settings.lease_ttl)
            try:
                lease.take(wait=False)
            except HeldElsewhere:
                continue  # another poller has it
            with lease:
                self.advance(bid, lease.holds)
            advanced += 1
        return advanced

    def advance(self, bid: str, holds: Callable[[], bool] = lambda: True) -> None:
        """One pass over the batch's parts while `holds()`: once this poller's lease on the batch is lost
        (it stalled, or was cut off from Redis, past the lease's TTL), another poller has the batch, and
        this one stops before its next part and before it records a create's intent, so two pollers never
        create the same part's provider batch (each paid)."""
        record = self.store.batch(bid)
        if record is None:  # the batch is gone (expired, deleted): nothing to do for it
            self.state.finish(bid)
            return
        registry = current_registry(self.settings.registry_path)
        batch = records.batch_info(self.store, bid)
        if self.state.waiting(bid):  # lines of a submit, or of a retry, not in a part yet
            self.plan(bid, batch, registry)
        step = Step(self, bid, batch, registry, record, holds)
        pending = [part for part in self.state.parts(bid) if part.state != DONE]
        for part in pending:
            if not holds():
                log.warning("batch %s: this poller's lease on it was lost; its provider batches are left to the "
                            "poller that has it now", bid)
                return
            step.run(part)
        left = [part for part in pending if part.state != DONE]
        if not left:
            self.state.finish(bid)
            return
        wake = min(part.next_poll for part in left)
        if step.deadline is not None and not step.closing:
            wake = min(wake, step.deadline_local + 0.01)
        self.state.schedule(bid, wake)

    def plan(self, bid: str, batch: records.BatchInfo, registry: Registry) -> None:
        """Group the batch's native lines into provider batches: one per provider, model and shared
        headers, within the provider's limits. A line that cannot go ends errored now, with its reason.
        Parts are numbered after those the batch has (a retry's lines make parts of their own)."""
        groups: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
        extras: dict[str, str] = {}
        todo, first = self.state.todo(bid), self.state.count(bid)
        for cid, raw, line in self.read(bid, batch, registry, todo):
            if line is not None:
                added = records.extras_of(line)
                if added:
                    extras[cid] = json.dumps(added)
                group = line.call.path if line.spec.provider == "google" else json.dumps(line.call.headers,
                                                                                         sort_keys=True)
                groups.setdefault((line.spec.provider, line.spec.id, group), []).append((cid, raw))
        parts: list[tuple[Part, list[str]]] = []
        for (provider, model, group), members in groups.items():
            for ids in _split(members):
                parts.append((Part(first + len(parts), provider, model, len(ids), group=group), ids))
        self.state.save_plan(bid, parts, extras, len(todo))
        log.info("batch %s: %d native lines in %d provider batches", bid, sum(p.count for p, _ in parts), len(parts))

    def read(self, bid: str, batch: records.BatchInfo, registry: Registry,
             ids: list[str]) -> Iterator[tuple[str, int, records.Line | None]]:
        """(custom_id, stored size, the line ready to send) in pages; None for a line that is done or
        cannot go (that one is ended errored now, once)."""
        for start in range(0, len(ids), PAGE):
            page = ids[start:start + PAGE]
            pipe = self.conn.pipeline(transaction=False)
            pipe.hmget(self.store.keys.requests(bid), page)
            pipe.hmget(self.store.keys.results(bid), page)  # two commands a page (done_ids sends one per line)
            raws, results = pipe.execute()
            for cid, raw, result in zip(page, raws, results):
                if result is not None:
                    yield cid, 0, None
                    continue
                record: dict[str, Any] | None = None
                try:
                    record = json.loads(raw) if raw is not None else None
                    yield cid, len(raw or b""), records.prepare(registry, batch, cid, record)
                except (RequestFailed, ValueError, RecursionError) as exc:
                    error = exc if isinstance(exc, RequestFailed) else InvalidRequest(
                        "the stored request cannot be read; it was not sent")
                    records.commit_error(self.store, batch, cid, error, records.meta_of(batch, record))
                    yield cid, 0, None

    def lines_of(self, bid: str, batch: records.BatchInfo, registry: Registry,
                 part: Part) -> Iterator[records.Line | None]:
        """The part's lines in position order, ready to send (None: done, or cannot go)."""
        for _, _, line in self.read(bid, batch, registry, self.state.ids(bid, part.n)):
            yield line

    def api(self, provider: str, registry: Registry) -> BatchApi:
        if provider == "anthropic":
            return AnthropicBatches(self.client, self.settings, registry)
        return GeminiBatches(self.client, self.settings, registry)


def _split(members: list[tuple[str, int]]) -> Iterator[list[str]]:
    """Runs of ids within 100,000 requests and MAX_PART_BYTES of stored bodies."""
    ids: list[str] = []
    size = 0
    for cid, raw_size in members:
        if ids and (len(ids) >= MAX_REQUESTS or size + raw_size > MAX_PART_BYTES):
            yield ids
            ids, size = [], 0
        ids.append(cid)
        size += raw_size
    if ids:
        yield ids


class Step:
    """One pass over a batch's parts: what the batch's status and window say each part must do now."""

    def __init__(self, runner: Runner, bid: str, batch: records.BatchInfo, registry: Registry,
                 record: dict[str, str], holds: Callable[[], bool] = lambda: True) -> None:
        self.runner, self.bid, self.batch, self.registry, self.holds = runner, bid, batch, registry, holds
        self.state, self.store, self.settings = runner.state, runner.store, runner.settings
        self.status = record.get("status", "")
        self.closing = self.status in CLOSED_CODE
        redis_now = self.store.redis_now()
        self.now = clock.now()
        expires = float(record["expires_at"]) if record.get("expires_at") else None
        window = json.loads(record.get("options") or "{}").get("completion_window")
        self.expires_local = None if expires is None else self.now + (expires - redis_now)
        self.deadline: float | None = None  # when a native part must give way to real time (Redis clock)
        self.deadline_local = float("inf")
        if expires is not None:
            margin = self.settings.window_margin(float(window)) if window else 0.0
            self.deadline = expires - margin
            self.deadline_local = self.now + (self.deadline - redis_now)

    @property
    def past_deadline(self) -> bool:
        return self.now >= self.deadline_local

    def run(self, part: Part) -> None:
        try:
            self._run(part)
        except MissingApiKey as exc:
            self.end(part, self.state.ids(self.bid, part.n), exc)
        except (CallFailed, httpx.HTTPError, KeyError, ValueError) as exc:
            part.quiet += 1
            part.note = f"{type(exc).__name__}: {exc}"[:300]
            part.next_poll = self.now + self.interval(part)
            log.warning("batch %s part %d (%s): %s; trying again", self.bid, part.n, part.provider_id or "not created",
                        part.note)
            self.state.save(self.bid, part)

    def _run(self, part: Part) -> None:
        api = self.runner.api(part.provider, self.registry)
        if part.state == PLANNED:
            if self.closing or self.past_deadline:
                self.leave(part, self.state.ids(self.bid, part.n), "not created: the window was too short or the "
                           "batch was closed")
                return
            self.create(api, part)
        elif part.state == CREATING:
            self.recover(api, part)
        if part.state in (CREATED, CANCELLING):
            self.watch(api, part)

    def create(self, api: BatchApi, part: Part) -> None:
        """Spool the create's input (one pass over the lines), record the intent, send the create."""
        with tempfile.TemporaryFile() as spool:
            part.marker = f"otb{secrets.token_hex(6)}p{part.n}"  # the intent's mark, unique
            part.sent = api.write(part, self.runner.lines_of(self.bid, self.batch, self.registry, part), spool)
            if part.sent == 0:
                part.state = DONE
                self.state.save(self.bid, part)
                return
            if not self.holds():  # the spool took long and the lease lapsed meanwhile: the part is another's
                log.warning("batch %s part %d: lease lost before the create; left to the poller that has it",
                            self.bid, part.n)
                return
            part.intent_at, part.state = self.now, CREATING
            self.state.save(self.bid, part)  # the intent, before the create: a kill from here on is recovered
            try:
                part.provider_id = api.create(part, spool, _size(spool))
            except CallFailed as exc:
                if exc.status in (400, 404, 413, 422):  # refused outright: nothing was created
                    self.leave(part, self.state.ids(self.bid, part.n), f"the provider refused the batch ({exc})")
                    return
                raise
        if self.settings.native_fault == EXIT_AFTER_CREATE:
            log.error("OTB_NATIVE_FAULT=%s: exiting between the create and its record", EXIT_AFTER_CREATE)
            os._exit(3)
        self.created(part)

    def created(self, part: Part) -> None:
        part.state, part.created_at, part.note = CREATED, self.now, ""
        part.next_poll = self.now + min(self.settings.native_poll_interval, 5.0)
        self.state.record_created(self.bid, part)
        log.info("batch %s part %d: %s created with %d requests", self.bid, part.n, part.provider_id, part.sent)

    def recover(self, api: BatchApi, part: Part) -> None:
        """A create may have been sent before a kill: take the provider batch it made, else create again."""
        for candidate in api.find(part):
            if not self.state.known(candidate):
                part.provider_id = candidate
                log.warning("batch %s part %d: the create before a crash made %s; taken, not created again",
                            self.bid, part.n, candidate)
                self.created(part)
                return
        log.warning("batch %s part %d: no provider batch for intent %s; creating it", self.bid, part.n, part.marker)
        part.state = PLANNED
        self.create(api, part)

    def watch(self, api: BatchApi, part: Part) -> None:
        if part.state == CREATED and (self.closing or self.past_deadline):
            api.cancel(part)
            part.state = CANCELLING
            part.note = "cancelled: the batch was cancelled" if self.closing else \
                "cancelled at the window's margin: the rest runs in real time"
            self.state.save(self.bid, part)
        if self.now < part.next_poll and part.state != CANCELLING:
            return
        try:
            poll = api.poll(part)
        except CallFailed as exc:
            if exc.status == 404 and self.now - part.created_at < NOT_FOUND_GRACE:
                part.next_poll = self.now + min(self.settings.native_poll_interval, 2.0)
                self.state.save(self.bid, part)
                return  # not visible yet (propagation)
            if exc.status == 404:
                self.leave(part, self.state.ids(self.bid, part.n), f"{part.provider_id} is unknown to the provider")
                return
            raise
        if part.state == CREATED:
            part.note = ""  # a transient failure before this poll is over (CANCELLING keeps why it cancelled)
        moved = poll.progress != part.progress or poll.status != part.status
        part.polls += 1
        part.quiet = 0 if moved else part.quiet + 1
        part.status, part.progress = poll.status, poll.progress
        if poll.ended:
            self.finish(api, part, poll)
            return
        part.next_poll = self.now + self.interval(part)
        self.state.save(self.bid, part)

    def interval(self, part: Part) -> float:
        wait = self.settings.native_poll_interval * float(min(2 ** (part.quiet // 3), MAX_BACKOFF))
        if part.state == CANCELLING:  # a cancel takes hold in seconds to minutes: look again soon
            return min(wait, 5.0)
        if self.deadline is not None and not self.closing and part.state == CREATED:
            wait = min(wait, max(self.deadline_local - self.now, 0.0) + 0.01)
        return wait

    def finish(self, api: BatchApi, part: Part, poll: Poll) -> None:
        """The provider batch ended: commit each answer once; what was not answered goes on (or ends)."""
        ids = self.state.ids(self.bid, part.n)
        answered: set[int] = set()
        if poll.has_results:
            try:
                for group in _pages(api.results(part), PAGE):
                    answered.update(a.position for a in group if a.kind in (SUCCEEDED, ERRORED))
                    self.commit(part, ids, [a for a in group if a.kind in (SUCCEEDED, ERRORED)])
            except CallFailed as exc:  # results not there yet (propagation) or any more (past 29 days)
                if exc.status not in (404, 410) or self.now - part.created_at < NOT_FOUND_GRACE:
                    raise
                part.note = f"its results could not be read ({exc})"
                log.error("batch %s part %d: %s", self.bid, part.n, part.note)
        if poll.has_results and not answered and part.sent and part.progress.get("succeeded", 0):
            log.error("batch %s part %d: the results of %s carry none of this intent's ids (%s_*): a batch matched "
                      "after a crash was not this one; its lines go on without it", self.bid, part.n,
                      part.provider_id, part.marker)
        unanswered = [cid for i, cid in enumerate(ids) if i not in answered]
        why = {"FAILED": "the job failed", "EXPIRED": "the job expired at the provider"}.get(
            poll.status, f"{part.provider_id} ended {poll.status}")
        self.leave(part, unanswered, part.note or why)  # the note says why only when lines were left
        api.cleanup(part)

    def commit(self, part: Part, ids: list[str], answers: list[Answer]) -> None:
        """A page of answers, each committed once, in one round trip (their bodies are not translated
        again: spec and meta come from the stored request and the extras kept at planning)."""
        by_cid = {ids[a.position]: a for a in answers if a.position < len(ids)}
        cids = list(by_cid)
        pipe = self.runner.conn.pipeline(transaction=False)
        pipe.hmget(self.store.keys.requests(self.bid), cids)
        pipe.hmget(self.store.keys.results(self.bid), cids)
        raws, done = pipe.execute() if cids else ([], [])
        out: list[records.Result] = []
        for cid, raw, result, extras in zip(cids, raws, done, self.state.extras(self.bid, cids)):
            answer = by_cid[cid]
            if result is not None or raw is None:
                continue  # committed already (an earlier import, or ended meanwhile), or gone with its batch
            try:
                record = json.loads(raw)
                spec, meta = records.answering(self.registry, self.batch, cid, record, extras)
                if answer.kind == SUCCEEDED and answer.data is not None:
                    out.append(records.answer_result(self.registry, self.batch, cid, spec, meta, answer.data,
                                                     part.provider_id, record))
                elif answer.error is not None:
                    out.append(records.error_result(self.batch, cid, answer.error, meta, part.provider_id))
            except RequestFailed as exc:  # an answer the adapter cannot read: an error line, not a lost line
                out.append(records.error_result(self.batch, cid, exc, records.meta_of(self.batch, json.loads(raw)),
                                                part.provider_id))
        self.store.commit_many(self.bid, out, pool=self.batch.pool)

    def leave(self, part: Part, ids: list[str], why: str) -> None:
        """Lines a provider batch did not answer: real time while the window lasts, else closed."""
        open_ids = _open(self.store, self.bid, ids) if ids else []
        status = (self.store.batch(self.bid) or {}).get("status", "")
        if open_ids and status in CLOSED_CODE:
            code = CLOSED_CODE[status]
            end_requests(self.store, self.bid, open_ids, BatchClosed(code), "canceled" if "cancel" in code else "expired")
        elif open_ids and self.expires_local is not None and self.now >= self.expires_local:
            end_requests(self.store, self.bid, open_ids, BatchClosed("batch_expired"), "expired")
        elif open_ids:  # queued and the part marked done together: a kill between cannot queue them twice
            part.state, part.note = DONE, why
            part.progress = {**part.progress, "to_realtime": len(open_ids)}
            with self.runner.conn.pipeline(transaction=True) as pipe:
                jobs = enqueue_chunks(self.runner.conn, self.settings, self.bid, open_ids,
                                      f"native{part.n}-{int(self.now * 1000)}", pipe=pipe)
                self.state.save(self.bid, part, pipe=pipe)
                pipe.execute()
            log.warning("batch %s part %d: %d lines to real time (%s) as %s", self.bid, part.n, len(open_ids), why,
                        ", ".join(jobs[:3]))
            return
        part.state = DONE
        if open_ids:
            part.note = why
        self.state.save(self.bid, part)

    def end(self, part: Part, ids: list[str], error: RequestFailed) -> None:
        """A part that cannot run at all (no API key): its open lines end with the reason."""
        for cid in _open(self.store, self.bid, ids):
            records.commit_error(self.store, self.batch, cid, error, {"model": part.model, "tags": self.batch.tags})
        part.state, part.note = DONE, error.message
        self.state.save(self.bid, part)


def _size(spool: IO[bytes]) -> int:
    spool.seek(0, os.SEEK_END)
    return spool.tell()


def _open(store: Store, bid: str, ids: list[str]) -> list[str]:
    """Those of `ids` without a result yet."""
    done = store.done_ids(bid, ids)
    return [cid for cid in ids if cid not in done]


def _pages(answers: Iterator[Answer], size: int) -> Iterator[list[Answer]]:
    page: list[Answer] = []
    for answer in answers:
        page.append(answer)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


class NativePoller(threading.Thread):
    """Runs in every `otb worker` parent: the due native batches, about once a second."""

    def __init__(self, connect: Callable[[], redis.Redis], settings: Settings) -> None:
        super().__init__(name="otb-native", daemon=True)
        self.connect, self.settings = connect, settings
        self.stopped = threading.Event()
        # Made here, in the thread that starts the poller, not in the poller's own: building it loads the
        # CA bundle through OpenSSL, and a work horse forked while another thread is inside OpenSSL can
        # inherit its locks held and hang at its first hash (rqworker.settle_openssl).
        self.client = httpx.Client(timeout=httpx.Timeout(settings.request_timeout, connect=30.0))

    def run(self) -> None:
        conn = self.connect()
        with self.client as client:
            runner = Runner(conn, self.settings, client)
            while not self.stopped.wait(min(1.0, self.settings.native_poll_interval / 2)):
                try:
                    runner.tick()
                except redis.RedisError as exc:
                    log.warning("native poller: Redis unavailable (%s); retrying", exc)
                except Exception:  # never let the poller die silently
                    log.exception("native poller pass failed")


def run_until_done(conn: redis.Redis, settings: Settings) -> bool:
    """Poll every native batch until none is left (in-process runs: `otb run`, `otb demo`, embedded
    clients, whose burst worker has no poller thread); whether there was any."""
    state = native_state(conn, settings)
    if not conn.zcard(state.keys.native_due):
        return False
    with httpx.Client(timeout=httpx.Timeout(settings.request_timeout, connect=30.0)) as client:
        runner = Runner(conn, settings, client)
        while conn.zcard(state.keys.native_due):
            if not runner.tick():
                time.sleep(min(1.0, settings.native_poll_interval / 2))
    return True
