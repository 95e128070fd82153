"""The model registry: canonical ids -> provider, upstream model, kind, lifecycle, prices, request rules.

`registry.json` is data, validated here once at load; a malformed entry stops the process with a
message naming it. `resolve()` is the only way a model id becomes a `ModelSpec`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import clock
from .errors import ConfigError, InvalidRequest, ModelNotFound, ModelRetired
from .ratelimit import RateLimits

# A provider is any name with an entry in the file's `providers` section (checked at load) and an
# adapter in worker/providers (checked where calls are made): a third provider adds no name here.
Provider = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
Kind = Literal["chat", "embedding"]
PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
MAX_PRICE = Decimal(1_000_000)  # USD per 1M tokens: far above any real price, well inside exact arithmetic

log = logging.getLogger("otb.registry")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exact(v: Any) -> Decimal:
    """Prices are exact decimals with at most 6 places (so costs are whole pico-dollars)."""
    if isinstance(v, bool):
        raise ValueError(f"a price must be a number, got {json.dumps(v)}")
    try:
        d = Decimal(str(v))
    except ArithmeticError:
        raise ValueError(f"a price must be a decimal number, got {json.dumps(v, default=str)[:40]}") from None
    if not d.is_finite():
        raise ValueError(f"a price must be a finite number, got {v}")
    if d < 0:
        raise ValueError("a price cannot be negative")
    if d >= MAX_PRICE:
        raise ValueError(f"a price must be below {MAX_PRICE} USD per 1M tokens, got {v}")
    if d != d.quantize(Decimal("0.000001")):
        raise ValueError("a price may have at most 6 decimal places")
    return d


class Rates(_Strict):
    """USD per 1M tokens. `cache_write` is the 5-minute write; `cache_write_1h` the 1-hour one."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal | None = None

    _check = field_validator(*PRICE_FIELDS, mode="before")(lambda v: None if v is None else _exact(v))


class Tier(Rates):
    """Above this many prompt tokens (cached and uncached) the whole request bills at these rates."""

    above_input_tokens: int = Field(gt=0)

    def rates(self) -> Rates:
        return Rates(**self.model_dump(exclude={"above_input_tokens"}))


class PriceChange(_Strict):
    """From `effective` (UTC date) on, these fields replace the base ones (tiers may be replaced too)."""

    effective: dt.date
    input: Decimal | None = None
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    tiers: list[Tier] | None = None

    _check = field_validator(*PRICE_FIELDS, mode="before")(lambda v: None if v is None else _exact(v))


class TierPricing(Rates):
    """One service tier's price list (standard, or the `batch` / `flex` block inside it)."""

    tiers: list[Tier] = []
    changes: list[PriceChange] = []

    @model_validator(mode="after")
    def _ordered(self) -> "TierPricing":
        dates = [c.effective for c in self.changes]
        if dates != sorted(dates) or len(set(dates)) != len(dates):
            raise ValueError("pricing.changes must be in strictly increasing 'effective' order")
        return self

    def in_effect(self, on: dt.date) -> tuple[Rates, list[Tier]]:
        """The base rates and tiers that apply to a request that ran on `on` (UTC); worked out once
        per price list and day (every request is priced; the rows never change: the model is frozen)."""
        held = _IN_EFFECT.get((id(self), on))
        if held is not None and held[0] is self:
            return held[1]
        found = self._in_effect(on)
        if len(_IN_EFFECT) > 4096:  # registries reloaded many times: start again rather than grow
            _IN_EFFECT.clear()
        _IN_EFFECT[(id(self), on)] = (self, found)
        return found

    def _in_effect(self, on: dt.date) -> tuple[Rates, list[Tier]]:
        fields: dict[str, Any] = {f: getattr(self, f) for f in PRICE_FIELDS}
        tiers = list(self.tiers)
        for change in self.changes:
            if change.effective > on:
                break
            fields.update({f: getattr(change, f) for f in PRICE_FIELDS if getattr(change, f) is not None})
            if change.tiers is not None:
                tiers = list(change.tiers)
        return Rates(**fields), sorted(tiers, key=lambda t: t.above_input_tokens)


_IN_EFFECT: dict[tuple[int, dt.date], tuple[TierPricing, tuple[Rates, list[Tier]]]] = {}


