"""The Redis key names of the HTTP API, in one place (to fold into worker/keys.py once it lands).

Tenants are a key prefix: everything a key's tenant owns lives under `{p}:tenant:{name}:`, and every
read also checks the owner recorded in the value, so another tenant's id reads exactly as an
unknown one. API keys themselves are never stored: only their SHA-256.

    {p}:apikey:{sha256}               STRING  the tenant a key belongs to (deleted on revoke)
    {p}:tenant:{name}                 HASH    the tenant: key_sha256, created_at, rpm, max_cost,
                                              webhook_url, webhook_secret, revoked_at
    {p}:tenants                       SET     tenant names (`otb keys list`)
    {p}:tenant:{name}:files           ZSET    the tenant's file ids, all score 0: ids sort by time (cursor pages)
    {p}:tenant:{name}:file:{id}       HASH    a file's FileObject fields (+ tenant, lines)
    {p}:tenant:{name}:file:{id}:data  LIST    the file's bytes in chunks of up to 1 MiB, in order
    {p}:rl:tenant:{name}              HASH    the key's shared request bucket (`--rpm`, worker/ratelimit.py)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiKeys:
    """Key names under one prefix. Pure: builds strings, never talks to Redis."""

    prefix: str = "otb"

    def api_key(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    def tenant(self, name: str) -> str:
        return f"{self.prefix}:tenant:{name}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    def files(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:files"

    def file(self, tenant: str, file_id: str) -> str:
        return f"{self.tenant(tenant)}:file:{file_id}"

    def file_data(self, tenant: str, file_id: str) -> str:
        return f"{self.file(tenant, file_id)}:data"


def rate_scope(tenant: str) -> str:
    """The name of a tenant's request bucket in worker/ratelimit.py (`{p}:rl:<scope>`)."""
    return f"tenant:{tenant}"
