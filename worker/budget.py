"""--max-cost while calls are in flight: hold each call's worst case before sending, release it after.

A batch with a budget must never pass it, yet a batch that fits must not be stopped: so a call holds
its worst case (its input and all of its output limit) while in flight, a call that would fit once
the holds in flight settle waits for them, and only a call whose worst case added to what was
already spent passes the budget is refused (`budget_exceeded`, without being sent). The holds live
in Redis (`otb:batch:{id}:reserved`), shared by every worker, and lapse with their holder's lease.
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
    """Hold `worst` of the batch budget for this call, waiting while calls in flight hold the rest.

    Raises BudgetExceeded when the call can no longer fit, BatchClosed when the batch closes meanwhile.
    """
    assert batch.max_cost_pico
    hold_for = (settings.request_timeout + settings.retry_max_wait) * settings.max_attempts + 60
    lease, pause = _lease_key(store), 0.02
    while True:
        held = await asyncio.to_thread(store.reserve, batch.id, custom_id, to_pico(worst), batch.max_cost_pico,
                                       lease=lease, hold_for=hold_for)
        if held == 1:
            return
        if held == 0:
            raise BudgetExceeded(f"not sent: the cost so far plus this request's worst case (${worst}) "
                                 f"would pass the batch budget of ${from_pico(batch.max_cost_pico)}")
        closed = batch.gate.closed_code()
        if closed:
            raise BatchClosed(closed)
        await asyncio.sleep(pause)  # calls in flight hold the rest of the budget: wait for them to settle
        pause = min(pause * 2, 0.5)


def release(store: Store, batch_id: str, custom_id: str) -> None:
    """Free the hold, after the commit (so the cost lands before the hold goes). A Redis error here must
    not run a stored request again: the hold lapses with its holder's lease."""
    try:
        store.release(batch_id, custom_id)
    except redis.RedisError as exc:
        log.warning("budget hold of %s/%s not released (%s); it lapses with this chunk's lease", batch_id, custom_id, exc)


def _lease_key(store: Store) -> str:
    """The lease of the chunk job this process runs: a hold counts only while its holder is alive."""
    from rq import get_current_job

    job = get_current_job()
    return store.keys.lease(job.id) if job is not None else ""