SERVICE_TIERS = ("batch", "flex")  # priced besides standard; what a provider reports otherwise bills as standard


class Pricing(TierPricing):
    """Standard prices, and the half-price service tiers a provider sells for the same model.

    `batch` (Anthropic Message Batches, Gemini Batch Mode) and `flex` (Gemini's flex tier) are full
    price lists of their own, with the same size tiers and the same dated changes as the standard
    one (checked here), so a dated change can never leave a discounted price behind.
    """

    batch: TierPricing | None = None
    flex: TierPricing | None = None

    @model_validator(mode="after")
    def _service_tiers_follow_standard(self) -> "Pricing":
        for name in SERVICE_TIERS:
            other = getattr(self, name)
            if other is not None:
                _same_shape(self, other, name)
        return self

    def for_tier(self, service_tier: str) -> TierPricing | None:
        """The price list of `service_tier` (standard, batch, flex); None if the model has none."""
        if service_tier == "standard":
            return self
        return getattr(self, service_tier, None) if service_tier in SERVICE_TIERS else None


def _same_shape(standard: TierPricing, other: TierPricing, name: str) -> None:
    """`other` has standard's size tiers, dated changes (each setting the same fields) and no rate above it."""
    if [t.above_input_tokens for t in other.tiers] != [t.above_input_tokens for t in standard.tiers]:
        raise ValueError(f"pricing.{name}.tiers must have the same above_input_tokens as pricing.tiers")
    if [c.effective for c in other.changes] != [c.effective for c in standard.changes]:
        raise ValueError(f"pricing.{name}.changes must have the same 'effective' dates as pricing.changes "
                         "(a dated price change applies to every service tier)")
    for mine, theirs in zip(other.changes, standard.changes):
        if _set_fields(mine) != _set_fields(theirs):
            raise ValueError(f"pricing.{name}.changes[{mine.effective}] must change the same fields as "
                             f"pricing.changes[{theirs.effective}]")
    days = [None, *(c.effective for c in standard.changes)]
    for day in days:
        on = day or dt.date.min
        mine_rates, mine_tiers = other.in_effect(on)
        std_rates, std_tiers = standard.in_effect(on)
        for (a, b) in [(mine_rates, std_rates), *((x.rates(), y.rates()) for x, y in zip(mine_tiers, std_tiers))]:
            for f in PRICE_FIELDS:
                if _rate(a, f) > _rate(b, f):
                    raise ValueError(f"pricing.{name}.{f} is above the standard price"
                                     + (f" from {day}" if day else ""))


def _rate(rates: Rates, field: str) -> Decimal:
    """A rate as billed: an unlisted 1-hour cache write costs twice the 5-minute one (pricing.py)."""
    value = getattr(rates, field)
    return value if value is not None else rates.cache_write * 2


def _set_fields(change: PriceChange) -> set[str]:
    return {f for f in (*PRICE_FIELDS, "tiers") if getattr(change, f) is not None}


class Lifecycle(_Strict):
    status: Literal["active", "preview", "legacy", "deprecated", "retired"] = "active"
    released_on: dt.date | None = None
    deprecated_on: dt.date | None = None
    retires_on: dt.date | None = None
    replacement: str | None = None
    routed_to: str | None = None  # upstream model the provider silently serves instead
    note: str | None = None


class Rules(_Strict):
    """What the upstream model accepts under the API version we send (see registry `providers`).

    sampling: temperature/top_p/top_k are passed ("accepted"), dropped with a note ("ignored":
    the model ignores them anyway), or refused unless the submission drops unsupported params.
    """

    sampling: Literal["accepted", "ignored", "rejected"] = "accepted"
    penalties: bool = False
    seed: bool = False
    thinking: Literal["none", "budget", "adaptive", "level"] = "none"
    reasoning_efforts: list[str] = []
    forced_tool_choice: bool = True
    forced_tool_choice_with_thinking: bool = False
    mid_conversation_system: bool = False
    assistant_prefill: bool = True
    thought_signatures: bool = False
    json_schema: bool = True
    images: bool = True
    max_output_tokens: int | None = None
    default_max_tokens: int | None = None
    max_inputs: int | None = None  # embeddings: inputs per request
    dimensions: list[int] | None = None  # embeddings: [min, max]


