"""The flex route of one call: ask the provider's flex tier (50%), retry a shed call in flex while the
request's allowance lasts, then send it standard.

Flex is best effort: under load Google sheds flex calls (429/503) and has no fallback of its own. A
shed is the flex tier's capacity, not our quota, so it does not cool the model down for the standard
calls of other workers (upstream's shared cool-down is for 429/529 on our own limits). The allowance
(`Route.flex_for`, from routes.flex_allowance) keeps one more flex call inside the batch's window;
once it is spent, or the provider asks for a wait longer than `retry_max_wait`, the same call goes to
the standard tier with the ordinary retry policy. A 400 from the flex tier (a model flex does not
serve) is not the request's fault: the standard call answers for itself. Every try counts in the
result's `attempts`; the result's `meta.route` and `meta.route_note` say how it ended.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import RequestFailed
from .retry import RetryPolicy
from .routes import Route

if TYPE_CHECKING:
    from .providers.base import UpstreamCall
    from .upstream import Target, Upstream

# Sheds mean no capacity right now: back off longer than for a transient error (1 s doubling to 60 s,
# or the provider's Retry-After when it asks for longer).
FLEX_POLICY = RetryPolicy(max_attempts=1_000_000, base_delay=1.0, max_delay=60.0)


async def flex_then_standard(up: Upstream, to: Target, call: UpstreamCall, need: tuple[int, int],
                             route: Route) -> tuple[dict[str, Any], str | None]:
    """The decoded answer of `call`, from the flex tier if it takes it in time, else from the standard one."""
    flex = to.adapter.flex_call(call, up.settings.flex_timeout)
    if flex is None:
        route.fell_back(f"{to.adapter.NAME} has no flex tier: sent standard")
        return await up.call(to, call, need)
    started, waited, tries = time.monotonic(), 0.0, 0
    while True:
        tries += 1
        try:
            return await up.attempt(to, flex, need)
        except RequestFailed as error:
            why = _give_up(error, up, max(time.monotonic() - started, waited), route.flex_for)
            if why is not None:
                route.fell_back(f"flex {why} after {tries} {'try' if tries == 1 else 'tries'}: sent standard")
                break
            metrics.retried(to.adapter.NAME, f"flex_{error.status_code or error.code}")
            backoff = FLEX_POLICY.delay(tries)  # a Retry-After of a second must not mean a call a second
            waited += await FLEX_POLICY.pause(tries, max(error.retry_after or 0.0, backoff))
    return await up.call(to, call, need)


def _give_up(error: RequestFailed, up: Upstream, spent: float, allowance: float) -> str | None:
    """Why flex is given up on after `error` (None: try flex again). `spent` counts real time, or the
    pauses when they return at once (tests), whichever is more."""
    if error.status_code == 400:
        return f"refused the request ({error.message[:160]})"
    if not error.retryable:
        raise error  # fatal on any tier (a bad key, a body the provider refuses): the request ends here
    if error.retry_after is not None and error.retry_after > up.policy.max_wait:
        return f"asked to wait {error.retry_after:.0f} s"
    if spent >= allowance:
        return f"was unavailable ({error.status_code or error.code}) for {spent:.0f} s"
    return None
