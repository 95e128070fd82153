"""The whole retry policy, pure: which failures to retry, and how long to wait before the next try.

Defaults follow the Anthropic SDK: trust a provider's Retry-After up to 60 s, otherwise
`min(0.5 * 2**n, 8 s)` with jitter. A provider asking for longer than `max_wait` (a daily quota,
say) is not slept on: the request ends with that error instead of holding a worker.

The wait itself goes through `RetryPolicy.pause`, the one place backoff sleeps; `instant()` makes it
return at once (recording what it would have slept), so tests never sleep out a real backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from . import clock
from .errors import RequestFailed

_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_wait: float = 60.0  # longest Retry-After we honour by sleeping

    def should_retry(self, error: RequestFailed, attempt: int) -> bool:
        """`attempt` counts from 1 (the try that just failed)."""
        if not error.retryable or attempt >= self.max_attempts:
            return False
        return error.retry_after is None or error.retry_after <= self.max_wait

    def delay(self, attempt: int, retry_after: float | None = None, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed try number `attempt` (from 1)."""
        if retry_after is not None and 0 <= retry_after <= self.max_wait:
            return retry_after
        backoff = min(self.base_delay * 2.0 ** (attempt - 1), self.max_delay)
        jitter = 1 - 0.25 * (rng or random).random()  # up to 25% shorter, never longer than the cap
        return backoff * jitter

    async def pause(self, attempt: int, retry_after: float | None = None) -> float:
        """Sleep `delay(attempt, retry_after)` and return it: the one place a retry waits."""
        seconds = self.delay(attempt, retry_after)
        await _sleep(seconds)
        return seconds


@contextlib.contextmanager
def instant() -> Iterator[list[float]]:
    """Retry pauses return at once in this process, for tests; yields the seconds they would have slept."""
    global _sleep
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    saved, _sleep = _sleep, record
    try:
        yield slept
    finally:
        _sleep = saved


def retry_after_from_headers(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, else `retry-after` (seconds or HTTP date); None if absent or bad."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    seconds = _seconds(ms, 1000.0) if ms is not None else None
    if seconds is not None:
        return seconds
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": an HTTP date is UTC, not the machine's zone
        parsed = parsed.replace(tzinfo=timezone.utc)
    return max(parsed.timestamp() - (now if now is not None else clock.now()), 0.0)


def _seconds(value: str, per_second: float = 1.0) -> float | None:
    """A header's number of seconds (or ms), at least 0; None unless a finite number ("inf" and "nan"
    would otherwise park a request forever or never retry it)."""
    try:
        seconds = float(value) / per_second
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def parse_duration(value: str) -> float | None:
    """A protobuf Duration string such as "27s" or "3.700s" (Gemini RetryInfo.retryDelay)."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    return _seconds(value[:-1])


def ratelimit_reset_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds until the latest `anthropic-ratelimit-*-reset` (RFC 3339) among the limits at zero."""
    lowered = {k.lower(): v for k, v in headers.items()}
    now = clock.now() if now is None else now
    waits = []
    for name, value in lowered.items():
        if not (name.startswith("anthropic-ratelimit-") and name.endswith("-reset")):
            continue
        remaining = lowered.get(name.removesuffix("-reset") + "-remaining")
        if remaining is not None and remaining.strip() not in ("0", ""):
            continue  # that limit is not the one hit
        try:
            reset = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            continue
        waits.append((reset if reset.tzinfo else reset.replace(tzinfo=timezone.utc)).timestamp() - now)
    return max(max(waits), 0.0) if waits else None