class ModelSpec(_Strict):
    id: str
    provider: Provider
    upstream: str
    kind: Kind
    name: str | None = None
    access: Literal["public", "gated"] = "public"
    context_tokens: int | None = None
    lifecycle: Lifecycle = Lifecycle()
    pricing: Pricing | None = None
    rules: Rules = Rules()
    limits: RateLimits | None = None  # per API key; OTB_LIMITS overrides

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        prefix = f"{self.provider}/"
        if not self.id.startswith(prefix) or len(self.id) == len(prefix):
            raise ValueError(f"id must be '{prefix}<model>'")
        if self.lifecycle.status != "retired" and self.pricing is None:
            raise ValueError("a callable model needs 'pricing' (a model without a price is never billed at $0)")
        if self.lifecycle.status == "retired" and not self.lifecycle.retires_on:
            raise ValueError("a retired model needs lifecycle.retires_on")
        return self

    @property
    def owned_by(self) -> str:
        return self.provider

    def is_retired(self, today: dt.date) -> bool:
        lc = self.lifecycle
        if lc.status == "retired":
            return True
        return lc.retires_on is not None and lc.retires_on <= today and lc.routed_to is None


class ProviderConfig(_Strict):
    api_version: str
    note: str | None = None


class Registry:
    """Loaded, validated registry. Immutable; reload the file to see changes."""

    def __init__(self, models: list[ModelSpec], providers: dict[str, ProviderConfig], source: str) -> None:
        self.models = {m.id: m for m in models}
        self.providers = providers
        self.source = source
        self._by_upstream: dict[tuple[str, str], ModelSpec] = {}
        for m in models:
            self._by_upstream.setdefault((m.provider, m.upstream), m)

    # -- lookup -------------------------------------------------------------------------------
    def resolve(self, model_id: str, *, today: dt.date | None = None) -> ModelSpec:
        """The callable spec for `model_id`, or ModelNotFound / ModelRetired."""
        spec = self.models.get(model_id)
        if spec is None:
            raise ModelNotFound(model_id)
        today = today or clock.today()
        if spec.is_retired(today):
            lc = spec.lifecycle
            hint = f"; use {lc.replacement} instead" if lc.replacement else ""
            raise ModelRetired(f'model "{model_id}" was retired on {lc.retires_on}{hint}', param="model")
        return spec

    def resolve_for(self, model_id: str, kind: str, *, today: dt.date | None = None) -> ModelSpec:
        """Resolve and check the endpoint: a chat body to an embedding model is refused, and vice versa."""
        spec = self.resolve(model_id, today=today)
        if spec.kind != kind:
            if kind == "embedding" and spec.provider == "anthropic":
                raise InvalidRequest(
                    f'model "{model_id}" is a chat model and Anthropic offers no embeddings; '
                    "use a google/gemini-embedding-* model for /v1/embeddings",
                    param="model",
                )
            other = "/v1/embeddings" if spec.kind == "embedding" else "/v1/chat/completions"
            article = "an" if spec.kind == "embedding" else "a"
            raise InvalidRequest(
                f'model "{model_id}" is {article} {spec.kind} model; send it to {other}', param="model"
            )
        return spec

    def by_upstream(self, provider: str, upstream: str) -> ModelSpec | None:
        """The spec a provider's reported model name bills as (e.g. Gemini `modelVersion`)."""
        spec = self._by_upstream.get((provider, upstream))
        if spec is not None:
            return spec
        # modelVersion may carry a suffix such as "-001" or a date: the longest matching name wins
        matches = [(len(up), m) for (p, up), m in self._by_upstream.items() if p == provider and upstream.startswith(up + "-")]
        return max(matches, key=lambda pair: pair[0])[1] if matches else None

    def suggest(self, model_id: str, today: dt.date | None = None) -> list[str]:
        """Models a mistyped or provider-named id may have meant, callable today: first those whose upstream
        id it names (`google/gemini-3-flash-preview` -> google/gemini-3-flash), then the closest ids."""
        live = {m.id: m for m in self.callable_models(today)}
        named = model_id.rsplit("/", 1)[-1]
        exact = [i for i, m in live.items() if m.upstream == named and i != model_id]
        close = difflib.get_close_matches(model_id, list(live), n=3, cutoff=0.6)
        return list(dict.fromkeys(exact + close))[:3]

    def api_version(self, provider: str) -> str:
        return self.providers[provider].api_version

    # -- catalog ------------------------------------------------------------------------------
    def callable_models(self, today: dt.date | None = None) -> list[ModelSpec]:
        today = today or clock.today()
        return [m for m in self.models.values() if not m.is_retired(today)]

    def catalog(self, today: dt.date | None = None) -> dict[str, Any]:
        """`GET /v1/models` shape, prices in effect today (Decimal values)."""
        today = today or clock.today()
        data = []
        for m in self.callable_models(today):
            assert m.pricing is not None
            rates, _ = m.pricing.in_effect(today)
            data.append(
                {
                    "id": m.id,
                    "object": "model",
                    "owned_by": m.owned_by,
                    "pricing": {
                        "input": rates.input,
                        "output": rates.output,
                        "cache_read": rates.cache_read,
                        "cache_write": rates.cache_write,
                    },
                }
            )
        return {"object": "list", "data": data}


