"""Reports come from the running aggregates and agree with the result lines to the last digit."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal

import fakeredis
import pytest

from producer.client import Client
from producer.control import retry
from producer.local import drain
from producer.report import Query, build_report, render_csv, render_table, total_of_lines
from worker import clock
from worker.settings import Settings

from .conftest import ROOT


@pytest.fixture
def finished(emulator, registry):  # type: ignore[no-untyped-def]
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    settings = Settings(anthropic_base_url=emulator.url, google_base_url=emulator.url, registry_path=ROOT / "registry.json",
                        api_keys={"anthropic": "k", "google": "k"}, max_attempts=1)
    client = Client(conn, settings, registry)
    reqs = [{"custom_id": f"c{i}", "model": m, "messages": [{"role": "user", "content": f"question {i}"}]}
            for i, m in enumerate(["anthropic/claude-haiku-5-5", "google/gemini-3-flash", "google/gemini-3.5-flash",
                                   "anthropic/claude-sonnet-4-5"] * 5)]
    reqs.append({"custom_id": "e", "model": "google/gemini-embedding-001", "input": ["a", "b"]})
    reqs.append({"custom_id": "bad", "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "#emu:fail=400"}]})
    reqs.append({"custom_id": "nope", "model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    a = client.submit(reqs, keep_valid=True, metadata={"app": "search", "customer": "acme"})
    b = client.submit(reqs[:4], metadata={"app": "chat"})
    drain(conn, settings)
    return conn, settings, client, a, b


def test_report_total_equals_the_sum_of_result_lines_in_every_format(finished):
    conn, settings, client, a, b = finished
    lines = list(client.results(a))
    report = build_report(conn, "otb", Query(group_by=["model"], batch=a))
    expected = total_of_lines(lines)
    assert Decimal(report["total"]["cost"]["total"]) == expected > 0
    assert report["total"]["requests"] == len(lines) == 23
    assert sum(Decimal(r["cost"]["total"]) for r in report["rows"]) == expected
    assert report["total"]["succeeded"] == sum(1 for ln in lines if ln["meta"]["outcome"] == "succeeded")
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert rows[-1]["model"] == "total" and Decimal(rows[-1]["cost_total_usd"]) == expected
    assert sum(Decimal(r["cost_total_usd"]) for r in rows[:-1]) == expected
    assert render_table(report).splitlines()[-3].endswith(format(expected, "f"))
    assert json.loads(json.dumps(report))["total"]["cost"]["total"] == format(expected, "f")
    for bucket in ("input", "cache_read", "cache_write", "output"):
        assert Decimal(report["total"]["cost"][bucket]) == sum(Decimal(ln["cost"][bucket]) for ln in lines)


def test_errors_and_rerouted_models_are_part_of_the_report(finished):
    conn, _, _, a, _ = finished
    report = build_report(conn, "otb", Query(group_by=["model"], batch=a))
    assert report["errors"] == {"invalid_argument": 1, "model_not_found": 1}  # Gemini 400 + a refused line
    assert report["rerouted"] == [{"model": "google/gemini-3.5-flash", "billed_model": "google/gemini-3.6-flash", "requests": 5}]
    assert "google/gemini-3.5-flash -> google/gemini-3.6-flash" in {r["group"]["model"] for r in report["rows"]}


def test_grouping_and_filters(finished):
    conn, _, client, a, b = finished
    both = total_of_lines(client.results(a)) + total_of_lines(client.results(b))
    by_batch = build_report(conn, "otb", Query(group_by=["batch", "provider"]))
    assert Decimal(by_batch["total"]["cost"]["total"]) == both
    assert {r["group"]["batch"] for r in by_batch["rows"]} == {a, b}
    by_app = build_report(conn, "otb", Query(group_by=["tag:app"]))
    assert {r["group"]["tag:app"] for r in by_app["rows"]} == {"search", "chat"}
    chat_only = build_report(conn, "otb", Query(tags={"app": "chat"}))
    assert Decimal(chat_only["total"]["cost"]["total"]) == total_of_lines(client.results(b))
    google = build_report(conn, "otb", Query(provider="google", batch=a))
    assert all(r["group"]["model"].startswith("google/") for r in google["rows"])
    day = clock.today()
    by_day = build_report(conn, "otb", Query(group_by=["day"], since=dt.datetime.combine(day, dt.time())))
    assert [r["group"]["day"] for r in by_day["rows"]] == [day.isoformat()]
    future = build_report(conn, "otb", Query(since=dt.datetime.combine(day + dt.timedelta(days=2), dt.time())))
    assert future["rows"] == [] and future["total"]["requests"] == 0


def test_retry_keeps_the_aggregates_exact(finished, emulator):
    conn, settings, client, a, _ = finished
    assert retry(conn, settings, a) == 1  # the 400; the refused line has no body to resend
    drain(conn, settings)
    report = build_report(conn, "otb", Query(batch=a))
    lines = list(client.results(a))
    assert report["total"]["requests"] == len(lines) == 23
    assert Decimal(report["total"]["cost"]["total"]) == total_of_lines(lines)
