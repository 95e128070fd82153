"""Webhooks, in process: the signature passes the official SDK's `webhooks.unwrap()`, an event is
announced once, and the delivery loop's steps (take with a lease, attempt, settle, retry, give up)
on fakeredis with httpx's MockTransport as the receiver. Real processes: test_webhooks_serve.py."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import fakeredis
import httpx
import openai
import pytest
from openai.types.webhooks import (BatchCancelledWebhookEvent, BatchCompletedWebhookEvent, BatchExpiredWebhookEvent,
                                   BatchFailedWebhookEvent)

from producer.api.tenants import KeyStore
from producer.api.webhook_delivery import LEASE, Deliverer
from producer.api.webhooks import LONGEST_WAIT, WINDOW, announce, announced, event_body, retry_delay, signed_headers
from worker import clock
from worker.keys import Keys
from worker.settings import Settings

URL = "https://hooks.example.test/otb?token=do-not-log-me"
SDK_TYPES = {"completed": BatchCompletedWebhookEvent, "failed": BatchFailedWebhookEvent,
             "expired": BatchExpiredWebhookEvent, "cancelled": BatchCancelledWebhookEvent}


def unwrap(secret: str, body: bytes, headers: dict[str, str]) -> object:
    return openai.OpenAI(api_key="x", webhook_secret=secret).webhooks.unwrap(body, headers)


@pytest.fixture
def sdk_time() -> Iterator[None]:
    """The machine's own time instead of the suite's day: the SDK checks `webhook-timestamp` against
    `time.time()` (within 300 s), not against our clock."""
    with clock.pinned(time.time()):
        yield


@pytest.fixture
def conn() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def secret(conn: fakeredis.FakeRedis) -> str:
    made = KeyStore(conn).create("acme", webhook_url=URL)
    assert made.webhook_secret
    return made.webhook_secret


class Receiver:
    """A MockTransport receiver: answers each request with the next of `answers` (the last repeats)."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers, self.requests = list(answers), []  # type: ignore[var-annotated]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, headers={"location": "https://elsewhere.test/"} if 300 <= answer < 400 else {})


def deliverer(conn: fakeredis.FakeRedis, receiver: Receiver, retry_ms: int = 5000) -> Deliverer:
    return Deliverer(conn, Settings(webhook_retry_ms=retry_ms), transport=httpx.MockTransport(receiver), senders=1)


# -- the signature and the body ------------------------------------------------------------------
@pytest.mark.parametrize("status", list(SDK_TYPES))
def test_the_sdk_unwraps_each_batch_event(secret: str, status: str, sdk_time: None) -> None:
    body = event_body("evt_1", "batch_abc", status, int(clock.now()))
    event = unwrap(secret, body, signed_headers(secret, "evt_1", int(clock.now()), body))
    assert isinstance(event, SDK_TYPES[status])
    assert event.id == "evt_1" and event.type == f"batch.{status}" and event.data.id == "batch_abc"
    assert event.object == "event"


