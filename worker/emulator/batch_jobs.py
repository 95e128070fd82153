"""Native batch jobs, provider-neutral: their timeline, their fault markers and the store that keeps them.

A job's answers are computed when it is created (by the realtime endpoints' own code); what a poll
sees is then a pure function of the job and the clock: item k of the completion order is done at
`created + delay * (k + 1) / n`, and the job ends at `created + delay` unless a marker says otherwise.
Time is read through worker.clock, so a test that pins the clock a day ahead sees a stalled job expire.

Batch markers, found anywhere in a create body (or, for Gemini file mode, in the uploaded file):
    #emu:batch-delay=<s>        this job takes <s> seconds instead of the configured batch_delay_s
    #emu:batch-expire[=<f>]     the job ends expired at its delay; a fraction <f> of it done first
    #emu:batch-fail             the job fails at its delay (Gemini FAILED; Anthropic: every request errored)
    #emu:batch-stall[=<f>]      a fraction <f> (default 0) completes, then nothing until cancel or expiry
    #emu:batch-404=<n>          the first n retrieve/results/cancel calls answer 404 (propagation delay)
    #emu:batch-404=<s>s         ... or every such call in the first <s> seconds
    #emu:batch-lost             the job is created, then the connection is dropped without an answer
    #emu:batch-job-states       Gemini reports JOB_STATE_* instead of BATCH_STATE_*
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .. import clock
from .core import EmuError

BATCH_MARKER_RE = re.compile(rb"#emu:batch-(delay|expire|fail|stall|404|lost|job-states)(?:=([0-9.]+s?))?")
DROP_KEY = b"#emu:drop-key"  # per request, Gemini: the answer loses its key (file: no line; inline: no metadata)


@dataclass
class BatchMarkers:
    """The batch-level fault markers of one create (see the module docstring)."""

    delay: float | None = None
    expire: float | None = None  # fraction done before the job expires
    fail: bool = False
    stall: float | None = None  # fraction done before the job stalls
    hidden_calls: int = 0
    hidden_seconds: float = 0.0
    lost: bool = False
    job_states: bool = False


def parse_batch_markers(*raws: bytes) -> BatchMarkers:
    """Batch markers anywhere in the given bytes; a malformed value is ignored like any other text."""
    m = BatchMarkers()
    for raw in raws:
        if b"#emu:batch-" not in raw:
            continue
        for name, value in BATCH_MARKER_RE.findall(raw):
            _apply_marker(m, name.decode(), value.decode())
    return m


def _apply_marker(m: BatchMarkers, name: str, value: str) -> None:
    try:
        if name == "delay" and value:
            m.delay = float(value)
        elif name in ("expire", "stall"):
            fraction = min(1.0, max(0.0, float(value))) if value else 0.0
            setattr(m, name, fraction)
        elif name == "404" and value.endswith("s"):
            m.hidden_seconds = float(value[:-1])
        elif name == "404" and value:
            m.hidden_calls = int(value)
        elif name in ("fail", "lost", "job-states"):
            setattr(m, name.replace("-", "_"), True)
    except ValueError:
        return


@dataclass
class Item:
    """One request of a job and its answer: `ok` with the provider's response, or the error it got."""

    key: str | None
    ok: bool
    body: dict[str, Any]
    meta: Any = None  # Gemini inline: the request's metadata, echoed with its answer
    drop_key: bool = False


@dataclass
class Progress:
    """What a poll sees at one instant."""

    done: int  # items complete, counted along the completion order
    phase: str  # running | canceling | ended
    fate: str  # succeeded | expired | failed | cancelled (meaningful once the job is no longer running)
    ended_at: float | None


