"""API keys and tenants: who is calling (no FastAPI here, so `otb keys` and `otb --help` start fast).

A key is `sk-otb-` and 43 random URL-safe characters, printed once by `otb keys create NAME`.
Redis keeps only its SHA-256 (a random 256-bit key needs no slow hash: nobody can guess one from
its digest, and a fast lookup keeps a flood of bad keys from slowing good ones). The key's NAME is
the tenant: every file and batch is stored under the tenant's prefix and checked on every read.

Nothing that decides access is cached in the server: a key revoked on one machine is refused by every
server at once (the server remembers only which tenant a key names, and reads the tenant's record each time).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from worker import clock
from worker.errors import ConfigError
from worker.keys import Keys
from worker.money import from_pico

from .codec import Fields, text, text_hash

KEY_PREFIX = "sk-otb-"
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a Redis key part and a report tag: no ':'
SPENT = "spent_pico"  # a tenant hash field: its spend, added by every commit of its batches and calls (their
# pool: lua/commit.lua), kept when its key is rotated
WEBHOOKS_FAILED = "webhooks_failed"  # a tenant hash field: webhook events given up (producer/api/webhook_delivery.py)
from . import NO_AUTH_TENANT  # noqa: E402  (re-exported: its home is the package, for `otb --help`)


def rate_scope(tenant: str) -> str:
    """The name of a tenant's request bucket in worker/ratelimit.py (`{p}:rl:tenant:<name>`)."""
    return f"tenant:{tenant}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Tenant:
    """The caller, as the key's record says: its name scopes everything it sees."""

    name: str
    rpm: int = 0  # requests per minute across all servers (0: no cap)
    max_cost: Decimal | None = None  # USD over all its batches and calls (their shared pool, worker/budget.py)
    webhook_url: str | None = None
    spent_pico: int = field(default=0, compare=False)  # its committed spend when its record was read

    @classmethod
    def of(cls, name: str, record: dict[str, str]) -> "Tenant":
        return cls(name=name, rpm=int(record.get("rpm") or 0),
                   max_cost=Decimal(record["max_cost"]) if record.get("max_cost") else None,
                   webhook_url=record.get("webhook_url") or None, spent_pico=int(record.get(SPENT) or 0))

    @classmethod
    def live(cls, name: str, record: dict[str, str], sha: str) -> "Tenant | None":
        """The tenant whose record still holds the key with this SHA-256; None if it was revoked
        between reading the key's name and reading the record."""
        if not secrets.compare_digest(record.get("key_sha256", ""), sha):
            return None
        return cls.of(name, record)


@dataclass(frozen=True)
class NewKey:
    """What `otb keys create` prints once: the key (and webhook secret) are never shown again."""

    name: str
    key: str
    created_at: int
    rpm: int
    max_cost: Decimal | None
    webhook_url: str | None
    webhook_secret: str | None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "created_at": self.created_at, "rpm": self.rpm,
                "max_cost": None if self.max_cost is None else str(self.max_cost),
                "webhook_url": self.webhook_url, "webhook_secret": self.webhook_secret}


