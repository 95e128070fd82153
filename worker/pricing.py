"""cost(usage, pricing, on) -> Cost. Pure and exact: Decimal from registry prices and token counts.

Rates are USD per 1M tokens. The size tier is chosen by every prompt token (uncached + cache
reads + cache writes) and, once crossed, re-prices the whole request. The price row is the one in
effect on the day the request ran (UTC), so dated price changes apply from their date on.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from .errors import RequestFailed
from .registry import ModelSpec, Rates
from .schemas import COST_FIELDS, Cost, Usage

MILLION = Decimal(1_000_000)
PICO = Decimal("0.000000000001")  # aggregates in Redis are integers of 1e-12 USD
COST_BUCKETS = tuple(name for name in COST_FIELDS if name != "total")  # what `total` adds up


class PriceMissing(RequestFailed):
    code = "price_missing"
    type = "api_error"
    status_code = 500


def rates_for(spec: ModelSpec, usage: Usage, on: dt.date) -> Rates:
    """The rates that bill this usage: dated row first, then the highest size tier crossed."""
    if spec.pricing is None:
        raise PriceMissing(f'model "{spec.id}" has no price in the registry; refusing to bill it at $0')
    rates, tiers = spec.pricing.in_effect(on)
    for tier in tiers:  # ascending; last crossed wins
        if usage.prompt_tokens > tier.above_input_tokens:
            rates = tier.rates()
    return rates


def cost(usage: Usage, spec: ModelSpec, on: dt.date) -> Cost:
    r = rates_for(spec, usage, on)
    write_1h = r.cache_write_1h if r.cache_write_1h is not None else r.cache_write * 2
    parts = {  # COST_BUCKETS
        "input": usage.input_tokens * r.input,
        "cache_read": usage.cache_read_tokens * r.cache_read,
        "cache_write": usage.cache_write_5m_tokens * r.cache_write + usage.cache_write_1h_tokens * write_1h,
        "output": usage.output_tokens * r.output,
    }
    scaled = {k: normalize(v / MILLION) for k, v in parts.items()}
    return Cost(**scaled, total=normalize(sum(scaled.values(), Decimal(0))))


def to_pico(amount: Decimal) -> int:
    """Exact integer pico-dollars (prices have at most 6 decimals, so this never rounds)."""
    pico = amount / PICO
    if pico != pico.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of pico-dollars")
    return int(pico)


def from_pico(pico: int) -> Decimal:
    return normalize(Decimal(pico) * PICO)


def normalize(d: Decimal) -> Decimal:
    """Drop trailing zeros without scientific notation: 0.000150 -> 0.00015, 3.000 -> 3."""
    if d == 0:
        return Decimal(0)
    n = d.normalize()
    return n.quantize(Decimal(1)) if n == n.to_integral_value() else n
