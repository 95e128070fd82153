"""Job level: submit + the in-process worker against the emulator, on fakeredis (no Redis behaviour at stake)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import fakeredis
import pytest

from producer.client import Client
from producer.local import drain
from worker.chunk import process_chunk
from worker import clock
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT


def chat(cid: str, model: str, text: str, **extra):  # type: ignore[no-untyped-def]
    return {"custom_id": cid, "model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def setup(emulator, registry):  # type: ignore[no-untyped-def]
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    settings = Settings(
        anthropic_base_url=emulator.url, google_base_url=emulator.url, registry_path=ROOT / "registry.json",
        api_keys={"anthropic": "sk-ant-test", "google": "gm-test"}, max_attempts=3,
    )
    return conn, settings, Client(conn, settings, registry)


def run(client: Client, conn, settings, requests, **kw):  # type: ignore[no-untyped-def]
    bid = client.submit(requests, **kw)
    drain(conn, settings)
    return bid, {line["custom_id"]: line for line in client.results(bid)}, client.status(bid)


def test_batch_completes_with_one_result_each_and_totals_that_add_up(setup):
    conn, settings, client = setup
    reqs = [chat(f"c{i}", "google/gemini-3-flash" if i % 2 else "anthropic/claude-haiku-5-5", f"hello {i}")
            for i in range(10)]
    reqs.append({"custom_id": "e1", "model": "google/gemini-embedding-001", "input": ["a b c d", "efgh"]})
    bid, lines, status = run(client, conn, settings, reqs)
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": 11, "succeeded": 11, "errored": 0, "canceled": 0, "expired": 0, "processing": 0}
    assert sum(Decimal(line["cost"]["total"]) for line in lines.values()) == Decimal(status["cost"]["total"])
    assert Decimal(status["spent"]) == Decimal(status["cost"]["total"])
    chat_line = lines["c1"]
    assert chat_line["response"]["status_code"] == 200
    assert chat_line["response"]["body"]["object"] == "chat.completion"
    assert chat_line["response"]["body"]["model"] == "google/gemini-3-flash"
    emb = lines["e1"]["response"]["body"]
    assert emb["object"] == "list" and len(emb["data"]) == 2
    assert lines["e1"]["meta"]["usage"]["estimated"] is False  # counted by countTokens, not guessed


def test_a_rerun_neither_calls_nor_bills_again(setup, emulator):
    conn, settings, client = setup
    bid, _, before = run(client, conn, settings, [chat(f"r{i}", "google/gemini-3-flash", f"x{i}") for i in range(5)])
    calls = emulator.stats()["calls"]
    ids = [f"r{i}" for i in range(5)]
    summary = asyncio.run(process_chunk(conn, settings, bid, ids))
    assert summary.outcomes["skipped"] == 5
    assert emulator.stats()["calls"] == calls
    assert client.status(bid) == before


def test_retryable_failures_are_retried_and_counted(setup):
    conn, settings, client = setup
    text = "#emu:fail-first=2:529 #emu:retry-after=0 please answer"
    _, lines, status = run(client, conn, settings, [chat("flaky", "anthropic/claude-haiku-5-5", text)])
    assert status["request_counts"]["succeeded"] == 1
    assert lines["flaky"]["meta"]["attempts"] == 3


def test_fatal_upstream_errors_are_not_retried(setup):
    conn, settings, client = setup
    _, lines, status = run(client, conn, settings, [chat("bad", "google/gemini-3-flash", "#emu:fail=400")])
    line = lines["bad"]
    assert status["request_counts"]["errored"] == 1
    assert line["meta"]["attempts"] == 1
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert line["cost"]["total"] == "0"


def test_exhausted_retries_on_a_dropped_connection_end_with_the_last_error(setup):
    conn, settings, client = setup
    settings = settings.with_(max_attempts=2)
    client.settings = settings
    _, lines, _ = run(client, conn, settings, [chat("reset", "google/gemini-3-flash", "#emu:reset")])
    line = lines["reset"]
    assert line["response"] is None
    assert line["error"]["code"] == "upstream_unreachable"
    assert line["meta"]["attempts"] == 2


def test_missing_api_key_names_the_variable(setup):
    conn, settings, client = setup
    settings = settings.with_(api_keys={"google": "gm-test"})
    _, lines, _ = run(client, conn, settings, [chat("k", "anthropic/claude-haiku-5-5", "hi")])
    error = lines["k"]["response"]["body"]["error"]
    assert error["code"] == "missing_api_key"
    assert "ANTHROPIC_API_KEY" in error["message"]


def test_rerouted_gemini_model_is_billed_as_the_model_that_ran(setup, registry):
    conn, settings, client = setup
    _, lines, _ = run(client, conn, settings, [chat("old", "google/gemini-3.5-flash", "hi there")])
    meta = lines["old"]["meta"]
    assert meta["model"] == "google/gemini-3.5-flash"
    assert meta["billed_model"] == "google/gemini-3.6-flash"


def test_dropped_parameters_are_recorded(setup):
    conn, settings, client = setup
    req = chat("t", "anthropic/claude-opus-5-5", "hi", temperature=0.2)
    _, lines, _ = run(client, conn, settings, [req], drop_unsupported_params=True)
    assert lines["t"]["meta"]["outcome"] == "succeeded"
    assert lines["t"]["meta"]["dropped_params"] == ["temperature"]


def test_a_model_removed_from_the_registry_after_submit_fails_at_work_time(setup, tmp_path):
    conn, settings, client = setup
    bid = client.submit([chat("gone", "google/gemini-3-flash", "hi")])
    raw = json.loads((ROOT / "registry.json").read_text())
    raw["models"] = [m for m in raw["models"] if m["id"] != "google/gemini-3-flash"]
    smaller = tmp_path / "registry.json"
    smaller.write_text(json.dumps(raw))
    drain(conn, settings.with_(registry_path=smaller))
    line = next(client.results(bid))
    assert line["response"]["body"] == {"error": {
        "message": 'model "google/gemini-3-flash" not found', "type": "invalid_request_error", "code": "model_not_found"}}


def test_results_keep_input_order_and_keys_expire(setup):
    conn, settings, client = setup
    bid, _, _ = run(client, conn, settings, [chat(f"o{i}", "google/gemini-3-flash", str(i)) for i in (3, 1, 2)])
    assert [line["custom_id"] for line in client.results(bid)] == ["o3", "o1", "o2"]
    keys = Store(conn, settings.key_prefix).keys
    for key in (keys.batch(bid), keys.ids(bid), keys.requests(bid), keys.results(bid)):
        assert 0 < conn.ttl(key) <= settings.result_ttl


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_gemini_thought_signatures_survive_a_tool_round_trip(setup):
    conn, settings, client = setup
    ask = {"role": "user", "content": "Weather in Lisbon?"}
    first = {"custom_id": "t1", "model": "google/gemini-3-flash", "messages": [ask], "tools": [WEATHER_TOOL]}
    _, lines, _ = run(client, conn, settings, [first])
    message = lines["t1"]["response"]["body"]["choices"][0]["message"]
    call = message["tool_calls"][0]
    signature = call["extra_content"]["google"]["thought_signature"]
    assert signature and lines["t1"]["response"]["body"]["choices"][0]["finish_reason"] == "tool_calls"

    history = [ask, {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
               {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'}]
    second = {"custom_id": "t2", "model": "google/gemini-3-flash", "messages": history, "tools": [WEATHER_TOOL]}
    _, lines, _ = run(client, conn, settings, [second])
    line = lines["t2"]
    assert line["meta"]["outcome"] == "succeeded", line
    assert line["response"]["body"]["choices"][0]["finish_reason"] == "stop"
    assert "notes" not in line["meta"]  # the real signature went back, not the sentinel


def test_anthropic_tool_round_trip(setup):
    conn, settings, client = setup
    ask = {"role": "user", "content": "Weather in Porto?"}
    first = {"custom_id": "a1", "model": "anthropic/claude-sonnet-5-5", "messages": [ask], "tools": [WEATHER_TOOL]}
    _, lines, _ = run(client, conn, settings, [first])
    message = lines["a1"]["response"]["body"]["choices"][0]["message"]
    call = message["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert set(json.loads(call["function"]["arguments"])) == {"city"}  # built from the tool's schema
    history = [ask, {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]},
               {"role": "tool", "tool_call_id": call["id"], "content": "18 C, cloudy"}]
    _, lines, _ = run(client, conn, settings, [{"custom_id": "a2", "model": "anthropic/claude-sonnet-5-5",
                                                 "messages": history, "tools": [WEATHER_TOOL]}])
    assert lines["a2"]["response"]["body"]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("marker", "outcome", "attempts", "code"),
    [
        ("#emu:fail-first=2:500 #emu:retry-after=0", "succeeded", 3, None),
        ("#emu:fail-first=2:503 #emu:retry-after=0", "succeeded", 3, None),
        ("#emu:fail-first=2:529 #emu:retry-after=0", "succeeded", 3, None),
        ("#emu:fail-first=2:429 #emu:retry-after=0", "succeeded", 3, None),
        ("#emu:fail=529 #emu:retry-after=0", "errored", 3, "overloaded_error"),
        ("#emu:fail=429 #emu:retry-after=0", "errored", 3, "rate_limit_error"),
        ("#emu:fail=401", "errored", 1, "authentication_error"),
        ("#emu:fail=413", "errored", 1, "request_too_large"),
        ("#emu:reset", "errored", 3, "upstream_unreachable"),
        ("#emu:malformed", "errored", 3, "upstream_protocol_error"),
        ("#emu:slow=2500", "errored", 3, "upstream_timeout"),
    ],
)
def test_upstream_faults_end_succeeded_or_errored_with_the_last_error(setup, marker, outcome, attempts, code):
    conn, settings, client = setup
    settings = settings.with_(request_timeout=1.0, retry_max_wait=60.0)
    client.settings = settings
    _, lines, status = run(client, conn, settings, [chat("f", "anthropic/claude-haiku-5-5", marker)])
    line = lines["f"]
    assert line["meta"]["outcome"] == outcome
    assert line["meta"]["attempts"] == attempts
    if code is not None:
        err = line["error"] or line["response"]["body"]["error"]
        assert err["code"] == code
        assert line["cost"]["total"] == "0"
    assert status["status"] == "completed"


def test_a_daily_quota_parks_the_request_instead_of_sleeping_and_says_so(setup):
    from worker.recovery import resume_parked

    conn, settings, client = setup
    bid = client.submit([chat("q", "google/gemini-3-flash", "#emu:fail-first=1:429 #emu:retry-after=52758")])
    drain(conn, settings)
    status = client.status(bid)
    assert status["request_counts"]["processing"] == 1 and list(client.results(bid)) == []
    assert status["parked"]["requests"] == 1 and "52758" in status["parked"]["reason"]
    assert status["parked"]["until"] > status["created_at"] + 52000
    assert resume_parked(conn, settings) == 0  # not due yet
    assert resume_parked(conn, settings, now=status["parked"]["until"] + 1) == 1
    conn.delete("otb:cool:" + next(k.decode().split("otb:cool:")[1] for k in conn.scan_iter("otb:cool:*")))
    drain(conn, settings)  # the quota is back: the emulator's fail-first has been used up
    status = client.status(bid)
    assert status["request_counts"]["succeeded"] == 1 and status["parked"] is None


def test_a_429_is_retried_after_the_shared_cool_down(setup, emulator):
    conn, settings, client = setup
    reqs = [chat("first", "anthropic/claude-haiku-5-5", "#emu:fail-first=1:429 #emu:retry-after=1 go")]
    reqs += [chat(f"n{i}", "anthropic/claude-haiku-5-5", f"next {i}") for i in range(5)]
    client.settings = settings = settings.with_(concurrency=1)
    _, lines, status = run(client, conn, settings, reqs)
    assert status["request_counts"]["succeeded"] == 6
    assert lines["first"]["meta"]["attempts"] == 2


def test_per_model_caps_limit_calls_in_flight(setup, monkeypatch):
    """OTB_CONCURRENCY_PER_MODEL / _PER_PROVIDER bound the calls in flight, counted where they leave the process."""
    from collections import Counter

    from worker import http

    conn, settings, client = setup
    client.settings = settings = settings.with_(concurrency=20, concurrency_per_model=2, concurrency_per_provider=3)
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    send = http.send

    async def counting(client, base_url, call, auth):  # type: ignore[no-untyped-def]
        anthropic = call.path.endswith("/v1/messages")  # its model is in the body; Gemini's in the path
        model = call.json["model"] if anthropic else call.path.rsplit("/", 1)[-1].split(":")[0]
        places = (f"model:{model}", "provider:" + ("anthropic" if anthropic else "google"))
        for place in places:
            in_flight[place] += 1
            peak[place] = max(peak[place], in_flight[place])
        try:
            return await send(client, base_url, call, auth)
        finally:
            for place in places:
                in_flight[place] -= 1

    monkeypatch.setattr(http, "send", counting)
    models = ["google/gemini-3-flash", "google/gemini-2.5-flash", "anthropic/claude-haiku-5-5"]
    reqs = [chat(f"m{i}", models[i % 3], f"#emu:slow=200 q{i}") for i in range(12)]  # 4 each, all at once
    _, lines, status = run(client, conn, settings, reqs)
    assert status["request_counts"]["succeeded"] == 12
    google_models = [peak[k] for k in peak if k.startswith("model:gemini")]
    assert len(google_models) == 2 and max(google_models) == 2 and min(google_models) >= 1
    assert peak["provider:google"] == 3  # 8 calls to two models: the provider cap binds first
    assert peak["model:claude-haiku-5-5"] == 2 and peak["provider:anthropic"] == 2  # 4 calls: the model cap binds


def test_a_running_chunk_claims_the_next_ones_and_marks_them_finished(setup):
    from rq.job import Job
    from rq.serializers import JSONSerializer

    conn, settings, client = setup
    client.settings = settings = settings.with_(chunk_size=4, concurrency=2)
    bid = client.submit([chat(f"k{i}", "google/gemini-3-flash", f"q{i}") for i in range(20)])
    drain(conn, settings)
    assert client.status(bid)["request_counts"]["succeeded"] == 20
    jobs = [Job.fetch(j.decode(), connection=conn, serializer=JSONSerializer) for j in conn.smembers(f"otb:batch:{bid}:jobs")]
    assert len(jobs) == 5 and {j.get_status() for j in jobs} == {"finished"}
    assert conn.hlen("otb:claimed") == 0
    assert sum(1 for j in jobs if j.return_value() is not None) < 5  # some ran inside another chunk's run


def test_a_claim_whose_runner_died_goes_back_to_the_queue(setup):

    from worker.queues import queue_for

    from worker.recovery import claim_next, recover_claimed

    conn, settings, client = setup
    client.settings = settings = settings.with_(chunk_size=3)
    bid = client.submit([chat(f"z{i}", "google/gemini-3-flash", f"q{i}") for i in range(6)])
    queue = queue_for(conn, settings)
    got = claim_next(conn, settings, "otb:lease:a-runner-that-died")
    assert got is not None and got[1] == bid and len(got[2]) == 3
    assert queue.count == 1 and conn.hexists("otb:claimed", got[0])
    assert recover_claimed(conn, settings) == []  # too young to judge
    assert recover_claimed(conn, settings, now=clock.now() + settings.lease_ttl * 3) == [got[0]]
    assert queue.count == 2 and not conn.hexists("otb:claimed", got[0])
    drain(conn, settings)
    assert client.status(bid)["request_counts"]["succeeded"] == 6


def test_the_chunk_job_result_keeps_its_layout(setup):
    """What RQ keeps as a chunk job's result: counts by outcome, then checkpointed and parked (a count,
    not the parked requests the run handed to recovery.park)."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    conn, settings, client = setup
    bid = client.submit([chat("ok", "google/gemini-3-flash", "hi"),
                         chat("quota", "google/gemini-3-flash", "#emu:fail-first=1:429 #emu:retry-after=52758 layout")])
    drain(conn, settings)
    (job_id,) = conn.smembers(f"otb:batch:{bid}:jobs")
    job = Job.fetch(job_id.decode(), connection=conn, serializer=JSONSerializer)
    assert job.return_value() == {"skipped": 0, "succeeded": 1, "errored": 0, "parked": 1, "checkpointed": 0}
    assert conn.zcard("otb:parked") == 1


def test_a_run_forgets_the_batches_it_is_done_with(setup, monkeypatch):
    """A horse serving HTTP calls claims a one-request batch per call for up to half an hour: it must
    not keep every batch it ever ran (it grew by ~1 KB per call)."""
    from worker.chunk import ChunkRun

    conn, settings, client = setup
    client.settings = settings = settings.with_(concurrency=2)
    bids = [client.submit([chat("only", "google/gemini-3-flash", f"q{i}")]) for i in range(30)]
    kept: list[int] = []
    summary = ChunkRun.summary
    monkeypatch.setattr(ChunkRun, "summary", lambda self: (kept.append(len(self.batches)), summary(self))[1])
    drain(conn, settings)
    assert all(client.status(b)["request_counts"]["succeeded"] == 1 for b in bids)
    assert kept and max(kept) <= 3, kept  # the batches still running when the last one was loaded, not all 30


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_a_chunk_runs_on_the_event_loop_the_settings_choose(choice):
    import uvloop

    from worker.jobs import run_loop

    async def which() -> bool:
        return isinstance(asyncio.get_running_loop(), uvloop.Loop)

    assert run_loop(Settings(event_loop=choice), which()) is (choice == "uvloop")
