"""The FastAPI side of keys: authentication and each key's request rate, as one dependency.

Keys and tenants themselves live in tenants.py (no FastAPI), which `otb keys` uses too. The lookup
runs on the event loop with the asyncio client (two reads; nothing cached, so a key revoked on one
machine is refused by every server at once); only a key with an --rpm cap takes a thread for the
shared limiter.
"""

from __future__ import annotations

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
        """The live tenant of `key`, or None for an unknown or revoked key (as KeyStore.lookup)."""
        sha = digest(key)
        name = await self.redis.client.get(self.keys.api_key(sha))
        if name is None:
            return None
        record = text_hash(await self.redis.client.hgetall(self.keys.tenant(text(name))))
        return Tenant.live(text(name), record, sha)

    def _admit(self, tenant: Tenant) -> None:
        wait = self.limiter.try_acquire(Scope(rate_scope(tenant.name), RateLimits(rpm=tenant.rpm)), 0, 0)
        if wait > 0:
            raise ApiError(429, f"Rate limit reached for key {tenant.name!r}: {tenant.rpm} requests per minute. "
                           f"Please try again in {_duration(wait)}.", code="rate_limit_exceeded",
                           type="requests", retry_after=wait)


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
