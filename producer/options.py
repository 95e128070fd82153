"""SubmitOptions: what a submission asks for besides its requests, as one object.

The CLI, `Client` and (later) the HTTP API build the same object and hand it to the same
`submit`; they differ only in how they read input and show output. It is also the one place that
knows how the options are written into the batch record (`record_options`) and which of them bind
an idempotency key (`fingerprint`), so an option added here reaches every path at once.

The text parsers (`parse_duration`, `parse_usd`, `parse_metadata`) read what a user types
(`24h`, `$5`, `k=v`) and raise `BadOption` naming the option, which the CLI shows as a bad
parameter and an HTTP layer as a 400.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from worker.pricing import to_pico
from worker.routes import MODES, UNAVAILABLE_MODES, default_mode
from worker.settings import Settings

MAX_USD = Decimal(2**63 - 1).scaleb(-12).quantize(Decimal(1), rounding="ROUND_FLOOR")  # Redis integers, in pico-USD
PICO_USD = Decimal("0.000000000001")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadOption(ValueError):
    """An option value that cannot be used; `option` names it as the CLI spells it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


@dataclass(frozen=True)
class SubmitOptions:
    """Everything a submission asks for besides its requests.

    keep_valid: enqueue the valid lines and store bad ones as errored results (else one bad line
        refuses the file). drop_unsupported_params: send requests without the parameters their model
        would reject. metadata: tags on every result. completion_window: seconds until what is not
        done ends `batch_expired`. idempotency_key: the same key and requests return the same batch.
        max_cost: a budget in USD (exact to the pico-dollar). mode: how the lines run (worker/routes.py:
        auto, realtime, flex; native is refused until it exists); None: `auto` with a completion window
        of at least OTB_AUTO_MIN_WINDOW (1 h), else `realtime`.
        endpoint: every line's `url` must be this one (the Batch API's `endpoint`; a short-form
        line counts as the endpoint of its kind).
        pool: the tenant (API key name) whose spend the batch's commits add to; pool_max_cost: that
        key's --max-cost, a budget its batches and calls share (worker/budget.py), besides max_cost.
    """

    keep_valid: bool = False
    drop_unsupported_params: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    completion_window: float | None = None
    idempotency_key: str | None = None
    max_cost: Decimal | None = None
    mode: str | None = None
    endpoint: str | None = None
    pool: str | None = None
    pool_max_cost: Decimal | None = None

    def __post_init__(self) -> None:
        if self.completion_window is not None:
            _check_window(self.completion_window)
        if self.mode is not None:
            _check_mode(self.mode)
        if self.max_cost is not None:
            object.__setattr__(self, "max_cost", _check_usd(self.max_cost, str(self.max_cost)))
        if self.idempotency_key is not None and not self.idempotency_key.strip():
            raise BadOption("idempotency_key", "must not be empty (leave it out for none)")
        object.__setattr__(self, "metadata", dict(self.metadata or {}))

    def resolved_mode(self, settings: Settings) -> str:
        """The mode the batch runs in: the one asked for, else the default its completion window gives."""
        return self.mode or default_mode(self.completion_window, settings)

    def record_options(self, settings: Settings) -> dict[str, Any]:
        """The batch record's `options` field, what workers read back (the budget lives only here)."""
        out: dict[str, Any] = {"drop_unsupported_params": self.drop_unsupported_params, "keep_valid": self.keep_valid,
                               "mode": self.resolved_mode(settings)}
        if self.completion_window is not None:
            out["completion_window"] = self.completion_window
        if self.max_cost is not None:
            out["max_cost_pico"] = to_pico(self.max_cost)
        if self.pool:
            out["pool"] = self.pool
        if self.pool_max_cost is not None:
            out["pool_max_pico"] = to_pico(self.pool_max_cost)
        return out

    @property
    def budgeted(self) -> bool:
        """Its calls hold their worst case before they are sent (so none goes to a provider's batch API)."""
        return self.max_cost is not None or self.pool_max_cost is not None

    def fingerprint(self) -> str:
        """The options an idempotency key is bound to: every one that changes what the batch does."""
        bound = [self.keep_valid, self.drop_unsupported_params, self.metadata, self.completion_window,
                 str(self.max_cost) if self.max_cost is not None else None, self.mode]
        pooled = [self.pool, str(self.pool_max_cost) if self.pool_max_cost is not None else None]
        return json.dumps(bound + ([self.endpoint] if self.endpoint else []) + (["pool", *pooled] if self.pool else []),
                          sort_keys=True)


def parse_duration(text: str | None, option: str = "--completion-window") -> float | None:
    """A number and a unit (24h, 90m, 3600s, 2d): a bare 3 is refused rather than read as 3 seconds."""
    if not text:
        return None
    number, unit = text[:-1], text[-1:]
    try:
        value = float(number) * DURATION_UNITS[unit]
    except (ValueError, KeyError):
        raise BadOption(option, f"{text!r} is not a duration: give a number and a unit, such as 24h, 90m, 3600s "
                                "or 2d") from None
    return _check_window(value, option)


def parse_usd(text: str | None, option: str = "--max-cost") -> Decimal | None:
    """An amount in USD (`25`, `0.50`, `$5`), exact to the pico-dollar."""
    if text is None:
        return None
    try:
        value = Decimal(text.lstrip("$"))
    except ArithmeticError:
        raise BadOption(option, f"{text!r} is not an amount in USD such as 25 or 0.50") from None
    return _check_usd(value, text, option)


def parse_metadata(pairs: Iterable[str], option: str = "--metadata") -> dict[str, str]:
    """KEY=VALUE pairs (the value may hold `=`)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise BadOption(option, f"{pair!r} is not KEY=VALUE")
        k, v = pair.split("=", 1)
        if not k.strip():
            raise BadOption(option, f"{pair!r} has an empty KEY")
        out[k] = v
    return out


def _check_mode(mode: str, option: str = "--mode") -> str:
    if mode not in MODES:
        raise BadOption(option, f"{mode!r} is not a mode: use {', '.join(MODES)}")
    if mode in UNAVAILABLE_MODES:
        raise BadOption(option, UNAVAILABLE_MODES[mode])
    return mode


MAX_WINDOW_S = 365 * 24 * 3600  # a batch's records live OTB_RESULT_TTL (7 days by default) in any case


def _check_window(value: float, option: str = "completion_window") -> float:
    if not 0 < value < float("inf"):
        raise BadOption(option, "must be positive")
    if value > MAX_WINDOW_S:
        raise BadOption(option, "must be at most 365 days (a batch's records live OTB_RESULT_TTL, 7 days by default)")
    return value


def _check_usd(value: Decimal, text: str, option: str = "max_cost") -> Decimal:
    if not value.is_finite() or value <= 0:
        raise BadOption(option, "must be a positive amount")
    if value > MAX_USD:
        raise BadOption(option, f"{text!r} is more than the largest budget, {MAX_USD} USD "
                                "(leave --max-cost out for no budget)")
    return value.quantize(PICO_USD)
