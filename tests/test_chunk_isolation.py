"""Job level (fakeredis + emulator): whatever one request holds ends that request alone, with a clear
error, and a long run keeps no finished request in memory (issue 8 part 5 items 1, 9, 13)."""

from __future__ import annotations

import asyncio
import gc
import json

import fakeredis
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from producer.client import Client
from worker.chunk import process_chunk
from worker.recovery import claim_next
from worker.settings import Settings

from .conftest import ROOT


@pytest.fixture
def setup(emulator, registry):  # type: ignore[no-untyped-def]
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    settings = Settings(anthropic_base_url=emulator.url, google_base_url=emulator.url, registry_path=ROOT / "registry.json",
                        api_keys={"anthropic": "k", "google": "k"}, chunk_size=50, concurrency=20)
    return conn, settings, Client(conn, settings, registry)


def chats(n: int, prefix: str = "r") -> list[dict]:
    return [{"custom_id": f"{prefix}{i}", "model": "google/gemini-3-flash",
             "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(n)]


def tamper(conn, bid: str, cid: str, raw: str) -> None:  # type: ignore[no-untyped-def]
    """Replace a stored request, as a record from another producer (or anyone with Redis access) would be."""
    conn.hset(f"otb:batch:{bid}:requests", cid, raw)


def run_all(conn, settings, client, bid: str, ids: list[str]) -> dict:  # type: ignore[no-untyped-def]
    asyncio.run(process_chunk(conn, settings, bid, ids))
    return {line["custom_id"]: line for line in client.results(bid)}


def test_a_record_no_one_can_decode_fails_only_itself(setup, emulator):
    conn, settings, client = setup
    bid = client.submit(chats(3))
    deep = "[" * 5000 + "]" * 5000
    tamper(conn, bid, "r1", '{"url":"/v1/chat/completions","body":{"model":"google/gemini-3-flash","messages":' + deep + "}}")
    calls = emulator.stats()["calls"]
    lines = run_all(conn, settings, client, bid, ["r0", "r1", "r2"])
    assert [lines[c]["meta"]["outcome"] for c in ("r0", "r1", "r2")] == ["succeeded", "errored", "succeeded"]
    assert "cannot be read (nested too deeply)" in lines["r1"]["response"]["body"]["error"]["message"]
    assert emulator.stats()["calls"] - calls == 2
    assert client.status(bid)["status"] == "completed"


def test_an_unexpected_failure_in_one_request_ends_it_as_internal_error(setup):
    """Before: the exception left the request without a result, its batch open forever."""
    conn, settings, client = setup
    bid = client.submit(chats(3))
    tamper(conn, bid, "r2", json.dumps({"url": "/v1/unknown", "body": {"model": "google/gemini-3-flash"}}))
    lines = run_all(conn, settings, client, bid, ["r0", "r1", "r2"])
    assert lines["r2"]["error"] == {"code": "internal_error",
                                    "message": "the worker failed on this request: KeyError: '/v1/unknown'"}
    assert lines["r0"]["meta"]["outcome"] == lines["r1"]["meta"]["outcome"] == "succeeded"
    assert client.status(bid)["status"] == "completed"


def test_a_number_json_cannot_carry_is_refused_before_any_call(setup, emulator):
    """Before: 1e400 (read as Infinity) made our own encoder fail on every attempt, reported as
    upstream_unreachable ... ValueError after 5 calls to nowhere."""
    conn, settings, client = setup
    bid = client.submit(chats(1))
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "number", "maximum": 1e400}}}
    body = {"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}], "response_format": schema}
    tamper(conn, bid, "r0", json.dumps({"url": "/v1/chat/completions", "body": body}))  # Infinity, as Python writes it
    calls = emulator.stats()["calls"]
    line = run_all(conn, settings, client, bid, ["r0"])["r0"]
    error = line["response"]["body"]["error"]
    assert error["code"] == "invalid_request" and "cannot be sent as JSON" in error["message"]
    assert line["meta"]["attempts"] <= 1 and emulator.stats()["calls"] == calls


def test_a_long_run_keeps_no_finished_request(setup):
    """Before: every task of a run that claims chunk after chunk stayed referenced until the run ended
    (~0.8 KB per request in a work horse, 62 -> 140 MB over 100k requests, and slower passes)."""
    conn, settings, client = setup
    bids = [client.submit(chats(500, prefix=f"b{n}-")) for n in range(3)]
    first = Job.fetch(conn.lpop("rq:queue:otb").decode(), connection=conn, serializer=JSONSerializer)
    alive: list[int] = []

    def claim():  # type: ignore[no-untyped-def]
        gc.collect()
        alive.append(sum(isinstance(o, asyncio.Task) for o in gc.get_objects()))
        return claim_next(conn, settings, "otb:lease:test")

    asyncio.run(process_chunk(conn, settings, first.args[0], first.args[1], claim=claim))
    assert all(client.status(b)["request_counts"]["succeeded"] == 500 for b in bids)
    assert len(alive) >= 25  # 1,500 requests in chunks of 50, all through this one run
    assert max(alive[5:]) <= 3 * settings.chunk_size, alive  # what is in flight, never what is done
