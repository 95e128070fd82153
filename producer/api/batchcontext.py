"""What the Batch API's modules share: the stores they work on, and the hooks told of each final status.

`on_final` is the one place to learn that an API batch has reached its final OpenAI status
(`completed`, `failed`, `expired`, `cancelled`): every hook is called as `hook(tenant, batch_id,
status)` by the server that made it final, right after that became visible in Redis (its output
files included). Wiring webhooks is one line, in create_app:
`batchcontext.on_final.append(lambda t, b, s: webhooks.announce(conn, settings, t, b, s))`.
The batch leaves the open index only after its hooks ran, so a server that dies in between leaves
it to another server's sweep, which calls them again: at least once per batch, so a hook must be
idempotent (webhooks.announce is). A hook runs in the finalizer's thread (or the create request's,
for a file that fails validation) and must not block for long; an exception in it is logged and
ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis

from worker.registry import Registry, current_registry
from worker.settings import Settings
from worker.store import Store

from .batchrecords import BatchRecords
from .filestore import FileStore
from .tenants import KeyStore

log = logging.getLogger("otb.api.batches")

FinalHook = Callable[[str, str, str], None]
on_final: list[FinalHook] = []


def announce(tenant: str, batch_id: str, status: str) -> None:
    """Tell every `on_final` hook; a failing hook neither stops the others nor the caller."""
    for hook in list(on_final):
        try:
            hook(tenant, batch_id, status)
        except Exception:
            log.exception("on_final hook %r failed for %s (%s)", hook, batch_id, status)


@dataclass(frozen=True)
class BatchContext:
    """The stores of one server process, shared by its routes and its finalizer thread."""

    conn: redis.Redis
    settings: Settings
    store: Store
    files: FileStore
    records: BatchRecords
    keys: KeyStore

    @classmethod
    def of(cls, conn: redis.Redis, settings: Settings) -> "BatchContext":
        store = Store.of(conn, settings)
        return cls(conn, settings, store, FileStore(conn, settings.key_prefix),
                   BatchRecords(conn, store.keys, settings.result_ttl), KeyStore(conn, settings.key_prefix))

    def ended(self, tenant: str, batch_id: str, status: str) -> None:
        """A batch made final: tell the hooks, then take it off the open index (not before: see above)."""
        announce(tenant, batch_id, status)
        self.records.forget_open(batch_id)

    def registry(self) -> Registry:
        """The registry as the file is now (reloaded when it changes, as workers do)."""
        return current_registry(self.settings.registry_path)
