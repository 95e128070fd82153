"""A work horse started for an HTTP call stays a moment for the next one, instead of exiting.

RQ forks a work horse per job it dequeues; a horse lives as long as its chunk run, which claims
queued jobs while it has room (recovery.claim_next). A call is a one-request job, so without this
every call that finds the worker idle pays a fork, the horse's start-up and RQ's bookkeeping: tens
of milliseconds on top of the provider's answer. Here a run started for an interactive job, once it
has nothing left to claim, waits up to `LINGER_S` for the next call (a blocked Redis read, woken the
moment one is queued) and claims it; the batch queue is looked at again every `WAIT_S`, so batch
work that arrives meanwhile is taken too. A stop (SIGTERM) ends the wait within `WAIT_S`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from .queues import wait_for_call
from .recovery import claim_next
from .settings import Settings

LINGER_S = 3.0  # how long a horse started for a call waits, idle, for the next one before it exits
WAIT_S = 0.5  # one blocked wait: then the batch queue and the stop flag are looked at again

Claimed = tuple[str, str, list[str]]  # (job id, batch, custom ids), as claim_next returns it


def claimer(conn: redis.Redis, settings: Settings, lease_key: str, owner: str, *, interactive: bool,
            stop: threading.Event, lost: threading.Event) -> Callable[[], Claimed | None]:
    """The run's claim: claim_next, and for a run started by a call, a wait for the next call when idle
    (not once the run's lease is lost: then it claims nothing, see worker/lease.py)."""

    def claim() -> Claimed | None:
        got = claim_next(conn, settings, lease_key, owner)
        if got is not None or not interactive:
            return got
        deadline = time.monotonic() + LINGER_S
        while not (stop.is_set() or lost.is_set()) and (left := deadline - time.monotonic()) > 0:
            wait_for_call(conn, settings, min(left, WAIT_S))
            got = claim_next(conn, settings, lease_key, owner)  # the call (first), or batch work that came meanwhile
            if got is not None:
                return got
        return None

    return claim
