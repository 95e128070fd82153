"""The delivery of webhook events: a loop in every `otb serve`, sharing one schedule in Redis.

Events wait in a sorted set by their next attempt time (producer/api/webhooks.py puts them there).
A poller takes the due ones with a lease (worker/lua/take_due.lua moves each one's score to the end
of the lease in the same step), so two servers never send the same attempt at once, and an event
whose server died mid-attempt comes due again when the lease ends. Sender threads POST each one,
signed, and settle it: delivered on a 2xx; on anything else (redirects are not followed) retried
after `retry_delay()` until 24 h after the event, then given up: a WARNING line and the tenant's
`webhooks_failed` count (`otb keys list`). A 410 Gone stops the event's retries at once, and a
revoked key (or one rotated without a webhook URL) drops its events without sending them.

Each attempt counts itself on the event (`taken`) and settles only if no later attempt has taken
the event since, so a server whose lease ran out cannot undo what the next one decided. Delivery is
at least once: the receiver tells a repeat by its `webhook-id`. The secret is never logged, and the
URL only by its host (a URL may carry a token).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from worker import clock
from worker.keys import Keys
from worker.scripts import Scripts
from worker.settings import Settings

from .codec import Fields, binary, text, text_hash
from .tenants import WEBHOOKS_FAILED
from .webhooks import WINDOW, retry_delay, signed_headers

log = logging.getLogger("otb.webhooks")

TIMEOUT = 10.0  # seconds for each of connect, send and the receiver's answer
LEASE = 60.0  # seconds an attempt holds its event: more than the longest attempt (3 x TIMEOUT)
SENDERS = 8  # attempts in flight per server: a slow receiver holds one, not the others
IDLE = 1.0  # the longest the poller sleeps: an event announced by another process waits this long at most
USER_AGENT = "opentoken-batch-webhooks/1"


class Deliverer:
    """Takes due events from the shared schedule and sends them; `start()` / `stop()` run it in threads.

    `take()` and `attempt()` are the loop's two steps; `run_due()` runs them in the caller's thread
    (tests and one-off runs).
    """

    def __init__(self, conn: redis.Redis, settings: Settings, *, transport: httpx.BaseTransport | None = None,
                 senders: int = SENDERS, rand: Callable[[], float] = random.random) -> None:
        self.conn, self.keys = conn, Keys(settings.key_prefix)
        self.first_retry = settings.webhook_retry_ms / 1000
        self.senders, self.rand = senders, rand
        self._take_due = Scripts(conn).take_due
        self.http = httpx.Client(timeout=TIMEOUT, follow_redirects=False, transport=transport,
                                 headers={"user-agent": USER_AGENT})
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping, self._wake = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._threads: list[threading.Thread] = []

    # -- the two steps ---------------------------------------------------------------------------
    def take(self, limit: int) -> tuple[list[str], float | None]:
        """Up to `limit` due event ids, each now held for LEASE seconds, and the schedule's next time."""
        now = clock.now()
        first, *taken = self._take_due(schedule=self.keys.webhooks_due, now=repr(now), lease_until=repr(now + LEASE),
                                       limit=limit)
        return [text(t) for t in taken], None if first is None else float(first)

    def attempt(self, event_id: str) -> str:
        """One attempt at a taken event; returns the state it leaves: pending (a retry is scheduled),
        delivered, failed (given up), dropped (key revoked), or superseded / lost (nothing to do)."""
        loaded = self._load(event_id)
        if isinstance(loaded, str):
            return loaded
        taken, fields, body = loaded
        tenant = text_hash(self.conn.hgetall(self.keys.tenant(fields["tenant"])))
        url, secret = tenant.get("webhook_url", ""), tenant.get("webhook_secret", "")
        attempts, deadline = int(fields.get("attempts") or 0), int(fields["created_at"]) + WINDOW
        about = f"webhook {event_id} ({fields['type']} of {fields['batch']}) for tenant {fields['tenant']}"
        if not tenant.get("key_sha256") or not url or not secret:
            log.info("%s dropped: the key was revoked (or has no webhook URL now)", about)
            return self._settle(event_id, taken, "dropped", "key revoked", fields)
        if clock.now() > deadline:
            return self._give_up(event_id, taken, f"not sent within {WINDOW // 3600} h", fields, about, url)
        status, last = self._post(url, secret, event_id, body)
        fields["attempts"] = str(attempts + 1)
        if status is not None and 200 <= status < 300:
            return self._settle(event_id, taken, "delivered", last, fields)
        if status == 410:
            return self._give_up(event_id, taken, "HTTP 410 Gone (the receiver wants no more)", fields, about, url)
        next_at = clock.now() + retry_delay(attempts + 1, self.first_retry, self.rand)
        if next_at > deadline:
            return self._give_up(event_id, taken, last, fields, about, url)
        log.debug("%s: attempt %d answered %s, next in %.1f s", about, attempts + 1, last, next_at - clock.now())
        return self._settle(event_id, taken, "pending", last, fields, next_at=next_at)

    def _load(self, event_id: str) -> tuple[int, dict[str, str], bytes] | str:
        """Count this attempt on the event (`taken`) and read it: (taken, fields, body), or the state
        it is already in when there is nothing to send (its schedule entry is removed)."""
        key = self.keys.webhook(event_id)
        with self.conn.pipeline() as pipe:
            pipe.hincrby(key, "taken", 1)
            pipe.hgetall(key)
            taken, raw = pipe.execute()
        record = {text(k): v for k, v in raw.items()}
        if "body" not in record:  # expired (or never was): drop the count it just made
            self.conn.delete(key)
            self.conn.zrem(self.keys.webhooks_due, event_id)
            return "lost"
        fields = {k: text(v) for k, v in record.items() if k != "body"}
        if fields.get("state") != "pending":
            self.conn.zrem(self.keys.webhooks_due, event_id)
            return fields.get("state", "lost")
        return int(taken), fields, binary(record["body"])

    def _post(self, url: str, secret: str, event_id: str, body: bytes) -> tuple[int | None, str]:
        """Send one signed attempt; the receiver's body is never read. (HTTP status or None, outcome)."""
        headers = signed_headers(secret, event_id, int(clock.now()), body)
        try:
            with self.http.stream("POST", url, content=body, headers=headers) as answer:
                return answer.status_code, f"HTTP {answer.status_code}"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return None, type(exc).__name__

    def _give_up(self, event_id: str, taken: int, why: str, fields: dict[str, str], about: str, url: str) -> str:
        log.warning("%s to %s given up after %s attempt(s): %s (counted in `otb keys list`)",
                    about, urlsplit(url).hostname, fields.get("attempts", "0"), why)
        return self._settle(event_id, taken, "failed", why, fields)

    def _settle(self, event_id: str, taken: int, state: str, last: str, fields: dict[str, str],
                next_at: float | None = None) -> str:
        """Record the attempt's outcome, unless a later attempt has taken the event meanwhile (its
        lease ran out): then that attempt decides, and this one changes nothing."""
        key = self.keys.webhook(event_id)
        update: Fields = {"state": state, "last": last, "attempts": fields.get("attempts", "0")}
        if next_at is None:
            update["finished_at"] = str(int(clock.now()))
        with self.conn.pipeline() as pipe:
            try:
                pipe.watch(key)
                if int(pipe.hget(key, "taken") or 0) != taken:
                    return "superseded"
                pipe.multi()
                pipe.hset(key, mapping=update)
                if next_at is None:
                    pipe.zrem(self.keys.webhooks_due, event_id)
                else:
                    pipe.zadd(self.keys.webhooks_due, {event_id: next_at})
                if state == "failed":
                    pipe.hincrby(self.keys.tenant(fields["tenant"]), WEBHOOKS_FAILED, 1)
                pipe.execute()
            except redis.WatchError:
                return "superseded"
        return state

    def run_due(self, limit: int = 100) -> list[str]:
        """Take what is due and attempt each in this thread: the loop's work, without its threads."""
        taken, _ = self.take(limit)
        return [self.attempt(event_id) for event_id in taken]

    # -- the loop ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._poll, name="otb-webhooks-poll", daemon=True)]
        self._threads += [threading.Thread(target=self._send, name=f"otb-webhooks-send-{i}", daemon=True)
                          for i in range(self.senders)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop taking events; those taken but not started are due again at once (for any server).
        An attempt in flight may finish within `timeout`; one that does not is retried after its lease."""
        self._stopping.set()
        self._wake.set()
        poller, senders = self._threads[:1], self._threads[1:]
        deadline = time.monotonic() + timeout
        for thread in poller:
            thread.join(timeout)
        left = []
        with contextlib.suppress(queue.Empty):
            while True:
                left.append(self._queue.get_nowait())
        for _ in senders:
            self._queue.put(None)
        with contextlib.suppress(redis.RedisError):
            if due := [event_id for event_id in left if event_id is not None]:
                self.conn.zadd(self.keys.webhooks_due, dict.fromkeys(due, clock.now()), xx=True)
        for thread in senders:
            thread.join(max(deadline - time.monotonic(), 0.0))
        if not any(thread.is_alive() for thread in self._threads):
            self.http.close()

    def _poll(self) -> None:
        outage = False
        while not self._stopping.is_set():
            self._wake.clear()
            pause = IDLE
            try:
                with self._lock:
                    free = self.senders - self._in_flight
                if free > 0:
                    taken, first = self.take(free)
                    with self._lock:
                        self._in_flight += len(taken)
                    for event_id in taken:
                        self._queue.put(event_id)
                    if len(taken) < free and first is not None:
                        pause = min(max(first - clock.now(), 0.005), IDLE)
                if outage:
                    log.warning("webhook deliveries: Redis answers again")
                outage = False
            except redis.RedisError as exc:
                if not outage:
                    log.warning("webhook deliveries paused: Redis: %s", exc)
                outage = True
            self._wake.wait(pause)

    def _send(self) -> None:
        while (event_id := self._queue.get()) is not None:
            try:
                self.attempt(event_id)
            except Exception:  # noqa: BLE001 (a bad event must not stop the sender; its lease brings it back)
                log.exception("webhook %s: the attempt failed", event_id)
            finally:
                with self._lock:
                    self._in_flight -= 1
                self._wake.set()


def lifespan(conn: redis.Redis, settings: Settings) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """The app's lifespan: deliveries run while the server does (FastAPI's `lifespan=`)."""

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        deliverer = Deliverer(conn, settings)
        deliverer.start()
        try:
            yield
        finally:
            deliverer.stop()

    return run
