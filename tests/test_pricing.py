"""Pricing is exact and traceable: each expected figure below is worked by hand from registry.json."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from worker.pricing import PriceMissing, cost, from_pico, to_pico
from worker.registry import ModelSpec
from worker.schemas import Usage

DAY = dt.date(2026, 11, 27)


def test_anthropic_every_bucket_priced_at_its_own_rate(registry):
    spec = registry.resolve("anthropic/claude-sonnet-4-5", today=DAY)
    usage = Usage(input_tokens=1000, cache_read_tokens=2000, cache_write_5m_tokens=500,
                  cache_write_1h_tokens=100, output_tokens=300)
    c = cost(usage, spec, DAY)
    # 1000*3 + 2000*0.3 + (500*3.75 + 100*6) + 300*15 = 3000 + 600 + 2475 + 4500 per 1M
    assert c.input == Decimal("0.003")
    assert c.cache_read == Decimal("0.0006")
    assert c.cache_write == Decimal("0.002475")
    assert c.output == Decimal("0.0045")
    assert c.total == Decimal("0.010575")
    assert c.as_strings()["total"] == "0.010575"


def test_gemini_flash_catalog_prices(registry):
    spec = registry.resolve("google/gemini-3-flash", today=DAY)
    c = cost(Usage(input_tokens=1200, cache_read_tokens=800, output_tokens=400, reasoning_tokens=150), spec, DAY)
    # 1200*0.5 + 800*0.05 + 400*3.0 ; reasoning is inside output, not billed twice
    assert (c.input, c.cache_read, c.output, c.total) == (
        Decimal("0.0006"), Decimal("0.00004"), Decimal("0.0012"), Decimal("0.00184"))


def test_size_tier_reprices_the_whole_request_only_above_threshold(registry):
    spec = registry.resolve("anthropic/claude-haiku-5-5", today=DAY)
    at = Usage(input_tokens=90_000, cache_read_tokens=10_000, output_tokens=1000)
    above = Usage(input_tokens=90_000, cache_read_tokens=10_001, output_tokens=1000)
    # exactly 100,000 prompt tokens: base rates 0.10 / 0.01 / 0.50
    assert cost(at, spec, DAY).total == Decimal("0.0096")  # 9000 + 100 + 500 per 1M
    # 100,001: every token at the tier 0.50 / 0.05 / 2.50
    assert cost(above, spec, DAY).total == Decimal("0.04800005")  # 45000 + 500.05 + 2500 per 1M


def test_cache_writes_count_toward_the_tier(registry):
    spec = registry.resolve("google/gemini-3.1-pro", today=DAY)
    rates_low = cost(Usage(input_tokens=200_000, output_tokens=10), spec, DAY)
    rates_high = cost(Usage(input_tokens=199_000, cache_read_tokens=1_001, output_tokens=10), spec, DAY)
    assert rates_low.input == Decimal("0.4")  # 200,000 * 2.00
    assert rates_high.input == Decimal("0.796")  # 199,000 * 4.00
    assert rates_high.cache_read == Decimal("0.0004004")  # 1,001 * 0.40


def test_dated_price_change_applies_from_its_day(registry):
    spec = registry.resolve("google/gemini-4-argon", today=DAY)
    usage = Usage(input_tokens=1000, output_tokens=1000)
    assert cost(usage, spec, dt.date(2026, 11, 30)).total == Decimal("0.012")  # 2 + 10
    assert cost(usage, spec, dt.date(2026, 12, 1)).total == Decimal("0.024")  # 4 + 20


def test_one_hour_writes_fall_back_to_twice_the_5m_rate_when_unlisted():
    spec = ModelSpec.model_validate({
        "id": "google/x", "provider": "google", "upstream": "x", "kind": "chat",
        "pricing": {"input": 1, "output": 1, "cache_read": 0.1, "cache_write": 1.25},
    })
    assert cost(Usage(cache_write_1h_tokens=1_000_000), spec, DAY).cache_write == Decimal("2.5")


def test_a_model_without_price_is_an_error_not_zero(registry):
    retired = registry.models["anthropic/claude-opus-4-1"]
    assert retired.pricing is None
    with pytest.raises(PriceMissing, match="refusing to bill it at \\$0"):
        cost(Usage(input_tokens=1), retired, DAY)


def test_pico_dollars_round_trip_exactly():
    for amount in ("0.0000615", "0.04800005", "123.456789", "0"):
        d = Decimal(amount)
        assert from_pico(to_pico(d)) == d
    with pytest.raises(ValueError):
        to_pico(Decimal("0.0000000000001"))
