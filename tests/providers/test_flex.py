"""The Gemini flex route over real HTTP to the emulator: `serviceTier: flex` on the wire, the tier read
back from the answer, sheds retried in flex while the allowance lasts, then the standard tier.

Job level (fakeredis + the in-process worker); retry pauses return at once (tests/conftest.py), so an
allowance is spent by the pauses the flex policy would have slept.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import fakeredis
import httpx
import pytest

from producer.client import Client
from producer.local import drain
from producer.submit import SubmissionRejected
from worker.emulator import EmulatorConfig, start_background
from worker.providers import google
from worker.providers.base import UpstreamCall
from worker.settings import Settings

from ..conftest import ROOT

GEMINI = "google/gemini-3-flash"  # 0.5 / 3.0 per 1M; flex 0.25 / 1.5


def chat(cid: str, text: str, model: str = GEMINI, **extra: Any) -> dict[str, Any]:
    return {"custom_id": cid, "model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def batch(emulator, registry):  # type: ignore[no-untyped-def]
    """Submit, work to the end in this process, and hand back the results by custom_id and the status."""
    def run(requests: list[dict[str, Any]], settings: Settings | None = None, **options: Any):  # type: ignore[no-untyped-def]
        conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        settings = (settings or Settings()).with_(
            anthropic_base_url=emulator.url, google_base_url=emulator.url, registry_path=ROOT / "registry.json",
            api_keys={"anthropic": "sk-ant-test", "google": "gm-test"})
        client = Client(conn, settings, registry)
        bid = client.submit(requests, **options)
        drain(conn, settings)
        return {line["custom_id"]: line for line in client.results(bid)}, client.status(bid)

    return run


def test_the_flex_call_names_the_tier_at_the_top_of_the_body_with_a_long_timeout() -> None:
    call = UpstreamCall("POST", "/v1beta/models/gemini-3-flash-preview:generateContent", {"contents": []})
    flex = google.flex_call(call, 900)
    assert flex is not None and flex.json == {"contents": [], "serviceTier": "flex"} and flex.timeout == 900
    assert call.json == {"contents": []}  # the standard call is left as it was, for the fallback


def test_the_emulator_answers_flex_with_the_tier_and_sheds_as_asked(emulator) -> None:  # type: ignore[no-untyped-def]
    url = emulator.url + "/v1beta/models/gemini-3-flash-preview:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi #emu:shed-first=1:429"}]}]}
    with httpx.Client(headers={"x-goog-api-key": "k"}) as http:
        assert "serviceTier" not in http.post(url, json=body).json()["usageMetadata"]  # standard: not shed
        shed = http.post(url, json={**body, "serviceTier": "flex"})
        assert shed.status_code == 429 and shed.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        ok = http.post(url, json={**body, "serviceTier": "flex"})
        assert ok.status_code == 200 and ok.json()["usageMetadata"]["serviceTier"] == "flex"
        assert http.post(url, json={**body, "serviceTier": "turbo"}).status_code == 400


def test_a_flex_line_runs_in_flex_at_half_price(batch) -> None:  # type: ignore[no-untyped-def]
    lines, status = batch([chat("f", "half price please")], mode="flex")
    meta, usage = lines["f"]["meta"], lines["f"]["meta"]["usage"]
    assert (meta["route"], meta["service_tier"], meta["attempts"]) == ("flex", "flex", 1)
    expected = (usage["input_tokens"] * Decimal("0.25") + usage["output_tokens"] * Decimal("1.5")) / 1_000_000
    assert Decimal(lines["f"]["cost"]["total"]) == expected > 0
    assert Decimal(meta["saved"]) == expected  # exactly what it cost: flex is half of standard
    assert status["saved"] == meta["saved"] and status["succeeded_by_route"] == {"realtime": 0, "flex": 1, "native": 0}


def test_a_shed_flex_call_is_retried_in_flex(batch, emulator) -> None:  # type: ignore[no-untyped-def]
    before = emulator.stats()["by_status"].get("503", 0)
    lines, _ = batch([chat("s", "busy #emu:shed-first=2")], mode="flex")
    meta = lines["s"]["meta"]
    assert (meta["route"], meta["service_tier"], meta["attempts"]) == ("flex", "flex", 3)
    assert "route_note" not in meta
    assert emulator.stats()["by_status"]["503"] - before == 2


def test_a_flex_tier_that_keeps_shedding_goes_standard_once_the_allowance_is_spent(batch) -> None:  # type: ignore[no-untyped-def]
    lines, status = batch([chat("d", "down #emu:shed"), chat("u", "fine")], Settings(flex_max_wait=10), mode="flex")
    meta, usage = lines["d"]["meta"], lines["d"]["meta"]["usage"]
    assert (meta["route"], meta["service_tier"]) == ("realtime", "standard")
    assert "flex was unavailable (503)" in meta["route_note"] and meta["route_note"].endswith("sent standard")
    # pauses of 1, 2, 4, 8 s (each less up to 25% jitter: 5.25-7 s after three, 11.25-15 s after four) spend
    # the 10 s with the fifth flex try's shed: five flex tries, then one standard call
    assert meta["attempts"] == 6
    expected = (usage["input_tokens"] * Decimal("0.5") + usage["output_tokens"] * Decimal("3.0")) / 1_000_000
    assert Decimal(lines["d"]["cost"]["total"]) == expected and meta["saved"] == "0"
    assert lines["u"]["meta"]["route"] == "flex"
    assert status["succeeded_by_route"] == {"realtime": 1, "flex": 1, "native": 0}


def test_the_completion_window_bounds_the_flex_tries(batch) -> None:  # type: ignore[no-untyped-def]
    # a 2 h window with flex calls of up to 5,000 s: 7200 - 720 - 5000 = 1480 s of flex tries, however long
    # OTB_FLEX_MAX_WAIT and the chunk job's timeout allow. Pauses double from 1 s to the 60 s cap, each less up to 25% jitter, and a Retry-After
    # of 1 s does not shorten them: 30 to 38 flex tries, then the standard call
    long_calls = Settings(flex_timeout=5000, flex_max_wait=5000, job_timeout=20000)
    lines, _ = batch([chat("w", "down #emu:shed:429")], long_calls, mode="flex", completion_window=7200)
    meta = lines["w"]["meta"]
    assert meta["route"] == "realtime" and "flex was unavailable (429)" in meta["route_note"]
    assert 31 <= meta["attempts"] <= 39
    short, _ = batch([chat("x", "no time")], long_calls, mode="flex", completion_window=5500)  # 5500-550-5000 < 0
    assert short["x"]["meta"]["route"] == "realtime" and short["x"]["meta"]["attempts"] == 1
    assert "no time is left for a flex call" in short["x"]["meta"]["route_note"]


def test_a_random_shed_rate_is_absorbed_by_flex_retries(registry) -> None:  # type: ignore[no-untyped-def]
    emu = start_background(EmulatorConfig(flex_shed_rate=0.5, seed=7), registry)
    try:
        conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        settings = Settings(google_base_url=emu.url, registry_path=ROOT / "registry.json", api_keys={"google": "k"})
        client = Client(conn, settings, registry)
        bid = client.submit([chat(f"r{i}", f"question {i}") for i in range(20)], mode="flex")
        drain(conn, settings)
        lines = list(client.results(bid))
        assert all(line["meta"]["route"] == "flex" for line in lines)
        assert sum(line["meta"]["attempts"] for line in lines) == emu.stats()["calls"] > 20  # sheds were retried
    finally:
        emu.stop()


def test_auto_sends_anthropic_to_message_batches_and_gemini_to_flex(batch) -> None:  # type: ignore[no-untyped-def]
    lines, status = batch([chat("a", "hi", "anthropic/claude-haiku-5-5"), chat("g", "hi")], completion_window=7200)
    assert status["mode"] == "auto"
    a, g = lines["a"]["meta"], lines["g"]["meta"]
    assert (a["route"], a["service_tier"]) == ("native", "batch")  # the tier Anthropic's answer reports
    assert Decimal(a["saved"]) > 0 and "route_note" not in a
    assert (g["route"], g["service_tier"]) == ("flex", "flex")


def test_a_line_can_ask_for_flex_and_anthropic_says_it_has_none(batch) -> None:  # type: ignore[no-untyped-def]
    lines, _ = batch([chat("g", "hi", service_tier="flex")])
    assert lines["g"]["meta"]["route"] == "flex"
    with pytest.raises(SubmissionRejected) as refused:
        batch([chat("a", "hi", "anthropic/claude-haiku-5-5", service_tier="flex")])
    assert "Anthropic has no flex tier" in str(refused.value.errors[0])
    dropped, _ = batch([chat("a", "hi", "anthropic/claude-haiku-5-5", service_tier="flex")],
                       drop_unsupported_params=True)
    meta = dropped["a"]["meta"]
    assert meta["dropped_params"] == ["service_tier"] and meta["route"] == "realtime"
    assert meta["service_tier"] == "standard"


def test_flex_mode_refuses_anthropic_lines_at_submit(batch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SubmissionRejected) as refused:
        batch([chat("a", "hi", "anthropic/claude-haiku-5-5"), chat("g", "hi")], mode="flex")
    assert [e.number for e in refused.value.errors] == [1]
    assert "--mode flex: anthropic/claude-haiku-5-5 has no flex tier" in str(refused.value.errors[0])
