"""cost(usage, pricing, on) -> Cost. Pure and exact: Decimal from registry prices and token counts.

Rates are USD per 1M tokens. The size tier is chosen by every prompt token (uncached + cache
reads + cache writes) and, once crossed, re-prices the whole request. The price row is the one in
effect on the day the request ran (UTC), so dated price changes apply from their date on.

`service_tier` picks the price list the provider billed: `standard`, or the half-price `batch` and
`flex` lists of the registry (Anthropic batch: every bucket at 50%; Gemini batch: cache hits at the
standard rate; Gemini flex: 50%). A tier the model has no list for is PriceMissing, never $0:
`priced_tier` says which list a reported tier bills at before pricing.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from .errors import RequestFailed
from .money import COST_BUCKETS, PICO, from_pico, normalize, to_pico
from .registry import ModelSpec, Rates
from .schemas import Cost, Usage

__all__ = ["COST_BUCKETS", "PICO", "PriceMissing", "STANDARD", "cost", "from_pico", "normalize", "priced_tier", "rates_for",
           "to_pico"]  # the money helpers live in money.py; their old home still offers them



class PriceMissing(RequestFailed):
    code = "price_missing"
    type = "api_error"
    status_code = 500


STANDARD = "standard"


def rates_for(spec: ModelSpec, usage: Usage, on: dt.date, service_tier: str = STANDARD) -> Rates:
    """The rates that bill this usage: the tier's price list, its dated row, then the highest size tier crossed."""
    if spec.pricing is None:
        raise PriceMissing(f'model "{spec.id}" has no price in the registry; refusing to bill it at $0')
    prices = spec.pricing.for_tier(service_tier)
    if prices is None:
        raise PriceMissing(f'model "{spec.id}" has no {service_tier} prices in the registry')
    rates, tiers = prices.in_effect(on)
    for tier in tiers:  # ascending; last crossed wins
        if usage.prompt_tokens > tier.above_input_tokens:
            rates = tier.rates()
    return rates


def priced_tier(spec: ModelSpec, service_tier: str) -> str:
    """The price list a reported service tier bills at: its own, else standard (a tier the registry
    does not price, such as Anthropic's `priority`, is billed as standard, never as $0)."""
    if spec.pricing is not None and spec.pricing.for_tier(service_tier) is not None:
        return service_tier
    return STANDARD


def cost(usage: Usage, spec: ModelSpec, on: dt.date, service_tier: str = STANDARD) -> Cost:
    r = rates_for(spec, usage, on, service_tier)
    write_1h = r.cache_write_1h if r.cache_write_1h is not None else r.cache_write * 2
    # per 1M tokens (scaleb: exact, as a division by 1e6 was), each bucket of COST_BUCKETS
    inp = normalize((usage.input_tokens * r.input).scaleb(-6))
    read = normalize((usage.cache_read_tokens * r.cache_read).scaleb(-6))
    write = normalize((usage.cache_write_5m_tokens * r.cache_write + usage.cache_write_1h_tokens * write_1h).scaleb(-6))
    out = normalize((usage.output_tokens * r.output).scaleb(-6))
    # Decimals we made ourselves: no validation pass (a pydantic round on every result)
    return Cost.model_construct(input=inp, cache_read=read, cache_write=write, output=out,
                                total=normalize(inp + read + write + out))