def test_a_tampered_body_or_another_secret_fails_the_sdk_check(secret: str, sdk_time: None) -> None:
    body = event_body("evt_1", "batch_abc", "completed", int(clock.now()))
    headers = signed_headers(secret, "evt_1", int(clock.now()), body)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(secret, body.replace(b"batch_abc", b"batch_abd"), headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(secret, body, {**headers, "webhook-id": "evt_2"})
    other = KeyStore(fakeredis.FakeRedis()).create("bob", webhook_url=URL).webhook_secret
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(str(other), body, headers)


# -- announce --------------------------------------------------------------------------------------
def test_announcing_twice_records_one_event(conn: fakeredis.FakeRedis, secret: str) -> None:
    announce(conn, "otb", "acme", "batch_1", "completed")
    first = announced(conn, "otb", "batch_1", "completed")
    announce(conn, Settings(), "acme", "batch_1", "completed")
    assert first and announced(conn, "otb", "batch_1", "completed") == first
    assert conn.zrange(Keys().webhooks_due, 0, -1) == [first["id"].encode()]
    body = json.loads(first["body"])
    assert body == {"id": first["id"], "object": "event", "type": "batch.completed",
                    "created_at": int(first["created_at"]), "data": {"id": "batch_1"}}
    assert first["id"].startswith("evt_") and first["state"] == "pending"
    announce(conn, "otb", "acme", "batch_1", "cancelled")  # another status is another event
    assert conn.zcard(Keys().webhooks_due) == 2


def test_no_event_without_a_webhook_or_a_live_key(conn: fakeredis.FakeRedis, secret: str) -> None:
    KeyStore(conn).create("plain")
    KeyStore(conn).revoke("acme")
    for tenant in ("plain", "acme", "nobody"):
        announce(conn, "otb", tenant, f"batch_{tenant}", "completed")
        assert announced(conn, "otb", f"batch_{tenant}", "completed") is None
    assert conn.zcard(Keys().webhooks_due) == 0
    with pytest.raises(ValueError, match="not 'finalizing'"):
        announce(conn, "otb", "acme", "batch_1", "finalizing")


# -- the backoff -----------------------------------------------------------------------------------
def test_the_backoff_doubles_with_jitter_up_to_an_hour() -> None:
    assert [retry_delay(n, 5, rand=lambda: 1.0) for n in range(1, 5)] == [5, 10, 20, 40]
    assert [retry_delay(n, 5, rand=lambda: 0.0) for n in range(1, 5)] == [2.5, 5, 10, 20]
    assert retry_delay(30, 5, rand=lambda: 1.0) == LONGEST_WAIT
    slowest = fastest = 0.0
    attempts_slow = attempts_fast = 0
    while slowest + retry_delay(attempts_slow + 1, 5, rand=lambda: 1.0) <= WINDOW:
        attempts_slow += 1
        slowest += retry_delay(attempts_slow, 5, rand=lambda: 1.0)
    while fastest + retry_delay(attempts_fast + 1, 5, rand=lambda: 0.0) <= WINDOW:
        attempts_fast += 1
        fastest += retry_delay(attempts_fast, 5, rand=lambda: 0.0)
    assert 25 <= attempts_slow < attempts_fast <= 60  # about one an hour at the end, not a flood


# -- delivery steps --------------------------------------------------------------------------------
def test_a_delivery_is_signed_sent_once_and_settled(conn: fakeredis.FakeRedis, secret: str, sdk_time: None) -> None:
    receiver = Receiver(200)
    announce(conn, "otb", "acme", "batch_1", "completed")
    assert deliverer(conn, receiver).run_due() == ["delivered"]
    (request,) = receiver.requests
    assert str(request.url) == URL and request.headers["content-type"] == "application/json"
    event = unwrap(secret, request.content, dict(request.headers))
    assert isinstance(event, BatchCompletedWebhookEvent) and event.data.id == "batch_1"
    record = announced(conn, "otb", "batch_1", "completed")
    assert record and record["state"] == "delivered" and record["attempts"] == "1" and record["last"] == "HTTP 200"
    assert request.headers["webhook-id"] == record["id"]
    assert conn.zcard(Keys().webhooks_due) == 0 and deliverer(conn, receiver).run_due() == []


def test_a_failure_is_retried_later_with_the_same_id(conn: fakeredis.FakeRedis, secret: str) -> None:
    receiver = Receiver(500, httpx.ConnectError("refused"), 307, 204)
    announce(conn, "otb", "acme", "batch_1", "failed")
    loop = deliverer(conn, receiver, retry_ms=4000)
    before = clock.now()
    assert loop.run_due() == ["pending"]
    (score,) = [s for _, s in conn.zrange(Keys().webhooks_due, 0, -1, withscores=True)]
    assert before + 2 <= score <= clock.now() + 4  # the first retry waits 2 to 4 s (equal jitter)
    assert loop.run_due() == []  # not due yet
    for step, last in enumerate(["ConnectError", "HTTP 307", "HTTP 204"], start=1):
        with clock.pinned(before + 60 * step):  # past each retry's time (4 to 8 s, 8 to 16 s, ...)
            assert loop.run_due() == ["delivered" if last == "HTTP 204" else "pending"]
        assert announced(conn, "otb", "batch_1", "failed")["last"] == last  # type: ignore[index]
    assert len(receiver.requests) == 4 and {r.headers["webhook-id"] for r in receiver.requests} == {
        announced(conn, "otb", "batch_1", "failed")["id"]}  # type: ignore[index]
    assert all(str(r.url) == URL for r in receiver.requests)  # the 307 was not followed


def test_given_up_after_the_window_counted_and_logged_without_secrets(
        conn: fakeredis.FakeRedis, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(503)
    announce(conn, "otb", "acme", "batch_1", "expired")
    announce(conn, "otb", "acme", "batch_2", "expired")
    created = int(announced(conn, "otb", "batch_1", "expired")["created_at"])  # type: ignore[index]
    loop = deliverer(conn, receiver)
    with caplog.at_level(logging.WARNING, logger="otb.webhooks"), clock.pinned(created + WINDOW - 1):
        assert loop.run_due() == ["failed", "failed"]  # one last try each: the next would be past 24 h
    assert len(receiver.requests) == 2
    assert KeyStore(conn).list()[0]["webhooks_failed"] == 2
    assert conn.zcard(Keys().webhooks_due) == 0
    assert "given up after 1 attempt(s): HTTP 503" in caplog.text and "hooks.example.test" in caplog.text
    assert secret not in caplog.text and "do-not-log-me" not in caplog.text and secret[6:] not in caplog.text


def test_past_the_window_nothing_is_sent(conn: fakeredis.FakeRedis, secret: str) -> None:
    receiver = Receiver(200)
    announce(conn, "otb", "acme", "batch_1", "completed")
    with clock.pinned(clock.now() + WINDOW + 5):
        assert deliverer(conn, receiver).run_due() == ["failed"]
    assert receiver.requests == [] and KeyStore(conn).list()[0]["webhooks_failed"] == 1


def test_410_gone_stops_the_retries(conn: fakeredis.FakeRedis, secret: str) -> None:
    receiver = Receiver(410, 200)
    announce(conn, "otb", "acme", "batch_1", "completed")
    assert deliverer(conn, receiver).run_due() == ["failed"]
    assert len(receiver.requests) == 1 and conn.zcard(Keys().webhooks_due) == 0


def test_a_revoked_key_gets_nothing_more(conn: fakeredis.FakeRedis, secret: str) -> None:
    receiver = Receiver(500, 200)
    announce(conn, "otb", "acme", "batch_1", "completed")
    loop = deliverer(conn, receiver, retry_ms=1)
    assert loop.run_due() == ["pending"]
    KeyStore(conn).revoke("acme")
    with clock.pinned(clock.now() + 5):
        assert loop.run_due() == ["dropped"]
    assert len(receiver.requests) == 1 and conn.zcard(Keys().webhooks_due) == 0
    assert KeyStore(conn).list()[0]["webhooks_failed"] == 0  # dropped on purpose, not failed


def test_a_taken_event_is_held_for_its_lease_then_free_for_another_server(
        conn: fakeredis.FakeRedis, secret: str) -> None:
    announce(conn, "otb", "acme", "batch_1", "completed")
    first, second = deliverer(conn, Receiver(200)), deliverer(conn, Receiver(200))
    taken, _ = first.take(10)
    assert len(taken) == 1 and second.take(10)[0] == []  # held: the other server cannot take it
    with clock.pinned(clock.now() + LEASE + 1):  # the first server died mid-attempt
        assert second.take(10)[0] == taken


def test_an_attempt_overtaken_by_a_later_one_changes_nothing(conn: fakeredis.FakeRedis, secret: str) -> None:
    """A server stuck past its lease answers after another server has delivered: the later attempt decides."""
    announce(conn, "otb", "acme", "batch_1", "completed")
    event_id = announced(conn, "otb", "batch_1", "completed")["id"]  # type: ignore[index]
    second = deliverer(conn, Receiver(200))
    outcomes = []

    def stuck(request: httpx.Request) -> httpx.Response:
        outcomes.append(second.attempt(event_id))  # meanwhile the lease ran out and another server sent it
        return httpx.Response(500)

    first = Deliverer(conn, Settings(), transport=httpx.MockTransport(stuck), senders=1)
    assert first.attempt(event_id) == "superseded" and outcomes == ["delivered"]
    record = announced(conn, "otb", "batch_1", "completed")
    assert record and record["state"] == "delivered" and conn.zcard(Keys().webhooks_due) == 0


def test_an_event_whose_record_is_gone_leaves_the_schedule(conn: fakeredis.FakeRedis) -> None:
    conn.zadd(Keys().webhooks_due, {"evt_gone": clock.now()})
    assert deliverer(conn, Receiver(200)).run_due() == ["lost"]
    assert conn.zcard(Keys().webhooks_due) == 0 and not conn.exists(Keys().webhook("evt_gone"))


def test_the_loop_delivers_in_its_threads_and_stops(conn: fakeredis.FakeRedis, secret: str) -> None:
    receiver = Receiver(500, 200)
    loop = deliverer(conn, receiver, retry_ms=20)
    for bid in ("batch_1", "batch_2"):
        announce(conn, "otb", "acme", bid, "completed")
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while conn.zcard(Keys().webhooks_due) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        loop.stop()
    assert not any(thread.is_alive() for thread in loop._threads)
    assert [announced(conn, "otb", bid, "completed")["state"] for bid in ("batch_1", "batch_2")] == [  # type: ignore[index]
        "delivered", "delivered"]
    assert len(receiver.requests) == 3  # one 500, then a retry and the other event accepted
