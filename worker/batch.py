"""A batch as the requests running in a chunk see it: still open?, its options and tags, what it parked.

Read once per batch per chunk run (a run may hold requests of several batches, through the chunks it
claims), so the hot path of a request asks Redis nothing about its batch but the status, at most
once a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .registry import ModelSpec
from .routes import Route, plan
from .settings import Settings
from .store import Store

log = logging.getLogger("otb.worker")

ParkedRequest = tuple[str, float, str]  # (custom_id, resume in s, why): recovery.park's shape


class BatchGate:
    """Is the batch still open? Read at most once a second, so cancel and expiry reach running chunks fast.

    The completion window is judged on Redis's clock (TIME, read with the status), never this
    machine's: a worker whose clock runs hours ahead must not expire a batch early, nor one behind late.
    A batch whose record is gone counts as expired: its requests are not sent (no result could be kept).
    """

    def __init__(self, store: Store, batch_id: str) -> None:
        self.store, self.batch_id = store, batch_id
        self._read_at = -1.0
        self._status: str | None = None
        self._expires_at: float | None = None
        self._redis_now = 0.0
        self._reading = False  # a read in a thread is under way

    def closed_code(self) -> str | None:
        now = time.monotonic()
        if now - self._read_at >= 1.0:
            self._refresh(now)
        redis_now = self._redis_now + (now - self._read_at)
        if self._status is None:  # the record is gone (expired, evicted, lost): nothing to send for
            return "batch_expired"
        if self._status in ("cancelling", "cancelled"):
            return "batch_cancelled"
        if self._status == "in_progress" and self._expires_at is not None and redis_now >= self._expires_at:
            self._status = self.store.close(self.batch_id, "expiring")  # the window ended: the batch ends expired
        if self._status in ("expiring", "expired"):
            return "batch_expired"
        return None

    def seconds_left(self) -> float | None:
        """Seconds until the completion window ends, on Redis's clock (None: no window)."""
        self.closed_code()  # fresh within a second
        if self._expires_at is None:
            return None
        return self._expires_at - (self._redis_now + (time.monotonic() - self._read_at))

    def _refresh(self, now: float) -> None:
        """Read now the first time; later, inside a running event loop, read in a thread and go on with
        what was read a second ago: a round trip on the loop stalls every call of the run (under load,
        milliseconds each time)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self._read_at < 0:
            self._read(now)
        elif not self._reading:
            self._reading = True
            loop.run_in_executor(None, self._read_in_thread)

    def _read_in_thread(self) -> None:
        try:
            self._read(time.monotonic())
        except Exception as exc:  # Redis away a moment: keep the last reading; the next look reads again
            log.warning("status of batch %s not read: %s", self.batch_id, exc)
        finally:
            self._reading = False

    def _read(self, now: float) -> None:
        """The status, the window's end and Redis's clock, in one round trip."""
        pipe = self.store.conn.pipeline(transaction=False)
        pipe.hmget(self.store.keys.batch(self.batch_id), "status", "expires_at")
        pipe.time()
        (status, expires), redis_time = pipe.execute()
        self.seen(_text(status), _text(expires), redis_time, now)

    def seen(self, status: str | None, expires: str | None, redis_time: tuple[int, int], now: float) -> None:
        """A reading of the record (read here, or by Batch.load with the rest of it) and of Redis's clock."""
        sec, usec = redis_time
        self._status = status
        self._expires_at = float(expires) if expires else None
        self._redis_now, self._read_at = sec + usec / 1e6, now


@dataclass
class Batch:
    """One batch of a chunk run: its gate, the submit options a request needs, and its parked requests."""

    id: str
    gate: BatchGate
    max_cost_pico: int | None = None  # --max-cost, if any
    pool: str = ""  # the tenant whose spend its commits add to, and whose budget it shares ('' for none)
    pool_max_pico: int | None = None  # that tenant's --max-cost, if any
    drop_unsupported: bool = False  # --drop-unsupported-params
    tags: dict[str, str] = field(default_factory=dict)  # the batch's metadata, on every result
    parked: list[ParkedRequest] = field(default_factory=list)
    mode: str = "realtime"  # --mode as resolved at submit (routes.py); batches from before it: realtime
    window: float | None = None  # --completion-window, seconds
    single: bool = False  # one request (an HTTP call): its commit shares no script call, so it waits for none

    @classmethod
    def load(cls, store: Store, batch_id: str) -> Batch:
        """The submission's options and metadata, as submit stored them on the batch record; the gate's
        first reading comes with them (one round trip: a claimed one-request call loads a batch per call)."""
        pipe = store.conn.pipeline(transaction=False)
        pipe.hgetall(store.keys.batch(batch_id))
        pipe.time()
        record, redis_time = pipe.execute()
        raw = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
               for k, v in record.items()}
        gate = BatchGate(store, batch_id)
        gate.seen(raw.get("status"), raw.get("expires_at"), redis_time, time.monotonic())
        options = json.loads(raw.get("options") or "{}")
        window = options.get("completion_window")
        return cls(batch_id, gate, max_cost_pico=int(options.get("max_cost_pico") or 0) or None,
                   pool=str(options.get("pool") or ""), pool_max_pico=int(options.get("pool_max_pico") or 0) or None,
                   drop_unsupported=bool(options.get("drop_unsupported_params")),
                   tags=json.loads(raw.get("metadata") or "{}"), mode=str(options.get("mode") or "realtime"),
                   window=float(window) if window else None, single=raw.get("total") == "1")

    @property
    def budgeted(self) -> bool:
        """Its calls hold their worst case before they are sent: a budget of its own, or its pool's."""
        return bool(self.max_cost_pico or self.pool_max_pico)

    def route(self, spec: ModelSpec, kind: str, body: dict[str, Any], settings: Settings,
              meta: dict[str, Any]) -> Route:
        """The route of one of its requests, now (routes.plan with this batch's mode and window)."""
        return plan(self.mode, spec, kind, body, settings, window=self.window,
                    seconds_left=self.gate.seconds_left() if self.window else None, meta=meta)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
