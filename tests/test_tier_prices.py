"""Batch and flex prices: the registry's lists per model, their checks, and pricing at the tier billed.

Every expected figure is worked by hand from registry.json (USD per 1M tokens).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest

from worker.errors import ConfigError
from worker.pricing import PriceMissing, cost, priced_tier
from worker.registry import Registry, parse_registry
from worker.schemas import Usage

from .conftest import ROOT

DAY = dt.date(2026, 11, 27)
RAW = json.loads((ROOT / "registry.json").read_text())


def test_every_callable_model_has_a_batch_list_and_only_gemini_chat_has_flex(registry: Registry) -> None:
    for spec in registry.callable_models(DAY):
        assert spec.pricing is not None and spec.pricing.batch is not None, spec.id
        gemini_chat = spec.provider == "google" and spec.kind == "chat"
        assert (spec.pricing.flex is not None) == gemini_chat, spec.id


def test_anthropic_batch_is_half_of_every_bucket_cache_reads_and_writes_included(registry: Registry) -> None:
    spec = registry.resolve("anthropic/claude-sonnet-4-5", today=DAY)
    usage = Usage(input_tokens=1000, cache_read_tokens=2000, cache_write_5m_tokens=500,
                  cache_write_1h_tokens=100, output_tokens=300)
    c = cost(usage, spec, DAY, "batch")
    # 1000*1.5 + 2000*0.15 + (500*1.875 + 100*3) + 300*7.5 per 1M (standard: 0.010575)
    assert (c.input, c.cache_read, c.cache_write, c.output) == (
        Decimal("0.0015"), Decimal("0.0003"), Decimal("0.0012375"), Decimal("0.00225"))
    assert c.total == Decimal("0.0052875") == cost(usage, spec, DAY).total / 2


def test_anthropic_batch_keeps_the_size_tier(registry: Registry) -> None:
    spec = registry.resolve("anthropic/claude-haiku-5-5", today=DAY)
    big = Usage(input_tokens=100_001, output_tokens=1000)
    # above 100K the whole request bills at the tier: 100001*0.25 + 1000*1.25 per 1M (standard tier 0.5/2.5)
    assert cost(big, spec, DAY, "batch").total == Decimal("0.02625025")
    assert cost(big, spec, DAY).total == Decimal("0.0525005")


def test_gemini_batch_halves_input_and_output_but_not_cache_hits(registry: Registry) -> None:
    spec = registry.resolve("google/gemini-3-flash", today=DAY)
    usage = Usage(input_tokens=1200, cache_read_tokens=800, output_tokens=400, reasoning_tokens=150)
    c = cost(usage, spec, DAY, "batch")
    # 1200*0.25 + 800*0.05 (the standard cached rate) + 400*1.5
    assert (c.input, c.cache_read, c.output, c.total) == (
        Decimal("0.0003"), Decimal("0.00004"), Decimal("0.0006"), Decimal("0.00094"))


def test_gemini_flex_is_half_of_everything(registry: Registry) -> None:
    spec = registry.resolve("google/gemini-3-flash", today=DAY)
    usage = Usage(input_tokens=1200, cache_read_tokens=800, output_tokens=400)
    c = cost(usage, spec, DAY, "flex")
    # 1200*0.25 + 800*0.025 + 400*1.5 (standard: 0.00184)
    assert (c.input, c.cache_read, c.output, c.total) == (
        Decimal("0.0003"), Decimal("0.00002"), Decimal("0.0006"), Decimal("0.00092"))
    assert c.total * 2 == cost(usage, spec, DAY).total


def test_a_dated_change_moves_the_discounted_prices_on_the_same_day(registry: Registry) -> None:
    spec = registry.resolve("google/gemini-4-argon", today=DAY)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    before, after = dt.date(2026, 11, 30), dt.date(2026, 12, 1)
    assert cost(usage, spec, before, "flex").total == Decimal("6")  # 1 + 5
    assert cost(usage, spec, after, "flex").total == Decimal("12")  # 2 + 10: doubled with the standard price
    assert cost(usage, spec, after, "batch").total == Decimal("12")
    assert cost(usage, spec, after).total == Decimal("24")


def test_a_tier_the_registry_does_not_price_is_billed_as_standard_never_zero(registry: Registry) -> None:
    claude = registry.resolve("anthropic/claude-haiku-5-5", today=DAY)
    assert priced_tier(claude, "priority") == "standard" and priced_tier(claude, "flex") == "standard"
    assert priced_tier(claude, "batch") == "batch"
    with pytest.raises(PriceMissing, match="no flex prices"):
        cost(Usage(input_tokens=10), claude, DAY, "flex")


# -- the loader's checks ------------------------------------------------------------------------
def _with(model_id: str, edit: Any) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    edit(next(m for m in raw["models"] if m["id"] == model_id)["pricing"])
    return raw


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["flex"].pop("changes"), "flex.changes must have the same 'effective' dates"),
    (lambda p: p["batch"]["changes"][0].update(effective="2026-12-02"), "batch.changes must have the same 'effective'"),
    (lambda p: p["flex"]["changes"][0].pop("cache_read"), "must change the same fields"),
    (lambda p: p["flex"].update(output=11), "flex.output is above the standard price"),
    (lambda p: p["flex"]["changes"][0].update(input=5), "flex.input is above the standard price from 2026-12-01"),
    (lambda p: p["batch"].update(input="1e400"), "pricing.batch.input: a price must be below"),
])
def test_a_discounted_list_that_does_not_follow_the_standard_one_is_refused(edit: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        parse_registry(_with("google/gemini-4-argon", edit), source="r.json")
    assert 'models[' in str(exc.value) and "google/gemini-4-argon" in str(exc.value)


def test_size_tiers_must_match_too() -> None:
    def drop_tier(p: dict[str, Any]) -> None:
        p["batch"]["tiers"] = []

    with pytest.raises(ConfigError, match="batch.tiers must have the same above_input_tokens"):
        parse_registry(_with("anthropic/claude-haiku-5-5", drop_tier), source="r.json")


def test_the_models_api_keeps_its_shape_without_tier_prices(registry: Registry) -> None:
    entry = next(m for m in registry.catalog(DAY)["data"] if m["id"] == "google/gemini-3-flash")
    assert set(entry) == {"id", "object", "owned_by", "pricing"}
    assert set(entry["pricing"]) == {"input", "output", "cache_read", "cache_write"}
