"""How each line of a batch runs: the route its batch's mode, its model and its window allow, and the
price list it is billed at.

Modes (`otb submit --mode`): `realtime` (the standard synchronous API), `flex` (Gemini's synchronous
flex tier, 50%), `native` (the providers' batch APIs, 50%) and `auto` (the cheapest route that meets
the completion window: Anthropic lines to Message Batches; Gemini chat lines to flex when the window
is shorter than `Settings.gemini_native_min_window`, to Gemini Batch Mode when it is that long;
Gemini embeddings to asyncBatchEmbedContent when the window is that long, else real time: they have no
flex tier). `auto` is the default whenever a completion window of at least
`Settings.auto_min_window` is given; without one the default stays `realtime`.

Native lines (chat and Gemini embeddings) are set aside at submit for worker/native (its poller sends
them in provider batches); a line planned native that reaches a chunk was handed back by its provider
batch (the window's margin, a job that failed or expired) or re-run by `otb retry` when its window had
no room left, and runs in real time, saying so in `meta.route_note`.

A line may carry OpenAI's `service_tier`: `flex` asks for flex whatever the mode, `default` for the
standard tier, `auto` leaves it to the mode. Anthropic has no flex tier: its adapter refuses a line
asking for it (or, with --drop-unsupported-params, drops it and the line runs standard), and
`--mode flex` refuses Anthropic lines at submit, naming the model (see `refusal`).

The tier a line is billed at comes from the provider's answer where it says it (Anthropic
`usage.service_tier`, Gemini `usageMetadata.serviceTier`), else from the route it ran on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .pricing import STANDARD, cost, normalize, priced_tier
from .providers.base import Parsed
from .registry import ModelSpec
from .schemas import Cost
from .settings import Settings

REALTIME, FLEX, NATIVE = "realtime", "flex", "native"
ROUTES = (REALTIME, FLEX, NATIVE)
MODES = ("auto", REALTIME, FLEX, NATIVE)
UNAVAILABLE_MODES: dict[str, str] = {}  # modes refused at submit, with why (native is built: worker/native)
TIER_OF_ROUTE = {REALTIME: STANDARD, FLEX: "flex", NATIVE: "batch"}
LINE_TIERS = ("auto", "default", FLEX)  # OpenAI `service_tier` values a line may carry (others are unsupported)
NATIVE_FELL_BACK = "sent in real time: its native batch did not take or answer it in time"


def default_mode(window: float | None, settings: Settings) -> str:
    """`auto` for a completion window of at least `auto_min_window`, else `realtime`."""
    return "auto" if window is not None and window >= settings.auto_min_window else REALTIME


def mode_note(mode: str) -> str | None:
    """What a mode does differently from its description today (shown by `otb status`): nothing now
    that every route is built (kept for the callers that show it)."""
    return None


def has_flex(spec: ModelSpec, kind: str) -> bool:
    """Flex is a chat tier of providers that sell one; the registry prices it where it exists."""
    return kind == "chat" and spec.pricing is not None and spec.pricing.flex is not None


def line_tier(body: dict[str, Any]) -> str | None:
    tier = body.get("service_tier")
    return tier if isinstance(tier, str) else None


def refusal(mode: str, spec: ModelSpec, kind: str, body: dict[str, Any]) -> str | None:
    """Why a line cannot run in `mode` (said at submit, one line), or None."""
    if mode in UNAVAILABLE_MODES:
        return f"--mode {mode}: {UNAVAILABLE_MODES[mode]}"
    if mode == FLEX and line_tier(body) != "default" and not has_flex(spec, kind):
        if spec.provider == "anthropic":
            why = "Anthropic has no flex tier; Claude at half price is the Message Batches API"
        else:
            why = "flex is a tier of Gemini's generateContent" if kind != "chat" else "the registry has no flex price"
        return (f"--mode flex: {spec.id} has no flex tier ({why}); submit it with --mode auto or --mode realtime, "
                "or give the line \"service_tier\": \"default\"")
    return None


@dataclass
class Route:
    """The route one request takes, written into its result's `meta` as it is decided and as it changes.

    `name` is the route the call is sent on; `flex_for` the seconds a shed flex call may keep being
    retried in flex before it goes standard (counted from the first flex try).
    """

    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    flex_for: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.meta["route"] = self.name
        self._write_notes()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._write_notes()

    def fell_back(self, why: str) -> None:
        """Flex could not take it: the call goes to the standard tier, and the result says why."""
        self.name = REALTIME
        self.meta["route"] = REALTIME
        self.note(why)

    def _write_notes(self) -> None:
        if self.notes:
            self.meta["route_note"] = "; ".join(self.notes)


def plan(mode: str, spec: ModelSpec, kind: str, body: dict[str, Any], settings: Settings, *,
         window: float | None, seconds_left: float | None, meta: dict[str, Any]) -> Route:
    """The route of one line at the moment it is sent (the window left decides whether flex still fits)."""
    tier = line_tier(body)
    if tier == "default":
        return Route(REALTIME, meta)
    wanted = FLEX if tier == FLEX else mode_route(mode, spec, kind, window, settings)
    if wanted == NATIVE:  # a line here is one its native batch handed back
        return Route(REALTIME, meta, notes=[NATIVE_FELL_BACK])
    if wanted != FLEX:
        return Route(REALTIME, meta)
    if not has_flex(spec, kind):
        return Route(REALTIME, meta, notes=[f"{spec.id} has no flex tier: sent in real time"])
    flex_for = flex_allowance(seconds_left, window, settings)
    if flex_for <= 0:
        return Route(REALTIME, meta, notes=["no time is left for a flex call within the completion window "
                                            "(less its margin) or the chunk job's timeout: sent standard"])
    return Route(FLEX, meta, flex_for=flex_for)


def mode_route(mode: str, spec: ModelSpec, kind: str, window: float | None, settings: Settings) -> str:
    if mode == FLEX:
        return FLEX
    if mode == NATIVE:
        return NATIVE
    if mode != "auto":
        return REALTIME
    long_enough = window is None or window >= settings.gemini_native_min_window
    if spec.provider == "google" and kind == "chat":
        return NATIVE if long_enough else FLEX
    if spec.provider == "google":  # embeddings: asyncBatchEmbedContent, or real time (they have no flex tier)
        return NATIVE if long_enough else REALTIME
    return NATIVE if spec.provider == "anthropic" else REALTIME


def flex_allowance(seconds_left: float | None, window: float | None, settings: Settings) -> float:
    """Seconds a request may spend on flex tries: OTB_FLEX_MAX_WAIT, never so long that one more flex call
    (up to OTB_FLEX_TIMEOUT) could run into the window's margin, nor past half the chunk job's timeout
    (the chunk must end within OTB_JOB_TIMEOUT)."""
    allowed = min(settings.flex_max_wait, settings.job_timeout / 2 - settings.flex_timeout)
    if seconds_left is not None and window is not None:
        allowed = min(allowed, seconds_left - settings.window_margin(window) - settings.flex_timeout)
    return max(allowed, 0.0)


def bill(parsed: Parsed, spec: ModelSpec, route: Route, on: dt.date) -> Cost:
    """The answer priced at the tier it was billed at, and what that saved against standard prices
    (`meta.service_tier`, `meta.saved`, exact)."""
    tier = parsed.service_tier or TIER_OF_ROUTE[route.name]
    priced = priced_tier(spec, tier)
    if priced != tier:
        route.note(f"billed at the {tier} tier, which the registry does not price: priced at standard")
    charge = cost(parsed.usage, spec, on, priced)
    at_standard = charge if priced == STANDARD else cost(parsed.usage, spec, on, STANDARD)
    route.meta["service_tier"] = tier
    route.meta["saved"] = "0" if at_standard is charge else format(normalize(at_standard.total - charge.total), "f")
    return charge


def saved_of(line: dict[str, Any]) -> Decimal:
    """What a result line saved against standard prices (zero for lines without the figure)."""
    return Decimal((line.get("meta") or {}).get("saved") or 0)
