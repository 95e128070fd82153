"""Exact money: USD as Decimal, stored as integer pico-dollars (1e-12 USD), and the cost buckets.

Kept apart from pricing.py (which needs the registry and pydantic) so that reading stored figures,
as `otb status` and the store do, loads no more than Decimal.
"""

from __future__ import annotations

from decimal import Decimal

PICO = Decimal("0.000000000001")  # aggregates in Redis are integers of 1e-12 USD
COST_FIELDS = ("input", "cache_read", "cache_write", "output", "total")  # a Cost's fields, as every line shows them
COST_BUCKETS = tuple(name for name in COST_FIELDS if name != "total")  # what `total` adds up


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
