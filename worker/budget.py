"""--max-cost while calls are in flight: hold each call's worst case before sending, release it after.

A batch with a budget must never pass it, yet a batch that fits must not be stopped: so a call holds
its worst case (its input and all of its output limit) while in flight, a call that would fit once
the holds in flight settle waits for them, and only a call whose worst case added to what was
already spent passes the budget is refused (`budget_exceeded`, without being sent). The holds live
in Redis (`otb:batch:{id}:reserved`), shared by every worker, and lapse with their holder's lease.

A key's --max-cost is a budget shared by all of its batches and calls (their pool, the tenant): the
same hold is taken, in the same script call, against the key's spend (which every commit adds to,
lua/commit.lua) and the holds of all its calls in flight (`otb:tenant:{name}:reserved`).
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import redis

from . import clock, tokens
from .batch import Batch
from .errors import BatchClosed, BudgetExceeded
from .pricing import cost as price, from_pico, to_pico
from .providers.base import Prepared, output_limit
from .registry import ModelSpec
from .schemas import Usage
from .settings import Settings
from .store import Store

log = logging.getLogger("otb.worker")


def worst_case(spec: ModelSpec, kind: str, body: dict[str, Any], prepared: Prepared) -> Decimal:
    """The most this call can cost: its estimated input and, for a chat, all of its output limit."""
    if kind == "chat":
        worst = Usage(input_tokens=tokens.chat_input_tokens(body),
                      output_tokens=output_limit(prepared, spec.rules.max_output_tokens))
    else:
        worst = Usage(input_tokens=tokens.embedding_input_tokens(body))
    return price(worst, spec, clock.today()).total


async def hold(store: Store, settings: Settings, batch: Batch, custom_id: str, worst: Decimal) -> None:
    """Hold `worst` of the batch's budgets (its own, its pool's) for this call, waiting while calls in
    flight hold the rest.

    Raises BudgetExceeded when the call can no longer fit, BatchClosed when the batch closes meanwhile.
    """
    assert batch.budgeted
    hold_for = (settings.request_timeout + settings.retry_max_wait) * settings.max_attempts + 60
    lease, pause = _lease_key(store), 0.02
    while True:
        held = await asyncio.to_thread(store.reserve, batch.id, custom_id, to_pico(worst), batch.max_cost_pico,
                                       pool=batch.pool, pool_max_pico=batch.pool_max_pico, lease=lease,
                                       hold_for=hold_for)
        if held == 1:
            return
        if held == 0:
            raise BudgetExceeded(f"not sent: the cost so far plus this request's worst case (${worst}) "
                                 f"would pass {_budgets(batch)}")
        closed = batch.gate.closed_code()
        if closed:
            raise BatchClosed(closed)
        await asyncio.sleep(pause)  # calls in flight hold the rest of the budget: wait for them to settle
        pause = min(pause * 2, 0.5)


def _budgets(batch: Batch) -> str:
    """The budgets a call of `batch` is held against, as its refusal names them."""
    named = [f"the batch budget of ${from_pico(batch.max_cost_pico)}"] if batch.max_cost_pico else []
    if batch.pool_max_pico:
        named.append(f"the budget of key {batch.pool!r}, ${from_pico(batch.pool_max_pico)}")
    return " or ".join(named)


def release_soon(store: Store, batch: Batch, custom_id: str) -> None:
    """Free the holds from a thread, without the event loop waiting for Redis (it waited one round trip a
    budgeted call). The run's end waits for its threads, so a release is never dropped by it; until it
    lands, the hold only makes the budget stricter."""
    asyncio.get_running_loop().run_in_executor(None, release, store, batch, custom_id)


def release(store: Store, batch: Batch, custom_id: str) -> None:
    """Free the holds, after the commit (so the cost lands before the hold goes). A Redis error here must
    not run a stored request again: the holds lapse with their holder's lease."""
    try:
        store.release(batch.id, custom_id, batch.pool if batch.pool_max_pico else "")
    except redis.RedisError as exc:
        log.warning("budget hold of %s/%s not released (%s); it lapses with this chunk's lease", batch.id, custom_id, exc)


def _lease_key(store: Store) -> str:
    """The lease of the chunk job this process runs: a hold counts only while its holder is alive."""
    from rq import get_current_job

    job = get_current_job()
    return store.keys.lease(job.id) if job is not None else ""
