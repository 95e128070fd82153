"""The retry policy (worker/retry.py), pure: what is retried, how long each wait is, and the headers read."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from worker import retry
from worker.errors import InvalidRequest, TransportError, upstream_error
from worker.providers import anthropic, google
from worker.retry import RetryPolicy, parse_duration, ratelimit_reset_after, retry_after_from_headers

NOW = 1_796_212_800.0  # 2026-12-02T12:00:00Z


def overloaded(retry_after: float | None = None):  # type: ignore[no-untyped-def]
    return upstream_error("anthropic", 529, "overloaded_error", "busy", retry_after=retry_after)


# -- what is retried --------------------------------------------------------------------------------
def test_retryable_errors_are_retried_until_the_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(TransportError("reset"), n) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_fatal_errors_are_never_retried() -> None:
    assert not RetryPolicy().should_retry(InvalidRequest("bad body"), 1)
    assert not RetryPolicy().should_retry(upstream_error("google", 400, "INVALID_ARGUMENT", "no"), 1)


def test_a_wait_longer_than_max_wait_is_not_slept_on() -> None:
    policy = RetryPolicy(max_wait=60.0)
    assert policy.should_retry(overloaded(60.0), 1)
    assert not policy.should_retry(overloaded(60.5), 1)  # a daily quota: the caller parks it instead
    assert policy.should_retry(overloaded(None), 1)


# -- how long -----------------------------------------------------------------------------------------
def test_a_providers_retry_after_is_the_wait() -> None:
    assert RetryPolicy().delay(1, 2.5) == 2.5
    assert RetryPolicy().delay(3, 0.0) == 0.0


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens_it() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0)
    rng = random.Random(7)
    for attempt, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (12, 8.0)]:
        waits = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert all(0.75 * full <= w <= full for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > 0.1 * full  # it is jittered, so workers do not retry in step


def test_backoff_replaces_a_retry_after_outside_what_we_honour() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, max_wait=60.0)
    rng = random.Random(1)
    assert 0.75 <= policy.delay(1, -1.0, rng=rng) <= 1.0
    assert 1.5 <= policy.delay(2, 3600.0, rng=rng) <= 2.0


def test_pause_sleeps_the_delay_through_the_one_patchable_sleep() -> None:
    policy = RetryPolicy(base_delay=4.0, max_delay=8.0)
    with retry.instant() as slept:
        started = time.monotonic()
        waits = [asyncio.run(policy.pause(n, after)) for n, after in [(1, 30.0), (2, None), (3, None)]]
        took = time.monotonic() - started
    assert slept == waits and waits[0] == 30.0 and 6.0 <= waits[1] <= 8.0 and 6.0 <= waits[2] <= 8.0
    assert took < 30.0  # what it would have slept was recorded, not slept (over 44 s in all)


def test_pause_really_sleeps_outside_instant() -> None:
    waited = asyncio.run(RetryPolicy().pause(1, 0.01))
    assert waited == 0.01


# -- Retry-After and friends ----------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "27"}, 27.0),
    ({"Retry-After": "1.5"}, 1.5),  # names are case-insensitive
    ({"retry-after-ms": "2500", "retry-after": "9"}, 2.5),  # milliseconds win
    ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # a bad ms value falls back to seconds
    ({"retry-after": "-5"}, 0.0),
    ({"retry-after": "Wed, 02 Dec 2026 12:00:30 GMT"}, 30.0),
    ({"retry-after": "Wed, 02 Dec 2026 12:00:30 -0000"}, 30.0),  # no zone given: UTC, not the machine's
    ({"retry-after": "Wed, 02 Dec 2026 11:00:00 GMT"}, 0.0),  # already past
    ({}, None),
    ({"retry-after": "tomorrow"}, None),
    ({"retry-after": "inf"}, None),  # not finite: never "wait forever", never "do not retry"
    ({"retry-after": "nan"}, None),
    ({"retry-after": "1e999"}, None),
    ({"retry-after-ms": "nan"}, None),
])
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_from_headers(headers, now=NOW) == seconds


def test_a_zoneless_http_date_reads_as_utc_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert retry_after_from_headers({"retry-after": "Wed, 02 Dec 2026 12:00:30 -0000"}, now=NOW) == 30.0
        assert ratelimit_reset_after({"anthropic-ratelimit-requests-reset": "2026-12-02T12:00:10"}, now=NOW) == 10.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_non_finite_retry_after_leaves_a_retryable_error_retried() -> None:
    """Before: "inf" parked the request until forever and "nan" made a 529 final."""
    for value in ("inf", "nan"):
        error = anthropic.parse_error(529, {"retry-after": value}, b'{"error": {"type": "overloaded_error"}}')
        assert error.retry_after is None and RetryPolicy().should_retry(error, 1)


@pytest.mark.parametrize(("value", "seconds"), [("27s", 27.0), ("3.700s", 3.7), ("0s", 0.0), ("27", None),
                                                ("soons", None), ("infs", None), (42, None)])
def test_protobuf_durations(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds  # type: ignore[arg-type]


def test_gemini_retry_info_beats_the_header() -> None:
    body = (b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": '
            b'[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]}}')
    assert google.parse_error(429, {"retry-after": "3"}, body).retry_after == 12.0


def test_ratelimit_reset_is_read_only_from_the_limits_at_zero() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-12-02T12:00:20Z",
        "anthropic-ratelimit-tokens-remaining": "5000",
        "anthropic-ratelimit-tokens-reset": "2026-12-02T12:05:00Z",  # not the limit that was hit
        "anthropic-ratelimit-input-tokens-reset": "2026-12-02T12:00:40+00:00",  # no remaining header: counts
    }
    assert ratelimit_reset_after(headers, now=NOW) == 40.0
    assert ratelimit_reset_after({"anthropic-ratelimit-requests-reset": "2026-12-02T11:00:00Z"}, now=NOW) == 0.0
    assert ratelimit_reset_after({"anthropic-ratelimit-requests-reset": "2026-12-02T12:00:10"}, now=NOW) == 10.0
    assert ratelimit_reset_after({"anthropic-ratelimit-requests-reset": "later"}, now=NOW) is None
    assert ratelimit_reset_after({}, now=NOW) is None
