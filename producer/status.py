"""A batch's status by its id, or BatchNotFound: what `Client.status` and `otb status` share.

Kept apart from `Client` (which brings submit, validation and the embedded stack) so that
`otb status` loads only the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.store import Store


class BatchNotFound(LookupError):
    pass


def batch_status(store: Store, batch_id: str) -> dict[str, Any]:
    """The batch's status with its counts and cost so far (Store.status), or BatchNotFound."""
    status = store.status(batch_id)
    if status is None:
        raise BatchNotFound(f"batch {batch_id!r} not found (wrong id, or its records expired)")
    return status