@dataclass
class Job:
    """A native batch job: its items in request order, the order they complete in, and its faults."""

    id: str
    created: float
    delay: float
    lifetime: float  # seconds until a job still running expires (Anthropic 24 h, Gemini 48 h)
    items: list[Item]
    order: list[int]  # completion order: indices into items
    marks: BatchMarkers
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific (model, display name, mode)
    cancel_at: float | None = None
    cancel_delay: float = 0.0
    deleted: bool = False

    def progress(self, now: float) -> Progress:
        n = len(self.items)
        end, fate, reachable = self._plan(n)
        if self.cancel_at is not None and self.cancel_at < end:
            done = self._done_by(self.cancel_at, n, reachable)
            ended_at = self.cancel_at + self.cancel_delay
            phase = "ended" if now >= ended_at else "canceling"
            return Progress(done, phase, "cancelled", ended_at)
        if now >= end:  # at its natural end every reachable item is done (a job slower than its lifetime aside)
            done = self._done_by(end, n, reachable) if self.delay >= self.lifetime else reachable
            return Progress(done, "ended", fate, end)
        return Progress(self._done_by(now, n, reachable), "running", fate, None)

    def _plan(self, n: int) -> tuple[float, str, int]:
        """(natural end, fate, how many items can complete) as the markers decide."""
        m, expiry = self.marks, self.created + self.lifetime
        if m.stall is not None:
            return expiry, "expired", math.floor(m.stall * n)
        if self.created + self.delay >= expiry:
            return expiry, "expired", n
        if m.fail:
            return self.created + self.delay, "failed", 0
        if m.expire is not None:
            return self.created + self.delay, "expired", math.floor(m.expire * n)
        return self.created + self.delay, "succeeded", n

    def _done_by(self, t: float, n: int, reachable: int) -> int:
        if self.delay <= 0:
            return reachable
        return min(reachable, max(0, math.floor(n * (t - self.created) / self.delay)))

    def settled(self, done: int) -> Iterator[tuple[Item, bool]]:
        """Every item in completion order with whether it completed (the rest were cancelled or expired)."""
        for rank, index in enumerate(self.order):
            yield self.items[index], rank < done

    def completed_counts(self, done: int) -> tuple[int, int]:
        """(succeeded, errored) among the first `done` items of the completion order."""
        ok = sum(1 for index in self.order[:done] if self.items[index].ok)
        return ok, done - ok


class BatchStore:
    """Jobs by id, oldest first; thread-safe so a test may look in from outside the server's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._hidden: dict[str, int] = {}

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            self._hidden[job.id] = job.marks.hidden_calls

    def find(self, job_id: str, now: float) -> Job | None:
        """The job, or None while it is unknown, deleted, or still hidden by `#emu:batch-404`."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.deleted:
                return None
            if self._hidden.get(job_id, 0) > 0:
                self._hidden[job_id] -= 1
                return None
            return None if now < job.created + job.marks.hidden_seconds else job

    def newest_first(self) -> list[Job]:
        with self._lock:
            return [j for j in reversed(self._jobs.values()) if not j.deleted]


class Named(Protocol):
    @property
    def id(self) -> str: ...


N = TypeVar("N", bound=Named)


def page_after(listed: list[N], cursor: str | None, size: int) -> tuple[list[N], bool]:
    """`size` entries after the one whose id is `cursor` (from the start without one; none after an
    unknown cursor), and whether more follow."""
    ids = [x.id for x in listed]
    start = ids.index(cursor) + 1 if cursor in ids else (0 if cursor is None else len(ids))
    return listed[start:start + size], start + size < len(listed)


def token_page(listed: list[N], query: Mapping[str, str], default: int, cap: int) -> tuple[list[N], str | None]:
    """Google's paging (`pageSize`, `pageToken`): a page and the token for the next one, if any."""
    try:
        size = min(cap, max(1, int(query.get("pageSize", str(default)))))
    except ValueError:
        raise EmuError(400, "pageSize must be an integer") from None
    page, more = page_after(listed, query.get("pageToken"), size)
    return page, page[-1].id if more and page else None


def now() -> float:
    return clock.now()


def rfc3339(ts: float) -> str:
    """A timestamp as both providers write it: UTC, microseconds, `Z`."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
