"""Redis clients that ride out a Redis restart, and start-up checks: is Redis there, does it keep our data.

Every command retries on connection errors with capped exponential backoff for about two minutes,
so a restarting Redis (with AOF on) pauses workers and producers instead of failing their work.
Retried writes are safe: result commits are once-only (HSETNX) and re-runs skip committed requests.
That patience is for a Redis that was up and restarts: a Redis that cannot be reached when a
command starts (wrong URL, not running) is said at once by `ensure_reachable`.
"""

from __future__ import annotations

import ssl

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from .errors import ConfigError

RETRIES = 40  # with the backoff below: about two minutes of waiting in all
BACKOFF_CAP, BACKOFF_BASE = 4.0, 0.05
PATIENCE = sum(min(BACKOFF_CAP, BACKOFF_BASE * 2**n) for n in range(RETRIES))  # seconds a restart may take
START_TIMEOUT = 3.0  # seconds to reach Redis at start before saying it cannot be reached


class RedisUnreachable(ConfigError):
    """Redis did not answer when a command started: a wrong URL or a Redis that is not running."""


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


def connect(url: str, *, retries: int = RETRIES) -> redis.Redis:
    """A client for REDIS_URL (`redis://`, `rediss://`, `unix://`; user:password and ACLs work).

    `retries=0` gives a client that fails at once, for a caller that shows its own retrying.
    """
    return redis.Redis.from_url(
        url,
        retry=TransientRetry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), retries),
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


def ensure_reachable(url: str, timeout: float = START_TIMEOUT) -> None:
    """Ping once, without the restart patience; RedisUnreachable names the server (never the password)."""
    probe = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                 retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnreachable(f"cannot reach Redis at {server_of(url, probe)}: {exc}") from exc
    except redis.ResponseError as exc:  # e.g. NOAUTH: the server is there, the login is wrong
        raise RedisUnreachable(f"Redis at {server_of(url, probe)} refused us: {exc}") from exc
    finally:
        probe.close()


def server_of(url: str, client: redis.Redis) -> str:
    """scheme://***@host:port/db (or unix://path) of a client: the URL with its user and password hidden."""
    kw = client.connection_pool.connection_kwargs
    scheme = url.split("://", 1)[0]
    login = "***@" if kw.get("username") or kw.get("password") else ""
    where = kw["path"] if "path" in kw else f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"
    return f"{scheme}://{login}{where}"


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
