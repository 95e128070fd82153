"""The whole retry policy, pure: which failures to retry, and how long to wait before the next try.

Defaults follow the Anthropic SDK: trust a provider's Retry-After up to 60 s, otherwise
`min(0.5 * 2**n, 8 s)` with jitter. A provider asking for longer than `max_wait` (a daily quota,
say) is not slept on: the request ends with that error instead of holding a worker.
"""

from __future__ import annotations

import email.utils
from datetime import datetime
import random
from collections.abc import Mapping
from dataclasses import dataclass

from . import clock
from .errors import RequestFailed


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


def retry_after_from_headers(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, else `retry-after` (seconds or HTTP date); None if absent or bad."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(parsed.timestamp() - (now if now is not None else clock.now()), 0.0)


def parse_duration(value: str) -> float | None:
    """A protobuf Duration string such as "27s" or "3.700s" (Gemini RetryInfo.retryDelay)."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        return float(value[:-1])
    except ValueError:
        return None


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
            waits.append(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now)
        except ValueError:
            continue
    return max(max(waits), 0.0) if waits else None
