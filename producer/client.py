"""The Python API for other apps: submit work, follow it, read results. Same parts the CLI uses.

    from producer import Client
    client = Client.from_env()                      # REDIS_URL (required), OTB_REGISTRY, ...
    batch_id = client.submit([{"model": "google/gemini-3-flash",
                               "messages": [{"role": "user", "content": "Hi"}]}])
    status = client.wait(batch_id, timeout=60)
    for line in client.results(batch_id): ...
"""

from __future__ import annotations

import io
import json
import time
from decimal import Decimal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import redis

from worker.registry import Registry, load_registry
from worker.settings import Settings
from worker.store import Store

from .batchfile import Limits, ParsedBatch, read_batch
from .control import cancel, retry
from .local import connect_shared, drain, embedded_redis
from .options import SubmitOptions
from .status import BatchNotFound, batch_status
from .submit import SubmissionRejected, submit

FINAL = ("completed", "cancelled", "expired", "lost")  # a batch in one of these changes no more on its own
# One blocked read of a batch's events, at most: well inside a client's socket timeout (redis-py 8 gives
# every client 5 s by default; a read blocked as long raised TimeoutError once a batch was quiet for 5 s).
EVENTS_BLOCK_MS = 2000


class Client:
    def __init__(self, conn: redis.Redis, settings: Settings, registry: Registry | None = None) -> None:
        self.conn = conn
        self.settings = settings
        self.registry = registry or load_registry(settings.registry_path)
        self.store = Store.of(conn, settings)

    @classmethod
    def from_env(cls) -> "Client":
        """A client on the Redis the workers share (REDIS_URL); ConfigError at once if it is unset or down.

        Never falls back to a private Redis: work submitted there would wait for a worker forever.
        """
        settings = Settings.from_env()
        return cls(connect_shared(settings), settings)

    @classmethod
    def embedded(cls, settings: Settings | None = None) -> "Client":
        """A client on a private in-process Redis, for notebooks and tests: no `otb worker` sees it,
        so its batches run only when this process calls `client.run_here()`."""
        return cls(embedded_redis(), settings or Settings())

    def run_here(self) -> None:
        """Work every queued chunk in this process until the queue is empty (the embedded stack's worker)."""
        drain(self.conn, self.settings)

    def listening_workers(self) -> int:
        """How many `otb worker` processes are registered on this queue (0: queued work waits)."""
        from rq import Worker

        from worker.queues import queue_for

        return Worker.count(queue=queue_for(self.conn, self.settings))

    def batches(self, limit: int = 20) -> list[dict[str, Any]]:
        """Status of the newest `limit` batches, newest first (those whose records expired are left out)."""
        ids = cast(list[bytes], self.conn.zrevrange(self.store.keys.batches, 0, limit - 1))
        found = (self.store.status(_text(b)) for b in ids)
        return [s for s in found if s is not None]

    def validate(self, raw_lines: Iterable[bytes], *, drop_unsupported_params: bool = False) -> ParsedBatch:
        """Check lines without storing anything: every bad one with its reason (as `otb estimate` reads them)."""
        limits = Limits(self.settings.max_line_bytes, self.settings.max_lines)
        return read_batch(raw_lines, self.registry, drop_unsupported=drop_unsupported_params, limits=limits)

    def submit(
        self,
        requests: Iterable[dict[str, Any]] | str | Path,
        *,
        keep_valid: bool = False,
        drop_unsupported_params: bool = False,
        metadata: dict[str, str] | None = None,
        completion_window: float | None = None,
        idempotency_key: str | None = None,
        max_cost: Decimal | None = None,
        mode: str | None = None,
    ) -> str:
        """Submit request dicts (either line format) or a JSONL path; returns the batch id.

        Raises SubmissionRejected listing every bad line unless `keep_valid`. The same
        `idempotency_key` with the same requests returns the first batch's id. The options are
        those of `SubmitOptions` (BadOption for a value that cannot be used, a negative budget say).
        """
        options = SubmitOptions(keep_valid=keep_valid, drop_unsupported_params=drop_unsupported_params,
                                metadata=metadata or {}, completion_window=completion_window,
                                idempotency_key=idempotency_key, max_cost=max_cost, mode=mode)
        return submit(self.conn, self.settings, self.registry, _raw_lines(requests), options).batch_id

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Stop unstarted requests (they end `batch_cancelled`); in-flight ones finish. Results are kept."""
        self.status(batch_id)
        return cancel(self.conn, self.settings, batch_id)

    def retry(self, batch_id: str, *, expired: bool = False) -> int:
        """Re-run only the errored requests (with `expired`, also those that expired or were cancelled,
        opening an expired or cancelled batch again), in the route the batch's mode and window allow; a
        window that has ended starts again. Returns how many were taken back to run again."""
        self.status(batch_id)
        return retry(self.conn, self.settings, batch_id, expired=expired, registry=self.registry)

    def status(self, batch_id: str) -> dict[str, Any]:
        return batch_status(self.store, batch_id, self.settings)

    def wait(self, batch_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Block until the batch is final, woken by its completion event (no polling).

        TimeoutError (with the counts so far) if `timeout` passes.
        """
        for event in self.events(batch_id, timeout=timeout):
            if event.get("type") == "batch":
                break
        status = self.status(batch_id)
        if status["status"] in FINAL:
            return status
        raise TimeoutError(f"batch {batch_id} not finished after {timeout} s: {status['request_counts']}")

    def events(self, batch_id: str, *, timeout: float | None = None, since: str = "0") -> Iterator[dict[str, str]]:
        """The batch's completion events, oldest first, blocking for new ones until the batch ends.

        Each is {"type": "request", "custom_id", "outcome"} or {"type": "batch", "batch", "status"}.
        Other languages read the same Redis stream: XREAD BLOCK 0 STREAMS otb:batch:{id}:events 0.
        A batch event from before a `retry` (the batch is running again) is history, not the end:
        it is skipped, and the events go on to the batch's real end. Ends too when the batch's
        record is gone or its status is final without an event (`lost`).
        """
        key = self.store.keys.events(batch_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = since
        self.status(batch_id)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            block = EVENTS_BLOCK_MS if left is None else max(1, min(int(left * 1000), EVENTS_BLOCK_MS))
            read = next_events(self.conn, key, last, block)
            for entry_id, event in read:
                last = entry_id
                if event.get("type") != "batch":
                    yield event
                elif self._is_final(batch_id):
                    yield event
                    return
            if not read and self._is_final(batch_id, missing=True):
                return  # quiet, and expired or deleted meanwhile, or final with no event (lost)

    def _is_final(self, batch_id: str, *, missing: bool = False) -> bool:
        """Whether the batch changes no more (`missing`: what a batch whose record is gone counts as)."""
        status = self.store.status(batch_id)
        return missing if status is None else status["status"] in FINAL

    def submit_one(self, request: dict[str, Any], *, tags: dict[str, str] | None = None,
                   drop_unsupported_params: bool = False, completion_window: float | None = None,
                   idempotency_key: str | None = None) -> "Handle":
        """Hand one chat or embedding request (short form or OpenAI line) to the workers."""
        line = dict(request)
        custom_id = str(line.setdefault("custom_id", "request"))
        try:
            batch_id = self.submit([line], drop_unsupported_params=drop_unsupported_params, metadata=tags,
                                   completion_window=completion_window, idempotency_key=idempotency_key)
        except SubmissionRejected as exc:  # one request: its reason is the message, not "1 line is invalid"
            if len(exc.errors) == 1:
                exc.args = (f"the request was refused, nothing was enqueued: {exc.errors[0].error.message}",)
            raise
        return Handle(self, batch_id, custom_id)

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Result lines in input order (requests without a result yet are skipped)."""
        self.status(batch_id)
        return (line for line in self.store.iter_results(batch_id) if line is not None)


class Handle:
    """One request handed to the workers: wait for its result, look at it, or cancel it."""

    def __init__(self, client: Client, batch_id: str, custom_id: str) -> None:
        self.client, self.batch_id, self.custom_id = client, batch_id, custom_id

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The result line (OpenAI batch output + cost), woken by the completion event.

        An event for this request whose result is no longer there (taken back by a `retry`) is
        history: the wait goes on for the next one."""
        key = self.client.store.keys.results(self.batch_id)
        for event in self.client.events(self.batch_id, timeout=timeout):
            if event.get("custom_id") == self.custom_id or event.get("type") == "batch":
                line = self.client.conn.hget(key, self.custom_id)
                if line is not None:
                    return dict(json.loads(line))
        raise TimeoutError(f"no result for {self.custom_id} of {self.batch_id} after {timeout} s")

    def status(self) -> dict[str, Any]:
        return self.client.status(self.batch_id)

    def cancel(self) -> dict[str, Any]:
        return self.client.cancel(self.batch_id)


def next_events(conn: redis.Redis, key: str, after: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
    """A stream's entries after id `after`, waiting up to `block_ms` for the first one, decoded."""
    found: list[tuple[str, dict[str, str]]] = []
    read = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], conn.xread({key: after}, block=block_ms))
    for _, entries in read or []:
        for entry_id, fields in entries:
            found.append((_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}))
    return found


def last_event_id(conn: redis.Redis, key: str) -> str:
    """The id of a stream's newest entry ("0-0" when empty): reading after it gives only what comes next."""
    newest = cast(list[tuple[bytes, Any]], conn.xrevrange(key, count=1))
    return _text(newest[0][0]) if newest else "0-0"


def _raw_lines(requests: Iterable[dict[str, Any]] | str | Path) -> Iterator[bytes]:
    """JSONL bytes from a path (read as it is submitted) or from request dicts."""
    if isinstance(requests, (str, Path)):
        with open(requests, "rb") as fh:
            yield from fh
    else:
        for request in requests:
            yield json.dumps(request).encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def write_jsonl(lines: Iterable[dict[str, Any]], out: io.TextIOBase | Any) -> int:
    n = 0
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        n += 1
    return n
