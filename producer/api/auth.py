"""The FastAPI side of keys: authentication and each key's request rate, as one dependency.

Keys and tenants themselves live in tenants.py (no FastAPI), which `otb keys` uses too. The lookup
runs on the event loop with the asyncio client: one read of the tenant's record per request, so a key
revoked on one machine is refused by every server at once (only key -> tenant name, which never changes,
is remembered). Only a key with an --rpm cap takes a thread, for the shared limiter.
"""

from __future__ import annotations

from collections import OrderedDict

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from worker.keys import Keys
from worker.ratelimit import Limiter, RateLimits, Scope

from .aredis import AsyncRedis
from .codec import text, text_hash
from .errors import ApiError
from .tenants import NO_AUTH_TENANT, KeyStore, Tenant, digest, rate_scope

__all__ = ["Gate", "KeyStore", "Tenant", "current_tenant"]


# -- the FastAPI dependency ------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="An API key from `otb keys create NAME`.")


class Gate:
    """Authentication and the per-key request rate, as one dependency: `Depends(gate)` gives the Tenant."""

    def __init__(self, redis: AsyncRedis, keys: Keys, limiter: Limiter, *, no_auth: bool = False) -> None:
        self.redis, self.keys, self.limiter, self.no_auth = redis, keys, limiter, no_auth
        self.names = KeyNames()

    async def __call__(self, credentials: HTTPAuthorizationCredentials | None) -> Tenant:
        if self.no_auth:
            return Tenant(NO_AUTH_TENANT)
        tenant = await self.lookup(credentials.credentials) if credentials else None
        if tenant is None:
            raise ApiError(401, _unauthorized(credentials), code="invalid_api_key")
        if tenant.rpm:
            await run_in_threadpool(self._admit, tenant)
        return tenant

    async def lookup(self, key: str) -> Tenant | None:
        """The live tenant of `key`, or None for an unknown or revoked key (as KeyStore.lookup).

        Which tenant a key names never changes, so that much is remembered (only for keys that were
        found: a key created later works at once); whether the key is still the tenant's live key is
        read from the tenant's record on every request, so a revoked key is refused at once."""
        sha = digest(key)
        name = self.names.get(sha)
        if name is None:
            found = await self.redis.client.get(self.keys.api_key(sha))
            if found is None:
                return None
            name = text(found)
        record = text_hash(await self.redis.client.hgetall(self.keys.tenant(name)))
        tenant = Tenant.live(name, record, sha)
        if tenant is not None:
            self.names.put(sha, name)
        return tenant

    def _admit(self, tenant: Tenant) -> None:
        wait = self.limiter.try_acquire(Scope(rate_scope(tenant.name), RateLimits(rpm=tenant.rpm)), 0, 0)
        if wait > 0:
            raise ApiError(429, f"Rate limit reached for key {tenant.name!r}: {tenant.rpm} requests per minute. "
                           f"Please try again in {_duration(wait)}.", code="rate_limit_exceeded",
                           type="requests", retry_after=wait)


class KeyNames:
    """SHA-256 of a key -> its tenant's name, for keys seen live; the oldest go past `size` entries."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._names: OrderedDict[str, str] = OrderedDict()

    def get(self, sha: str) -> str | None:
        return self._names.get(sha)

    def put(self, sha: str, name: str) -> None:
        self._names[sha] = name
        self._names.move_to_end(sha)
        while len(self._names) > self.size:
            self._names.popitem(last=False)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _unauthorized(credentials: HTTPAuthorizationCredentials | None) -> str:
    """OpenAI's 401 wording, without echoing the key (not even masked: keys never reach a log)."""
    if credentials is None:
        return ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Create one with `otb keys create NAME`.")
    return "Incorrect API key provided. Ask the server's operator for a key (`otb keys create NAME`)."


async def current_tenant(request: Request,
                         credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Tenant:
    """The dependency every /v1 route takes: the caller's Tenant, or a 401/429 in OpenAI's shape."""
    gate: Gate = request.app.state.gate
    return await gate(credentials)
