"""Batch events for a tenant's webhook: announced once, kept in Redis, signed per Standard Webhooks.

A key made with `otb keys create NAME --webhook-url URL` gets OpenAI's `batch.completed`,
`batch.failed`, `batch.expired` and `batch.cancelled` events. `announce()` records one event per
batch end (a finalizer that runs twice after a crash announces the same event, which is kept once)
and puts it on the delivery schedule; every `otb serve` delivers from there
(producer/api/webhook_delivery.py). The URL and the secret are read from the tenant's record at
each attempt, never copied into the event: a revoked key stops its deliveries at once.

No FastAPI or httpx here: the batches code and `otb` commands import this cheaply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Callable

import redis

from worker import clock
from worker.keys import Keys
from worker.settings import Settings

from .codec import Fields, text, text_hash

STATUSES = ("completed", "failed", "expired", "cancelled")  # a batch's final OpenAI statuses
WINDOW = 24 * 3600  # seconds after its event an undelivered event is given up
LONGEST_WAIT = 3600.0  # seconds: the backoff's cap
KEEP = 7 * 24 * 3600  # seconds an event's record (and its once-only mark) is kept for operators


def retry_delay(failures: int, first: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after `failures` failed ones: `first`, doubled per failure up
    to an hour, with equal jitter (half fixed, half random) so receivers that come back are not hit
    by every server at the same instant. The one schedule of webhook retries."""
    wait = min(first * 2 ** max(failures - 1, 0), LONGEST_WAIT)
    return wait / 2 + wait / 2 * rand()


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of "id.timestamp.body", keyed
    with the secret's bytes (base64 after `whsec_`), as the Standard Webhooks scheme says."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt: the id is the event's (stable across retries), the time this attempt's."""
    return {"content-type": "application/json", "webhook-id": event_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, event_id, timestamp, body)}


def event_body(event_id: str, batch_id: str, status: str, created_at: int) -> bytes:
    """OpenAI's event object, as sent (the same bytes at every attempt)."""
    event = {"id": event_id, "object": "event", "type": f"batch.{status}", "created_at": created_at,
             "data": {"id": batch_id}}
    return json.dumps(event, separators=(",", ":")).encode()


def announce(conn: redis.Redis, settings_or_prefix: Settings | str, tenant: str, batch_id: str, status: str) -> None:
    """Record the event of `batch_id` reaching `status` for `tenant`, once, and schedule its delivery.

    Nothing happens for a tenant without a webhook URL or with a revoked key. Announcing the same
    batch and status again changes nothing (one event, one delivery).
    """
    if status not in STATUSES:
        raise ValueError(f"a batch event is one of {', '.join(STATUSES)}, not {status!r}")
    keys = Keys(settings_or_prefix if isinstance(settings_or_prefix, str) else settings_or_prefix.key_prefix)
    record = text_hash(conn.hgetall(keys.tenant(tenant)))
    if not record.get("webhook_url") or not record.get("key_sha256"):
        return
    once = keys.webhook_once(batch_id, status)
    event_id = "evt_" + secrets.token_hex(16)
    created = int(clock.now())
    fields: Fields = {"tenant": tenant, "type": f"batch.{status}", "batch": batch_id, "created_at": str(created),
              "body": event_body(event_id, batch_id, status, created), "state": "pending", "attempts": "0",
              "last": ""}
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(once)
                if pipe.exists(once):
                    return
                pipe.multi()
                pipe.set(once, event_id, ex=KEEP)
                pipe.hset(keys.webhook(event_id), mapping=fields)
                pipe.expire(keys.webhook(event_id), KEEP)
                pipe.zadd(keys.webhooks_due, {event_id: clock.now()})
                pipe.execute()
                return
            except redis.WatchError:
                continue  # another process announced it meanwhile: the next round sees its mark


def announced(conn: redis.Redis, prefix: str, batch_id: str, status: str) -> dict[str, str] | None:
    """The event recorded for that batch end (its fields, with `id`), or None: for operators and tests."""
    keys = Keys(prefix)
    event_id = conn.get(keys.webhook_once(batch_id, status))
    if event_id is None:
        return None
    record = text_hash(conn.hgetall(keys.webhook(text(event_id))))
    return {"id": text(event_id), **record} if record else None
