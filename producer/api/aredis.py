"""The server's asyncio Redis client, made in its event loop on first use (one per `otb serve` process).

The hot paths of a call (the key's lookup, its one transaction, waiting for its result, counting its
spend) talk to Redis with it, so a round trip suspends one request instead of holding a thread or the
event loop. Sentinel URLs work as everywhere (the master is asked of the Sentinels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff

from worker.connection import BACKOFF_BASE, BACKOFF_CAP, SENTINEL_TIMEOUT, SERVE_RETRIES, SentinelURL, is_sentinel

CONNECTIONS = 128  # per server process; past it a request waits for one. No call holds one while it waits
# (batchends.py reads every end for them), so a few suffice for thousands of calls; each new one costs a
# handshake of four round trips and redis-py's package-version lookup (~0.5 ms), so a burst of 1,000 calls
# must not open 1,000 of them.
SOCKET_TIMEOUT = 15.0  # longer than any blocked read made with it (calls.BLOCK_S)


class AsyncRedis:
    """Lazily made, because an asyncio client belongs to the loop it was first used in (uvicorn's).
    `make` replaces the client of REDIS_URL (`otb serve --emulator`: the embedded Redis)."""

    def __init__(self, url: str, make: Callable[[], aioredis.Redis] | None = None) -> None:
        self.make = make or (lambda: async_client(url))
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = self.make()
        return self._client


def async_client(url: str) -> aioredis.Redis:
    """An asyncio client for REDIS_URL, Sentinel URLs included. The pool blocks instead of failing when
    every connection is busy (redis-py's default pool raises MaxConnectionsError past 100)."""
    if not is_sentinel(url):
        return aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=CONNECTIONS, timeout=None, socket_timeout=SOCKET_TIMEOUT, **patience()))
    parsed = SentinelURL.parse(url)
    tls = {k: v for k, v in parsed.master_kwargs.items() if k.startswith("ssl")} | ({"ssl": True} if parsed.tls else {})
    sentinels = AsyncSentinel(list(parsed.sentinels), sentinel_kwargs={**parsed.sentinel_login, **tls,
                                                                       "socket_timeout": SENTINEL_TIMEOUT})
    master: aioredis.Redis = sentinels.master_for(parsed.service, max_connections=CONNECTIONS,
                                                  socket_timeout=SOCKET_TIMEOUT, **parsed.master_kwargs, **patience())
    return master


def patience() -> dict[str, Any]:
    """As the server's blocking client (worker/connection.py, SERVE_RETRIES): a Redis that went away is
    waited for about 30 s, then the request answers 503 (errors.py), which the SDKs retry."""
    return {"retry": Retry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), SERVE_RETRIES),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
