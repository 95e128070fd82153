"""Webhooks through real processes: a real redis-server, two real `otb serve` processes delivering
from one schedule, keys made by the real `otb keys create --webhook-url`, and a local HTTP receiver
that checks every delivery with the official SDK's `webhooks.unwrap()`.

The batches endpoints announce events when a batch ends; here the test announces them directly
(`announce()` against the same Redis), as the batches finalizer does. Retries are made fast through
OTB_WEBHOOK_RETRY_MS (a setting, so the servers run the code they always run).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest
import redis
from openai.types.webhooks import BatchCompletedWebhookEvent, BatchFailedWebhookEvent

from bench.harness import ServerProcess
from producer.api.webhooks import announce, announced

from .conftest import api_cli

pytestmark = pytest.mark.e2e


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """An HTTP receiver on a free loopback port. Paths: /ok answers 200; /flaky 500 to the first two
    attempts of each event, then 200; /hold holds each event's first attempt until `release` is set,
    answers it 500, then 200."""

    server: ThreadingHTTPServer
    deliveries: list[Delivery] = field(default_factory=list)
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            before = sum(1 for d in self.deliveries if d.headers.get("webhook-id") == headers.get("webhook-id"))
        if path == "/hold" and before == 0:
            self.holding.set()
            self.release.wait(30)
        status = {"/ok": 200, "/flaky": 500 if before < 2 else 200, "/hold": 500 if before == 0 else 200}[path]
        with self.lock:
            self.deliveries.append(Delivery(path, headers, body, status))
        return status

    def of(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]


def receiver_on_free_port() -> Receiver:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = holder[0].answer(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    receiver = Receiver(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    holder.append(receiver)
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    return receiver


def wait_for(check: Callable[[], bool], what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    made = receiver_on_free_port()
    yield made
    made.release.set()
    made.server.shutdown()
    made.server.server_close()


@pytest.fixture(scope="module")
def hook_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "OTB_WEBHOOK_RETRY_MS": "100"}


@pytest.fixture(scope="module")
def secrets_of(hook_env: dict[str, str], receiver: Receiver) -> dict[str, str]:
    """Tenants made with the real CLI, each with its receiver path: name -> whsec_ secret."""
    made = {}
    for name, path in (("flaky", "/flaky"), ("many", "/ok"), ("leaver", "/hold")):
        proc = api_cli(["keys", "create", name, "--webhook-url", receiver.url(path), "--json"], hook_env)
        assert proc.returncode == 0, proc.stderr.decode()
        made[name] = json.loads(proc.stdout)["webhook_secret"]
    return made


@pytest.fixture(scope="module")
def servers(hook_env: dict[str, str], secrets_of: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    logs = tmp_path_factory.mktemp("hook-serve")
    started = [ServerProcess(hook_env, log=logs / f"serve{i}.log") for i in range(2)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def conn(api_redis: object) -> redis.Redis:
    return api_redis.client()  # type: ignore[attr-defined, no-any-return]


def unwrap(secret: str, delivery: Delivery) -> object:
    return openai.OpenAI(api_key="x", webhook_secret=secret).webhooks.unwrap(delivery.body, delivery.headers)


def test_a_flaky_receiver_gets_one_accepted_delivery_after_retries(
        conn: redis.Redis, servers: list[ServerProcess], receiver: Receiver, secrets_of: dict[str, str]) -> None:
    announce(conn, "otb", "flaky", "batch_flaky1", "completed")
    wait_for(lambda: any(d.status == 200 for d in receiver.of("/flaky")), "an accepted delivery")
    wait_for(lambda: (announced(conn, "otb", "batch_flaky1", "completed") or {}).get("state") == "delivered",
             "the event settled")
    attempts = receiver.of("/flaky")
    assert [d.status for d in attempts] == [500, 500, 200]
    event_id = announced(conn, "otb", "batch_flaky1", "completed")["id"]  # type: ignore[index]
    assert {d.headers["webhook-id"] for d in attempts} == {event_id}  # one id across retries
    assert len({d.body for d in attempts}) == 1
    event = unwrap(secrets_of["flaky"], attempts[-1])
    assert isinstance(event, BatchCompletedWebhookEvent) and event.data.id == "batch_flaky1" and event.id == event_id
    assert int(attempts[-1].headers["webhook-timestamp"]) >= event.created_at


def test_two_servers_deliver_each_event_once_even_when_announced_twice(
        conn: redis.Redis, servers: list[ServerProcess], receiver: Receiver, secrets_of: dict[str, str]) -> None:
    batches = [f"batch_many{i}" for i in range(40)]
    for bid in batches:
        announce(conn, "otb", "many", bid, "failed")
    for bid in batches:
        announce(conn, "otb", "many", bid, "failed")  # the finalizer ran again after a crash
    wait_for(lambda: len(receiver.of("/ok")) >= len(batches), "every event delivered")
    wait_for(lambda: all((announced(conn, "otb", bid, "failed") or {}).get("state") == "delivered" for bid in batches),
             "every event settled")
    time.sleep(0.5)  # five first-retry waits: a duplicate attempt would have shown by now
    received = [unwrap(secrets_of["many"], d) for d in receiver.of("/ok")]
    assert all(isinstance(e, BatchFailedWebhookEvent) for e in received)
    assert sorted(e.data.id for e in received) == sorted(batches)  # type: ignore[attr-defined]
    assert len({e.id for e in received}) == len(batches)  # type: ignore[attr-defined]
    assert conn.zcard("otb:webhooks:due") == 0


def test_a_revoked_key_gets_no_more_deliveries(
        hook_env: dict[str, str], conn: redis.Redis, servers: list[ServerProcess], receiver: Receiver) -> None:
    announce(conn, "otb", "leaver", "batch_leaver1", "cancelled")
    assert receiver.holding.wait(30), "the first attempt never came"
    revoked = api_cli(["keys", "revoke", "leaver"], hook_env)
    assert revoked.returncode == 0, revoked.stderr.decode()
    receiver.release.set()  # the first attempt fails now; the next would be accepted, if it came
    wait_for(lambda: (announced(conn, "otb", "batch_leaver1", "cancelled") or {}).get("state") == "dropped",
             "the event dropped")
    time.sleep(0.5)
    assert [d.status for d in receiver.of("/hold")] == [500]


def test_servers_stop_cleanly_and_never_log_a_secret(
        hook_env: dict[str, str], servers: list[ServerProcess], secrets_of: dict[str, str]) -> None:
    for server in servers:
        server.stop()
        log = Path(server.log).read_text()
        assert "Traceback" not in log and "Application shutdown complete" in log, log[-2000:]
        for secret in secrets_of.values():
            assert secret not in log and secret.removeprefix("whsec_") not in log
    listed = json.loads(api_cli(["keys", "list", "--json"], hook_env).stdout)["data"]
    assert {row["name"]: row["webhooks_failed"] for row in listed} == {"flaky": 0, "many": 0, "leaver": 0}
