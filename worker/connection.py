"""Redis clients that ride out a Redis restart, and a start-up check of how Redis keeps our data.

Every command retries on connection errors with capped exponential backoff for about two minutes,
so a restarting Redis (with AOF on) pauses workers and producers instead of failing their work.
Retried writes are safe: result commits are once-only (HSETNX) and re-runs skip committed requests.
"""

from __future__ import annotations

import ssl

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

RETRIES = 40  # with the backoff below: about two minutes of waiting in all


class TransientRetry(Retry):
    """Retry dropped connections, never a refused login or certificate: those will not heal by waiting.

    (redis-py makes AuthenticationError a ConnectionError, so plain Retry waits minutes on a typo.)
    """

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):  # type: ignore[no-untyped-def]
        def transient(error: Exception) -> bool:
            return not _permanent(error) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, transient, with_failure_count)


def _permanent(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (redis.AuthenticationError, ssl.SSLCertVerificationError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return "certificate verify failed" in str(error)


def connect(url: str) -> redis.Redis:
    """A client for REDIS_URL (`redis://`, `rediss://`, `unix://`; user:password and ACLs work)."""
    return redis.Redis.from_url(
        url,
        retry=TransientRetry(ExponentialBackoff(cap=4.0, base=0.05), RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=15,
        socket_keepalive=True,
    )


def mask_url(url: str) -> str:
    """REDIS_URL for messages and logs: everything before the host (user and password) masked.

    The credentials end at the *last* `@` (as URL parsers read it), so a password that itself holds
    an `@` is masked whole: `redis://:p@ss@host` -> `redis://***@host`.
    """
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def durability_warnings(conn: redis.Redis) -> list[str]:
    """What could make Redis lose our queue or results; empty when CONFIG is not allowed (managed Redis)."""
    try:
        config = conn.config_get("maxmemory-policy") | conn.config_get("appendonly") | conn.config_get("save")
    except redis.ResponseError:
        return []
    warnings = []
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is {policy!r}: it may evict queued jobs and results; "
                        "set maxmemory-policy noeviction")
    if config.get("appendonly") != "yes" and not config.get("save"):
        warnings.append("Redis keeps nothing on disk (appendonly no, no save points): a Redis restart loses "
                        "every batch; run it with --appendonly yes")
    return warnings
