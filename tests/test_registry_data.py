"""Facts about the shipped registry.json (not the loader's mechanics): prices, lifecycles, rules.

Sources: /work/shared/reference/lineup.md (as of 2026-11-27) and api-versions.md.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from worker.errors import ModelRetired
from worker.registry import PRICE_FIELDS, Registry, load_registry

REGISTRY_PATH = Path(__file__).resolve().parents[1] / "registry.json"
TODAY = dt.date(2026, 11, 27)

RETIRED = {
    "anthropic/claude-opus-4-1": ("claude-opus-4-1-20250805", dt.date(2026, 8, 5)),
    "anthropic/claude-opus-4-0": ("claude-opus-4-20250514", dt.date(2026, 6, 15)),
    "anthropic/claude-sonnet-4-0": ("claude-sonnet-4-20250514", dt.date(2026, 6, 15)),
    "anthropic/claude-3-7-sonnet": ("claude-3-7-sonnet-20250219", dt.date(2026, 2, 19)),
    "anthropic/claude-3-5-haiku": ("claude-3-5-haiku-20241022", dt.date(2026, 2, 19)),
    "google/gemini-3-pro": ("gemini-3-pro-preview", dt.date(2026, 3, 9)),
    "google/gemini-3.1-flash-lite-preview": ("gemini-3.1-flash-lite-preview", dt.date(2026, 5, 25)),
    "google/gemini-2.0-flash": ("gemini-2.0-flash", dt.date(2026, 6, 1)),
    "google/gemini-2.0-flash-lite": ("gemini-2.0-flash-lite", dt.date(2026, 6, 1)),
    "google/text-embedding-004": ("text-embedding-004", dt.date(2026, 1, 14)),
}


@pytest.fixture(scope="module")
def reg() -> Registry:
    return load_registry(REGISTRY_PATH)


def rates(reg: Registry, model_id: str, on: dt.date = TODAY):
    spec = reg.models[model_id]
    assert spec.pricing is not None
    return spec.pricing.in_effect(on)[0]


# -- the two required entries ------------------------------------------------------------------


def test_gemini_3_flash_exact_prices(reg: Registry) -> None:
    spec = reg.resolve("google/gemini-3-flash", today=TODAY)
    assert spec.upstream == "gemini-3-flash-preview"
    assert spec.kind == "chat"
    p = spec.pricing
    assert (p.input, p.output, p.cache_read, p.cache_write) == (
        Decimal("0.5"),
        Decimal("3.0"),
        Decimal("0.05"),
        Decimal("0.5"),
    )
    assert p.cache_write_1h is None
    assert p.tiers == [] and p.changes == []


def test_sonnet_4_5_exact_prices_and_lifecycle(reg: Registry) -> None:
    spec = reg.models["anthropic/claude-sonnet-4-5"]
    assert spec.upstream == "claude-sonnet-4-5-20250929"
    p = spec.pricing
    assert (p.input, p.output, p.cache_read, p.cache_write, p.cache_write_1h) == (
        Decimal("3.0"),
        Decimal("15.0"),
        Decimal("0.3"),
        Decimal("3.75"),
        Decimal("6.0"),
    )
    lc = spec.lifecycle
    assert lc.status == "deprecated"
    assert lc.deprecated_on == dt.date(2026, 9, 30)
    assert lc.retires_on == dt.date(2026, 11, 30)
    assert lc.replacement == "anthropic/claude-sonnet-5-5"
    assert lc.routed_to is None


def test_sonnet_4_5_retires_on_2026_11_30(reg: Registry) -> None:
    assert reg.resolve("anthropic/claude-sonnet-4-5", today=dt.date(2026, 11, 29)).id == "anthropic/claude-sonnet-4-5"
    with pytest.raises(ModelRetired) as exc:
        reg.resolve("anthropic/claude-sonnet-4-5", today=dt.date(2026, 11, 30))
    assert "2026-11-30" in exc.value.message
    assert "anthropic/claude-sonnet-5-5" in exc.value.message


# -- retired entries ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", sorted(RETIRED))
def test_retired_entries_raise(reg: Registry, model_id: str) -> None:
    upstream, shutdown = RETIRED[model_id]
    spec = reg.models[model_id]
    assert spec.upstream == upstream
    assert spec.lifecycle.status == "retired"
    assert spec.lifecycle.retires_on == shutdown
    assert spec.lifecycle.replacement in reg.models
    assert not reg.models[spec.lifecycle.replacement].is_retired(TODAY)
    with pytest.raises(ModelRetired, match=str(shutdown)):
        reg.resolve(model_id, today=TODAY)


def test_every_retired_status_entry_is_listed(reg: Registry) -> None:
    assert {m.id for m in reg.models.values() if m.lifecycle.status == "retired"} == set(RETIRED)


def test_ga_flash_lite_stays_callable_next_to_retired_preview(reg: Registry) -> None:
    assert reg.resolve("google/gemini-3.1-flash-lite", today=TODAY).upstream == "gemini-3.1-flash-lite"
    with pytest.raises(ModelRetired):
        reg.resolve("google/gemini-3.1-flash-lite-preview", today=TODAY)


def test_mythos_preview_left_out(reg: Registry) -> None:
    assert "anthropic/claude-mythos-preview" not in reg.models


# -- dated prices and tiers --------------------------------------------------------------------


def test_argon_price_doubles_on_2026_12_01(reg: Registry) -> None:
    before = rates(reg, "google/gemini-4-argon", dt.date(2026, 11, 30))
    after = rates(reg, "google/gemini-4-argon", dt.date(2026, 12, 1))
    assert before.input == Decimal("2") and after.input == Decimal("4")
    assert (before.output, before.cache_read, before.cache_write) == (Decimal("10"), Decimal("0.10"), Decimal("2"))
    assert (after.output, after.cache_read, after.cache_write) == (Decimal("20"), Decimal("0.20"), Decimal("4"))


def test_gemini_3_8_flash_price_doubles_on_2027_01_01(reg: Registry) -> None:
    before = rates(reg, "google/gemini-3.8-flash", dt.date(2026, 12, 31))
    after = rates(reg, "google/gemini-3.8-flash", dt.date(2027, 1, 1))
    assert (before.input, before.output, before.cache_read) == (Decimal("0.75"), Decimal("3.75"), Decimal("0.075"))
    assert (after.input, after.output, after.cache_read) == (Decimal("1.50"), Decimal("7.50"), Decimal("0.15"))
    assert after.cache_write == after.input


def test_sonnet_5_5_cache_read_drops_on_2026_10_07(reg: Registry) -> None:
    assert rates(reg, "anthropic/claude-sonnet-5-5", dt.date(2026, 10, 6)).cache_read == Decimal("0.20")
    assert rates(reg, "anthropic/claude-sonnet-5-5", dt.date(2026, 10, 7)).cache_read == Decimal("0.10")


@pytest.mark.parametrize(
    ("model_id", "above", "tier_input", "tier_output", "tier_cache_read"),
    [
        ("anthropic/claude-haiku-5-5", 100_000, "0.50", "2.50", "0.05"),
        ("google/gemini-3.1-pro", 200_000, "4", "18", "0.40"),
        ("google/gemini-2.5-pro", 200_000, "2.50", "15", "0.25"),
    ],
)
def test_size_tiers(reg: Registry, model_id, above, tier_input, tier_output, tier_cache_read) -> None:
    _, tiers = reg.models[model_id].pricing.in_effect(TODAY)
    assert len(tiers) == 1
    t = tiers[0]
    assert t.above_input_tokens == above
    assert (t.input, t.output, t.cache_read) == (Decimal(tier_input), Decimal(tier_output), Decimal(tier_cache_read))
    if model_id.startswith("google/"):
        assert t.cache_write == t.input and t.cache_write_1h is None
    else:
        assert (t.cache_write, t.cache_write_1h) == (Decimal("0.625"), Decimal("1.00"))


def test_only_expected_models_have_tiers(reg: Registry) -> None:
    tiered = {m.id for m in reg.callable_models(TODAY) if m.pricing.tiers}
    assert tiered == {"anthropic/claude-haiku-5-5", "google/gemini-3.1-pro", "google/gemini-2.5-pro"}


# -- catalog and lookups -----------------------------------------------------------------------


def test_catalog_ids_unique_with_four_prices(reg: Registry) -> None:
    data = reg.catalog(TODAY)["data"]
    ids = [row["id"] for row in data]
    assert len(ids) == len(set(ids))
    assert "anthropic/claude-sonnet-4-5" in ids  # still callable on 2026-11-27
    assert not set(ids) & set(RETIRED)
    for row in data:
        assert set(row["pricing"]) == {"input", "output", "cache_read", "cache_write"}
        assert all(isinstance(v, Decimal) and v >= 0 for v in row["pricing"].values()), row["id"]
        assert row["pricing"]["input"] > 0, row["id"]


def test_by_upstream(reg: Registry) -> None:
    assert reg.by_upstream("google", "gemini-3.6-flash").id == "google/gemini-3.6-flash"
    assert reg.by_upstream("google", "gemini-3.8-flash").id == "google/gemini-3.8-flash"
    # a suffixed modelVersion must not fall onto a shorter id that is a prefix of the right one
    assert reg.by_upstream("google", "gemini-2.5-flash-lite-001").id == "google/gemini-2.5-flash-lite"
    assert reg.by_upstream("google", "gemini-3.5-flash-lite-001").id == "google/gemini-3.5-flash-lite"
    assert reg.by_upstream("google", "gemini-3.1-pro-preview-customtools").id == "google/gemini-3.1-pro"
    assert reg.by_upstream("anthropic", "claude-sonnet-4-5-20250929").id == "anthropic/claude-sonnet-4-5"


def test_upstreams_unique_per_provider(reg: Registry) -> None:
    keys = [(m.provider, m.upstream) for m in reg.models.values()]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("model_id", "routed_to"),
    [
        ("google/gemini-3.5-flash", "gemini-3.6-flash"),
        ("google/gemini-3.7-flash", "gemini-3.8-flash"),
        ("google/gemini-2.5-pro", "gemini-3.8-flash"),
        ("google/gemini-2.5-flash", "gemini-3.5-flash-lite"),
    ],
)
def test_routed_models_stay_callable_and_bill_as_target(reg: Registry, model_id: str, routed_to: str) -> None:
    spec = reg.models[model_id]
    assert spec.lifecycle.routed_to == routed_to
    target = reg.by_upstream("google", routed_to)
    assert target is not None and target.id == f"google/{routed_to}"
    for day in (TODAY, dt.date(2026, 12, 1), dt.date(2027, 6, 1)):
        assert reg.resolve(model_id, today=day) is spec
    # once routed, the listed price is the target's
    day = dt.date(2027, 1, 2) if model_id in ("google/gemini-2.5-pro", "google/gemini-2.5-flash") else TODAY
    assert rates(reg, model_id, day) == rates(reg, target.id, day)


def test_gemini_2_5_shutdown_date(reg: Registry) -> None:
    for model_id in ("google/gemini-2.5-pro", "google/gemini-2.5-flash"):
        assert reg.models[model_id].lifecycle.retires_on == dt.date(2026, 12, 1)


# -- rules -------------------------------------------------------------------------------------


def test_provider_versions(reg: Registry) -> None:
    assert reg.api_version("anthropic") == "2026-10-21"
    assert reg.api_version("google") == "v1beta"
    assert all(p.note for p in reg.providers.values())


def test_every_anthropic_entry_rejects_sampling(reg: Registry) -> None:
    anthropic = [m for m in reg.models.values() if m.provider == "anthropic"]
    assert anthropic
    for m in anthropic:
        assert m.rules.sampling == "rejected", m.id


def test_anthropic_chat_rules(reg: Registry) -> None:
    for m in reg.callable_models(TODAY):
        if m.provider != "anthropic":
            continue
        r = m.rules
        assert m.kind == "chat"
        assert r.default_max_tokens == 8192, m.id
        assert r.max_output_tokens and m.context_tokens, m.id
        assert not r.forced_tool_choice_with_thinking and not r.seed and not r.penalties, m.id
        assert r.thinking in ("budget", "adaptive"), m.id
        assert set(r.reasoning_efforts) <= {"none", "minimal", "low", "medium", "high", "xhigh"}, m.id


def test_thinking_cannot_be_disabled_where_anthropic_says_so(reg: Registry) -> None:
    no_off = {
        "anthropic/claude-opus-5-5",
        "anthropic/claude-sonnet-5-5",
        "anthropic/claude-fable-5",
        "anthropic/claude-fable-5-1",
        "anthropic/claude-fable-5-2",
        "anthropic/claude-mythos-5",
        "anthropic/claude-mythos-5-1",
        "anthropic/claude-mythos-5-2",
    }
    for m in reg.callable_models(TODAY):
        if m.provider == "anthropic":
            assert ("none" in m.rules.reasoning_efforts) == (m.id not in no_off), m.id


def test_forced_tool_choice_and_mid_conversation_system(reg: Registry) -> None:
    no_forced = {
        "anthropic/claude-fable-5-1",
        "anthropic/claude-fable-5-2",
        "anthropic/claude-mythos-5-1",
        "anthropic/claude-mythos-5-2",
        "anthropic/claude-opus-5-5",
        "anthropic/claude-sonnet-5-5",
    }
    mid_system = {
        "anthropic/claude-opus-4-8",
        "anthropic/claude-opus-5",
        "anthropic/claude-opus-5-5",
        "anthropic/claude-sonnet-5-5",
        "anthropic/claude-haiku-5-5",
        "anthropic/claude-fable-5",
        "anthropic/claude-fable-5-1",
        "anthropic/claude-mythos-5",
        "anthropic/claude-mythos-5-1",
    }
    for m in reg.callable_models(TODAY):
        if m.kind != "chat":
            continue
        assert m.rules.forced_tool_choice == (m.id not in no_forced), m.id
        assert m.rules.mid_conversation_system == (m.id in mid_system), m.id


def test_mythos_gated_at_fable_prices(reg: Registry) -> None:
    for n in ("5-2", "5-1", "5"):
        mythos = reg.models[f"anthropic/claude-mythos-{n}"]
        assert mythos.access == "gated"
        assert mythos.pricing == reg.models[f"anthropic/claude-fable-{n}"].pricing
    assert all(m.access == "public" for m in reg.models.values() if "mythos" not in m.id)


def test_gemini_generation_rules(reg: Registry) -> None:
    for m in reg.callable_models(TODAY):
        if m.provider != "google" or m.kind != "chat":
            continue
        r = m.rules
        assert r.default_max_tokens is None and r.seed and r.forced_tool_choice_with_thinking, m.id
        assert not r.mid_conversation_system, m.id
        if m.upstream.startswith("gemini-2.5"):
            assert (r.sampling, r.penalties, r.thinking, r.assistant_prefill, r.thought_signatures) == (
                "accepted", True, "budget", True, False
            ), m.id
        else:
            assert (r.sampling, r.penalties, r.thinking, r.assistant_prefill, r.thought_signatures) == (
                "ignored", False, "level", False, True
            ), m.id
            assert "none" not in r.reasoning_efforts, m.id
    efforts = {m.id: m.rules.reasoning_efforts for m in reg.models.values()}
    assert efforts["google/gemini-3.8-flash"] == ["low", "medium", "high"]
    assert efforts["google/gemini-3.1-pro"] == ["low", "medium", "high"]
    assert efforts["google/gemini-4-argon"] == ["low", "medium", "high"]
    assert efforts["google/gemini-2.5-pro"] == ["low", "medium", "high"]
    assert efforts["google/gemini-2.5-flash"] == ["none", "low", "medium", "high"]
    assert efforts["google/gemini-3-flash"] == ["minimal", "low", "medium", "high"]


def test_gemini_cache_write_is_input_price(reg: Registry) -> None:
    for m in reg.callable_models(TODAY):
        if m.provider != "google":
            continue
        for day in (TODAY, dt.date(2026, 12, 1), dt.date(2027, 1, 1)):
            r, tiers = m.pricing.in_effect(day)
            assert r.cache_write == r.input and r.cache_write_1h is None, m.id
            assert all(t.cache_write == t.input for t in tiers), m.id


def test_embeddings(reg: Registry) -> None:
    expected = {"google/gemini-embedding-001": Decimal("0.15"), "google/gemini-embedding-2": Decimal("0.20")}
    callable_embeddings = {m.id for m in reg.callable_models(TODAY) if m.kind == "embedding"}
    assert callable_embeddings == set(expected)
    for model_id, price in expected.items():
        m = reg.resolve_for(model_id, "embedding", today=TODAY)
        p = m.pricing
        assert (p.input, p.output, p.cache_read, p.cache_write) == (price, 0, 0, price)
        assert m.rules.max_inputs == 2048 and m.rules.dimensions == [128, 3072]
        assert m.rules.images is False
    assert not any(m.provider == "anthropic" and m.kind == "embedding" for m in reg.models.values())


def test_prices_are_plain_numbers_in_the_file() -> None:
    import json

    raw = json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))
    for entry in raw["models"]:
        for field in PRICE_FIELDS:
            value = (entry.get("pricing") or {}).get(field)
            assert value is None or isinstance(value, (int, float)), (entry["id"], field)
