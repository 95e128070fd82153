"""What the Batch API's modules share: the stores they work on, and the hooks told of each final status.

`BatchContext.on_final` is the one place to learn that an API batch has reached its final OpenAI
status (`completed`, `failed`, `expired`, `cancelled`): every hook is called as `hook(tenant,
batch_id, status)` by the server that made it final, right after that became visible in Redis (its
output files included). By default the one hook is the tenant's webhook (webhooks.announce).
The batch leaves the open index only after its hooks ran, so a server that dies in between leaves
it to another server's sweep, which calls them again: at least once per batch, so a hook must be
idempotent (webhooks.announce is). A hook runs in the finalizer's thread (or the create request's,
for a file that fails validation) and must not block for long; an exception in it is logged and
ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from worker.registry import Registry, current_registry
from worker.settings import Settings
from worker.store import Store

from .batchrecords import BatchRecords
from .filestore import FileStore
from .tenants import KeyStore

log = logging.getLogger("otb.api.batches")

FinalHook = Callable[[str, str, str], None]


@dataclass(frozen=True)
class BatchContext:
    """The stores of one server process, shared by its routes and its finalizer thread."""

    conn: redis.Redis
    settings: Settings
    store: Store
    files: FileStore
    records: BatchRecords
    keys: KeyStore
    on_final: list[FinalHook] = field(default_factory=list)

    @classmethod
    def of(cls, conn: redis.Redis, settings: Settings, *, hooks: list[FinalHook] | None = None) -> "BatchContext":
        """The server's context; its final-status hooks are the tenant's webhook unless `hooks` says otherwise."""
        from . import webhooks

        store = Store.of(conn, settings)
        default: list[FinalHook] = [lambda tenant, bid, status: webhooks.announce(conn, settings, tenant, bid, status)]
        return cls(conn, settings, store, FileStore(conn, settings.key_prefix),
                   BatchRecords(conn, store.keys, settings.result_ttl), KeyStore(conn, settings.key_prefix),
                   default if hooks is None else hooks)

    def ended(self, tenant: str, batch_id: str, status: str) -> None:
        """A batch made final: tell the hooks, then take it off the open index (not before: see above)."""
        for hook in list(self.on_final):
            try:
                hook(tenant, batch_id, status)
            except Exception:  # a failing hook neither stops the others nor the finalizer
                log.exception("on_final hook %r failed for %s (%s)", hook, batch_id, status)
        self.records.forget_open(batch_id)

    def registry(self) -> Registry:
        """The registry as the file is now (reloaded when it changes, as workers do)."""
        return current_registry(self.settings.registry_path)
