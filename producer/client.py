"""The Python API for other apps: submit work, follow it, read results. Same parts the CLI uses.

    from producer import Client
    client = Client.from_env()                      # REDIS_URL, OTB_REGISTRY, ...
    batch_id = client.submit([{"model": "google/gemini-3-flash",
                               "messages": [{"role": "user", "content": "Hi"}]}])
    status = client.wait(batch_id, timeout=60)
    for line in client.results(batch_id): ...
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import redis

from worker.registry import Registry, load_registry
from worker.settings import Settings
from worker.store import Store

from .batchfile import Limits, ParsedBatch, read_batch
from .control import cancel, retry
from .local import connect
from .submit import submit

FINAL = ("completed", "cancelled", "expired")


class BatchNotFound(LookupError):
    pass


class Client:
    def __init__(self, conn: redis.Redis, settings: Settings, registry: Registry | None = None) -> None:
        self.conn = conn
        self.settings = settings
        self.registry = registry or load_registry(settings.registry_path)
        self.store = Store(conn, settings.key_prefix, settings.result_ttl)

    @classmethod
    def from_env(cls) -> "Client":
        settings = Settings.from_env()
        return cls(connect(settings), settings)

    def validate(self, raw_lines: Iterable[bytes], *, drop_unsupported_params: bool = False) -> ParsedBatch:
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
    ) -> str:
        """Submit request dicts (either line format) or a JSONL path; returns the batch id.

        Raises SubmissionRejected listing every bad line unless `keep_valid`. The same
        `idempotency_key` with the same requests returns the first batch's id.
        """
        if isinstance(requests, (str, Path)):
            with open(requests, "rb") as fh:
                parsed = self.validate(fh, drop_unsupported_params=drop_unsupported_params)
        else:
            raw = (json.dumps(r).encode() for r in requests)
            parsed = self.validate(raw, drop_unsupported_params=drop_unsupported_params)
        return submit(
            self.conn, self.settings, parsed, keep_valid=keep_valid,
            drop_unsupported_params=drop_unsupported_params, metadata=metadata,
            completion_window=completion_window, idempotency_key=idempotency_key,
        )

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Stop unstarted requests (they end `batch_cancelled`); in-flight ones finish. Results are kept."""
        self.status(batch_id)
        return cancel(self.conn, self.settings, batch_id)

    def retry(self, batch_id: str) -> int:
        """Re-run only the errored requests; returns how many were re-enqueued."""
        self.status(batch_id)
        return retry(self.conn, self.settings, batch_id)

    def status(self, batch_id: str) -> dict[str, Any]:
        status = self.store.status(batch_id)
        if status is None:
            raise BatchNotFound(f"batch {batch_id!r} not found (wrong id, or its records expired)")
        return status

    def wait(self, batch_id: str, *, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Block until the batch is final; TimeoutError (with the last status) if `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(batch_id)
            if status["status"] in FINAL:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch_id} not finished after {timeout} s: {status['request_counts']}")
            time.sleep(poll)

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Result lines in input order (requests without a result yet are skipped)."""
        self.status(batch_id)
        return (line for line in self.store.iter_results(batch_id) if line is not None)


def write_jsonl(lines: Iterable[dict[str, Any]], out: io.TextIOBase | Any) -> int:
    n = 0
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        n += 1
    return n
