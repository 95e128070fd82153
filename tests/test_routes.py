"""How a line picks its route (worker/routes.py), how the mode is chosen and refused, and how a route
shows in the aggregates. Pure: no Redis, no HTTP."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from producer.options import BadOption, SubmitOptions
from worker import aggregates, routes
from worker.providers.base import Parsed
from worker.registry import Registry
from worker.schemas import Usage
from worker.settings import Settings

DAY = dt.date(2026, 11, 27)
S = Settings()
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def plan(registry: Registry, mode: str, model: str, *, kind: str = "chat", window: float | None = None,
         left: float | None = None, settings: Settings = S, **body: Any) -> routes.Route:
    spec = registry.resolve(model, today=DAY)
    meta: dict[str, Any] = {}
    route = routes.plan(mode, spec, kind, {**CHAT, **body}, settings, window=window,
                        seconds_left=window if left is None else left, meta=meta)
    assert meta["route"] == route.name  # the result line says it as it is decided
    return route


def test_the_default_mode_is_auto_only_with_a_window_of_an_hour_or_more() -> None:
    assert SubmitOptions().resolved_mode(S) == "realtime"
    assert SubmitOptions(completion_window=3599).resolved_mode(S) == "realtime"
    assert SubmitOptions(completion_window=3600).resolved_mode(S) == "auto"
    assert SubmitOptions(completion_window=86400, mode="realtime").resolved_mode(S) == "realtime"
    assert SubmitOptions(completion_window=7200).resolved_mode(Settings(auto_min_window=10800)) == "realtime"


def test_native_mode_is_taken_and_an_unknown_mode_refused_in_one_line() -> None:
    assert SubmitOptions(mode="native").mode == "native"
    with pytest.raises(BadOption, match="'cheap' is not a mode") as exc:
        SubmitOptions(mode="cheap")
    assert exc.value.option == "--mode" and "\n" not in exc.value.message


def test_the_mode_is_recorded_for_the_workers_and_binds_an_idempotency_key() -> None:
    options = SubmitOptions(completion_window=7200)
    assert options.record_options(S)["mode"] == "auto" and options.record_options(S)["completion_window"] == 7200
    assert SubmitOptions(mode="flex").fingerprint() != SubmitOptions().fingerprint()


def test_realtime_mode_sends_everything_standard(registry: Registry) -> None:
    for model in ("google/gemini-3-flash", "anthropic/claude-haiku-5-5"):
        route = plan(registry, "realtime", model)
        assert route.name == "realtime" and route.notes == []


def test_flex_mode_sends_gemini_chat_to_flex_with_its_allowance(registry: Registry) -> None:
    route = plan(registry, "flex", "google/gemini-3-flash")
    # no window: OTB_FLEX_MAX_WAIT (1200), but the chunk must end within its job: 3600 / 2 - 900 (one flex call)
    assert route.name == "flex" and route.flex_for == 900
    long_jobs = Settings(job_timeout=14400, flex_max_wait=3600)
    assert plan(registry, "flex", "google/gemini-3-flash", settings=long_jobs).flex_for == 3600
    # a 2 h window with 1 h left: 3600 - 720 (10% margin) - 900 (one flex call) = 1980 s of flex tries
    assert plan(registry, "flex", "google/gemini-3-flash", window=7200, left=3600, settings=long_jobs).flex_for == 1980
    late = plan(registry, "flex", "google/gemini-3-flash", window=7200, left=1500)
    assert late.name == "realtime" and "no time is left for a flex call" in late.meta["route_note"]


def test_a_chat_line_planned_native_in_a_chunk_was_handed_back_and_runs_in_real_time(registry: Registry) -> None:
    """Native chat lines never reach a chunk (submit sets them aside for worker/native) unless their
    provider batch handed them back: then they run in real time, and say why."""
    for model, window in (("anthropic/claude-haiku-5-5", 7200), ("google/gemini-3-flash", 2 * 86400)):
        route = plan(registry, "auto", model, window=window)
        assert route.name == "realtime" and route.meta["route_note"] == routes.NATIVE_FELL_BACK
    short = plan(registry, "auto", "google/gemini-3-flash", window=7200)
    assert short.name == "flex" and short.notes == []  # a short window: flex is auto's own choice
    emb = plan(registry, "auto", "google/gemini-embedding-001", kind="embedding", window=2 * 86400)
    assert emb.name == "realtime" and emb.meta["route_note"] == routes.NATIVE_FELL_BACK  # handed back
    short = plan(registry, "auto", "google/gemini-embedding-001", kind="embedding", window=7200)
    assert short.name == "realtime" and "route_note" not in short.meta  # a short window: real time is auto's choice


def test_a_line_service_tier_overrides_the_mode(registry: Registry) -> None:
    assert plan(registry, "realtime", "google/gemini-3-flash", service_tier="flex").name == "flex"
    assert plan(registry, "flex", "google/gemini-3-flash", service_tier="default").name == "realtime"
    assert plan(registry, "flex", "google/gemini-3-flash", service_tier="auto").name == "flex"
    dropped = plan(registry, "realtime", "anthropic/claude-haiku-5-5", service_tier="flex")  # --drop-unsupported-params
    assert dropped.name == "realtime" and "has no flex tier" in dropped.meta["route_note"]


def test_flex_mode_refuses_models_without_a_flex_tier_naming_them(registry: Registry) -> None:
    claude = registry.resolve("anthropic/claude-haiku-5-5", today=DAY)
    why = routes.refusal("flex", claude, "chat", CHAT)
    assert why is not None and "anthropic/claude-haiku-5-5 has no flex tier" in why and "Message Batches" in why
    assert routes.refusal("flex", claude, "chat", {**CHAT, "service_tier": "default"}) is None
    assert routes.refusal("auto", claude, "chat", CHAT) is None
    emb = registry.resolve("google/gemini-embedding-001", today=DAY)
    assert "no flex tier" in (routes.refusal("flex", emb, "embedding", {"input": "x"}) or "")


def test_the_tier_billed_comes_from_the_answer_else_from_the_route(registry: Registry) -> None:
    spec = registry.resolve("google/gemini-3-flash", today=DAY)
    usage = Usage(input_tokens=1000, output_tokens=1000)  # standard: 0.0005 + 0.003
    flex = routes.Route("flex")
    assert routes.bill(Parsed({}, usage), spec, flex, DAY).total == Decimal("0.00175")
    assert (flex.meta["service_tier"], flex.meta["saved"]) == ("flex", "0.00175")
    told = routes.Route("flex")  # the provider says it ran standard: standard it is, nothing saved
    assert routes.bill(Parsed({}, usage, service_tier="standard"), spec, told, DAY).total == Decimal("0.0035")
    assert (told.meta["service_tier"], told.meta["saved"]) == ("standard", "0")
    claude = registry.resolve("anthropic/claude-haiku-5-5", today=DAY)
    batch = routes.Route("realtime")
    assert routes.bill(Parsed({}, usage, service_tier="batch"), claude, batch, DAY).total == Decimal("0.0003")
    prio = routes.Route("realtime")
    assert routes.bill(Parsed({}, usage, service_tier="priority"), claude, prio, DAY).total == Decimal("0.0006")
    assert prio.meta["service_tier"] == "priority" and "priced at standard" in prio.meta["route_note"]


def _line(route: str | None, outcome: str = "succeeded", saved: str = "0") -> dict[str, Any]:
    meta = {"outcome": outcome, "model": "google/gemini-3-flash", "billed_model": "google/gemini-3-flash",
            "tags": {"k": "v"}, "saved": saved, **({"route": route} if route else {})}
    return {"meta": meta, "cost": {"input": "0.001", "cache_read": "0", "cache_write": "0", "output": "0", "total": "0.001"}}


def test_a_route_is_a_dimension_of_the_aggregates_and_realtime_fields_keep_their_old_form() -> None:
    realtime = aggregates.increments(_line("realtime"))
    assert realtime[0] == 'google/gemini-3-flash\x1fgoogle/gemini-3-flash\x1f{"k":"v"}\x1erequests'
    assert not any("saved" in f or "via_" in f for f in realtime[::2])
    flex = dict(zip(*[iter(aggregates.increments(_line("flex", saved="0.00175")))] * 2))
    dims, counter = aggregates.parse_field(next(iter(flex)))
    assert dims["route"] == "flex" and dims["tags"] == {"k": "v"} and dims["batch"] is None
    assert {counter for counter in (aggregates.parse_field(f)[1] for f in flex)} >= {"saved_pico", "via_flex"}
    assert flex[next(f for f in flex if f.endswith("saved_pico"))] == 1_750_000_000
    errored = aggregates.counters(_line("flex", outcome="errored"))
    assert "via_flex" not in errored  # `otb retry` takes errored lines back: only succeeded ones count per route
    old = 'batch_1\x1fgoogle/gemini-3-flash\x1fgoogle/gemini-3-flash\x1f{"k":"v"}\x1erequests'
    assert aggregates.parse_field(old)[0] == {"batch": "batch_1", "model": "google/gemini-3-flash",
                                              "billed_model": "google/gemini-3-flash", "tags": {"k": "v"},
                                              "route": "realtime"}


def test_native_margin_is_a_share_or_seconds() -> None:
    assert Settings.from_env({}).window_margin(3600) == 360
    assert Settings.from_env({"OTB_NATIVE_MARGIN": "600"}).window_margin(3600) == 600
    assert Settings.from_env({"OTB_NATIVE_MARGIN": "25%"}).window_margin(3600) == 900
    with pytest.raises(Exception, match="OTB_NATIVE_MARGIN must be"):
        Settings.from_env({"OTB_NATIVE_MARGIN": "lots"})