class KeyStore:
    """Create, list, revoke and look up keys in Redis (sync: the CLI and the server's threads share it)."""

    def __init__(self, conn: redis.Redis, prefix: str = "otb") -> None:
        self.conn, self.keys = conn, Keys(prefix)

    def create(self, name: str, *, rpm: int = 0, max_cost: Decimal | None = None,
               webhook_url: str | None = None) -> NewKey:
        """A new key for NAME. A live key of that name is refused; a revoked one's name may be reused
        (that is how a key is rotated: the tenant, its files and batches stay the same)."""
        check_name(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() if webhook_url else None
        created = NewKey(name, key, int(clock.now()), rpm, max_cost, check_webhook_url(webhook_url), secret)
        sha = digest(key)
        record: Fields = {"key_sha256": sha, "created_at": str(created.created_at), "rpm": str(rpm),
                          "max_cost": "" if max_cost is None else str(max_cost),
                          "webhook_url": created.webhook_url or "", "webhook_secret": secret or "", "revoked_at": ""}
        with self.conn.pipeline() as pipe:
            pipe.watch(self.keys.tenant(name))
            if pipe.hget(self.keys.tenant(name), "key_sha256"):
                raise ConfigError(f"a key named {name!r} exists: revoke it first (otb keys revoke {name})")
            pipe.multi()
            pipe.hset(self.keys.tenant(name), mapping=record)
            pipe.set(self.keys.api_key(sha), name)
            pipe.sadd(self.keys.tenants, name)
            pipe.execute()
        return created

    def revoke(self, name: str) -> None:
        """Refuse NAME's key from now on, on every server; its files and batches stay."""
        with self.conn.pipeline() as pipe:
            pipe.watch(self.keys.tenant(name))
            sha = pipe.hget(self.keys.tenant(name), "key_sha256")
            if not sha:
                raise ConfigError(f"no live key named {name!r} (otb keys list)")
            pipe.multi()
            pipe.delete(self.keys.api_key(text(sha)))
            pipe.hset(self.keys.tenant(name), mapping={"key_sha256": "", "revoked_at": str(int(clock.now()))})
            pipe.execute()

    def list(self) -> list[dict[str, Any]]:
        """Every key's public facts (never a hash or a secret), by name."""
        names = sorted(text(n) for n in self.conn.smembers(self.keys.tenants))
        with self.conn.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.tenant(name))
            records = pipe.execute()
        return [_public(name, text_hash(rec)) for name, rec in zip(names, records) if rec]

    def spent_pico(self, name: str) -> int:
        """What NAME's batches and calls have cost so far (committed results), in pico-USD: its --max-cost
        is checked on it."""
        return int(self.conn.hget(self.keys.tenant(name), SPENT) or 0)

    def add_spend(self, name: str, pico: int) -> None:
        if pico:
            self.conn.hincrby(self.keys.tenant(name), SPENT, pico)

    def lookup(self, key: str) -> Tenant | None:
        """The live tenant of `key`, or None for an unknown or revoked key."""
        sha = digest(key)
        name = self.conn.get(self.keys.api_key(sha))
        if name is None:
            return None
        return Tenant.live(text(name), text_hash(self.conn.hgetall(self.keys.tenant(text(name)))), sha)


def _public(name: str, record: dict[str, str]) -> dict[str, Any]:
    revoked = record.get("revoked_at") or None
    return {"name": name, "status": "revoked" if revoked else "active", "created_at": int(record.get("created_at") or 0),
            "revoked_at": int(revoked) if revoked else None, "rpm": int(record.get("rpm") or 0),
            "max_cost": record.get("max_cost") or None,
            "spent": format(from_pico(int(record.get(SPENT) or 0)), "f"),  # USD, exact: committed results, live
            "webhook_url": shown_url(record.get("webhook_url") or None),
            "webhooks_failed": int(record.get(WEBHOOKS_FAILED) or 0)}


def shown_url(url: str | None) -> str | None:
    """A webhook URL as `otb keys list` shows it: credentials and query values (where receivers put
    their tokens) masked, since the list is for looking at, not for copying secrets out of Redis."""
    if not url:
        return None
    parts = urlsplit(url)
    netloc = f"***@{parts.netloc.rpartition('@')[2]}" if "@" in parts.netloc else parts.netloc
    query = "&".join(f"{k}=***" if eq else k for k, eq, _ in (p.partition("=") for p in parts.query.split("&") if p))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def check_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise ConfigError(f"key name {name[:80]!r} is not allowed: 1 to 64 letters, digits, '_', '.' or '-', "
                          "starting with a letter or digit (it names the tenant in reports)")
    return name


def check_webhook_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--webhook-url must be an http:// or https:// URL, got {url[:200]!r}")
    return url


def parse_usd(text: str) -> Decimal:
    """A positive dollar amount, exact (Decimal), for --max-cost."""
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value <= 0:
        raise ConfigError(f"--max-cost must be a positive amount in USD, e.g. 25 or 0.50, got {text!r}")
    return value


def is_loopback(host: str) -> bool:
    """Only this machine can reach it: the one place `otb serve --no-auth` is allowed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
