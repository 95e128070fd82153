"""A batch's status by its id, or BatchNotFound: what `Client.status` and `otb status` share.

Kept apart from `Client` (which brings submit, validation and the embedded stack) so that
`otb status` loads only the store; the native route's modules only for a batch that has native lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.settings import Settings
    from worker.store import Store


class BatchNotFound(LookupError):
    pass


def not_found(batch_id: str) -> BatchNotFound:
    return BatchNotFound(f"batch {batch_id!r} not found (wrong id, or its records expired)")


def batch_status(store: Store, batch_id: str, settings: Settings) -> dict[str, Any]:
    """The batch's status with its counts and cost so far (Store.status), and its provider batches if
    it has native lines; or BatchNotFound."""
    status = store.status(batch_id)
    if status is None:
        raise not_found(batch_id)
    if store.conn.exists(store.keys.native(batch_id)):
        from worker.native import summary

        native = summary(store.conn, settings, batch_id)
        if native is not None:
            status["native"] = native  # its provider batches: where each is, by the provider's own word
    return status
