"""Know the cost before (estimate) and cap it during (--max-cost)."""

from __future__ import annotations

import json
from decimal import Decimal

import fakeredis

from producer.batchfile import read_batch
from producer.client import Client
from producer.estimate import estimate
from producer.local import drain
from worker.settings import Settings

from .conftest import ROOT


def test_estimate_bounds_output_by_the_limit_and_prices_by_the_registry(registry):
    lines = [json.dumps({"model": "anthropic/claude-haiku-5-5", "max_tokens": 200,
                         "messages": [{"role": "user", "content": "x" * 400}]}).encode(),
             json.dumps({"model": "google/gemini-embedding-001", "input": ["y" * 40, "z" * 40]}).encode()]
    data = estimate(read_batch(lines, registry), registry)
    haiku, emb = data["rows"]
    assert (haiku["input_tokens"], haiku["output_tokens_max"], haiku["output_tokens_expected"]) == (100, 200, 200)
    # 100 * 0.10 + 200 * 0.50 per 1M tokens (Haiku 5.5)
    assert haiku["cost_max"] == haiku["cost_expected"] == "0.00011"
    assert (emb["input_tokens"], emb["cost_max"]) == (20, "0.000003")  # 20 * 0.15 per 1M
    assert data["kinds"]["cost_max"] == "bound" and data["kinds"]["cost_expected"] == "estimate"
    assert data["total"]["cost_max"] == "0.000113"


def test_a_budget_stops_requests_before_they_are_sent(emulator, registry):
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    settings = Settings(anthropic_base_url=emulator.url, google_base_url=emulator.url, registry_path=ROOT / "registry.json",
                        api_keys={"anthropic": "k", "google": "k"}, concurrency=4)
    client = Client(conn, settings, registry)
    reqs = [{"custom_id": f"b{i}", "model": "anthropic/claude-sonnet-4-5", "max_tokens": 100,
             "messages": [{"role": "user", "content": f"question number {i}"}]} for i in range(20)]
    bid = client.submit(reqs, max_cost=Decimal("0.005"))  # worst case per request ~ $0.0015
    calls_before = emulator.stats()["calls"]
    drain(conn, settings)
    status = client.status(bid)
    lines = list(client.results(bid))
    assert len(lines) == 20 and status["status"] == "completed"
    assert Decimal(status["cost"]["total"]) <= Decimal("0.005")
    refused = [ln for ln in lines if ln["error"] and ln["error"]["code"] == "budget_exceeded"]
    sent = [ln for ln in lines if ln["meta"]["outcome"] == "succeeded"]
    assert refused and sent and len(refused) + len(sent) == 20
    assert emulator.stats()["calls"] - calls_before == len(sent)  # refused ones were never sent
    assert status["max_cost"] == "0.005"


def test_estimate_by_mode_prices_each_line_on_its_route_and_shows_the_saving(registry):
    lines = [json.dumps({"model": "google/gemini-3-flash", "max_tokens": 200,
                         "messages": [{"role": "user", "content": "x" * 400}]}).encode(),
             json.dumps({"model": "anthropic/claude-haiku-5-5", "max_tokens": 200,
                         "messages": [{"role": "user", "content": "x" * 400}]}).encode()]
    data = estimate(read_batch(lines, registry, mode="auto"), registry, mode="auto", window=7200)
    gemini, claude = sorted(data["rows"], key=lambda r: r["model"], reverse=True)
    # flex: 100 * 0.25 + 200 * 1.5 per 1M, against 100 * 0.5 + 200 * 3.0 in real time
    assert (gemini["route"], gemini["cost_max"], gemini["saved_expected"]) == ("flex", "0.000325", "0.000325")
    # auto sends Claude to Message Batches: half of 100 * 0.1 + 200 * 0.5 per 1M in real time
    assert (claude["route"], claude["cost_max"], claude["saved_expected"]) == ("native", "0.000055", "0.000055")
    assert data["mode"] == "auto" and data["total"]["saved_expected"] == "0.00038"
    flex_only = read_batch(lines, registry, mode="flex")
    assert [e.number for e in flex_only.errors] == [2] and "has no flex tier" in str(flex_only.errors[0])
