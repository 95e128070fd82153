"""The Python API's waiting: a retried batch is waited on to its new end, a lost batch is final."""

from __future__ import annotations

from decimal import Decimal

import fakeredis
import pytest

from producer.client import Client
from producer.options import BadOption
from worker.settings import Settings

from .conftest import ROOT

FAILS = {"custom_id": "bad", "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "#emu:fail=400"}]}
OK = {"custom_id": "ok", "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def client(emulator, registry) -> Client:  # type: ignore[no-untyped-def]
    settings = Settings(google_base_url=emulator.url, anthropic_base_url=emulator.url, registry_path=ROOT / "registry.json",
                        api_keys={"anthropic": "k", "google": "k"}, max_attempts=1)
    return Client(fakeredis.FakeRedis(server=fakeredis.FakeServer()), settings, registry)


def test_wait_after_a_retry_waits_for_the_rerun_not_the_old_completed_event(client):
    bid = client.submit([OK, FAILS])
    client.run_here()
    assert client.wait(bid, timeout=5)["status"] == "completed"
    assert client.retry(bid) == 1
    with pytest.raises(TimeoutError, match="not finished"):  # before: the old "completed" event, at once
        client.wait(bid, timeout=0.5)
    client.run_here()
    status = client.wait(bid, timeout=5)
    assert status["status"] == "completed" and status["request_counts"]["errored"] == 1
    events = [e for e in client.events(bid, timeout=0.5) if e["type"] == "batch"]
    assert len(events) == 1  # the end before the retry is history, not yielded as the batch's end


def test_wait_returns_a_lost_batch_as_final(client):
    bid = client.submit([OK, FAILS])
    client.conn.delete(client.store.keys.requests(bid))  # what an eviction does to a batch not yet run
    status = client.wait(bid, timeout=3)  # before: TimeoutError, `lost` was not final
    assert status["status"] == "lost" and status["lost"]["requests"] == 2



@pytest.mark.parametrize("options", [{"max_cost": Decimal("-1")}, {"max_cost": Decimal("1e30")}, {"completion_window": 0}])
def test_the_python_api_refuses_the_option_values_the_cli_refuses(client, options):
    with pytest.raises(BadOption):  # before: a negative budget was stored, and every request refused
        client.submit([OK], **options)
    assert client.conn.keys("*") == []


def test_a_refused_single_request_says_why_in_its_message(client):
    """It said "1 line is invalid and no line is valid; nothing was enqueued (fix them)": the reason
    (model_not_found) was only in .errors."""
    from producer.submit import SubmissionRejected

    with pytest.raises(SubmissionRejected) as exc:
        client.submit_one({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert str(exc.value) == 'the request was refused, nothing was enqueued: model "openai/gpt-4o" not found'
    assert exc.value.errors[0].error.code == "model_not_found"


@pytest.mark.parametrize("option, value, said", [
    ("idempotency_key", "", "must not be empty"),
    ("completion_window", 400 * 86400.0, "at most 365 days"),
])
def test_an_empty_idempotency_key_and_a_window_past_a_year_are_refused(client, option, value, said):
    """Both were taken silently (a 99999-day window: its records expire after OTB_RESULT_TTL anyway)."""
    line = {"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BadOption, match=said):
        client.submit([line], **{option: value})


def test_a_metadata_pair_with_an_empty_key_is_refused():
    from producer.options import parse_metadata

    with pytest.raises(BadOption, match="empty KEY"):
        parse_metadata(["=v"])
    assert parse_metadata(["k=a=b"]) == {"k": "a=b"}