def load_registry(path: str | Path) -> Registry:
    """Read and validate a registry file; ConfigError names the bad entry and field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal, parse_constant=_no_constant)
    except FileNotFoundError as exc:
        raise ConfigError(f"registry file {path} does not exist (set OTB_REGISTRY)") from exc
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(f"registry file {path} cannot be read: {exc.strerror or exc}") from exc
    except RecursionError:
        raise ConfigError(f"registry file {path} is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError, and so is NaN
        raise ConfigError(f"registry file {path} is not valid JSON: {exc}") from exc
    return parse_registry(raw, source=str(path))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


# path -> (file stamp, registry): the last registry that loaded, for current_registry()
_last_good: dict[str, tuple[tuple[int, int, int] | None, Registry]] = {}
_reported: dict[str, tuple[int, int, int] | None] = {}  # path -> stamp of the broken file already reported


def current_registry(path: str | Path) -> Registry:
    """The registry in `path` as it is now, read again only when the file changed.

    If it no longer loads (a half-written file, a bad edit), the last good one stays in use and this
    says so once per broken version: work goes on instead of every chunk failing. With no good one
    loaded yet, the ConfigError is raised (a worker refuses to start on a broken registry).
    """
    key, stamp = str(path), _stamp(path)
    held = _last_good.get(key)
    if held is not None and stamp is not None and held[0] == stamp:
        return held[1]
    try:
        registry = load_registry(path)
    except ConfigError as exc:
        if held is None:
            raise
        if _reported.get(key, ()) != stamp:
            _reported[key] = stamp
            log.error("%s; keeping the last good registry until the file is fixed", exc)
        return held[1]
    if _reported.pop(key, ()) != ():
        log.warning("registry %s loads again: using it", key)
    _last_good[key] = (stamp, registry)
    return registry


def _stamp(path: str | Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def parse_registry(raw: Any, *, source: str = "<registry>") -> Registry:
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ConfigError(f"{source}: expected an object with a 'models' list")
    if not isinstance(raw.get("providers") or {}, dict):
        raise ConfigError(f"{source}: 'providers' must be an object of provider name -> settings")
    try:
        providers = {k: ProviderConfig.model_validate(v) for k, v in (raw.get("providers") or {}).items()}
    except ValidationError as exc:
        raise ConfigError(f"{source}: bad 'providers' section: {_first_error(exc)}") from exc
    models: list[ModelSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw["models"]):
        label = entry.get("id") if isinstance(entry, dict) else None
        where = f'{source}: models[{index}] ("{label}")' if label else f"{source}: models[{index}]"
        try:
            spec = ModelSpec.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(f"{where}: {_first_error(exc)}") from exc
        if spec.id in seen:
            raise ConfigError(f"{where}: duplicate id")
        if spec.provider not in providers:
            raise ConfigError(f"{where}: provider '{spec.provider}' has no entry in 'providers'")
        seen.add(spec.id)
        models.append(spec)
    for spec in models:
        repl = spec.lifecycle.replacement
        if repl and repl not in seen:
            raise ConfigError(f'{source}: "{spec.id}" names replacement "{repl}", which is not in the registry')
    return Registry(models, providers, source)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(entry)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}{more}"
