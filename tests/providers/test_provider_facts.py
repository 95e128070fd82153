"""Provider facts have one home: how a provider is reached (key and base-URL variables, default URL) in
worker/providers/endpoints.py, which the adapters take their constants from and Settings reads without
loading the adapters; everything else in the adapter."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from worker.errors import InvalidRequest
from worker.providers import ADAPTERS, anthropic, google
from worker.providers.base import Provider
from worker.providers.endpoints import ENDPOINTS, Endpoint
from worker.registry import ModelSpec
from worker.schemas import EmbeddingRequest
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ACME = SimpleNamespace(NAME="acme", API_KEY_ENV="ACME_API_KEY", BASE_URL_ENV="OTB_ACME_BASE_URL",
                       DEFAULT_BASE_URL="https://api.acme.test")


def test_the_registry_lists_each_adapter_under_its_own_name() -> None:
    assert ADAPTERS == {"anthropic": anthropic, "google": google}
    members = [name for name in vars(Provider) if not name.startswith("_")]
    for adapter in ADAPTERS.values():
        assert [m for m in members if not hasattr(adapter, m)] == []


def test_the_facts_of_both_providers() -> None:
    facts = {name: (a.API_KEY_ENV, a.BASE_URL_ENV, a.DEFAULT_BASE_URL) for name, a in ADAPTERS.items()}
    assert facts == {
        "anthropic": ("ANTHROPIC_API_KEY", "OTB_ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
        "google": ("GEMINI_API_KEY", "OTB_GOOGLE_BASE_URL", "https://generativelanguage.googleapis.com"),
    }


def test_settings_read_keys_and_base_urls_through_the_adapters() -> None:
    settings = Settings.from_env({"ANTHROPIC_API_KEY": "sk-1", "OTB_GOOGLE_BASE_URL": "http://127.0.0.1:9/"})
    assert settings.api_keys == {"anthropic": "sk-1"}
    assert settings.base_url("google") == "http://127.0.0.1:9"
    assert settings.base_url("anthropic") == "https://api.anthropic.com"


def test_every_adapter_is_reached_as_its_endpoint_says() -> None:
    assert set(ENDPOINTS) == set(ADAPTERS)
    for name, adapter in ADAPTERS.items():
        assert Endpoint(adapter.API_KEY_ENV, adapter.BASE_URL_ENV, adapter.DEFAULT_BASE_URL) == ENDPOINTS[name]


def test_a_third_provider_needs_no_change_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ADAPTERS, "acme", ACME)
    monkeypatch.setitem(ENDPOINTS, "acme", Endpoint(ACME.API_KEY_ENV, ACME.BASE_URL_ENV, ACME.DEFAULT_BASE_URL))
    settings = Settings.from_env({"ACME_API_KEY": "ak-1", "OTB_ACME_BASE_URL": "http://127.0.0.1:7"})
    assert settings.api_key("acme") == "ak-1"
    assert settings.base_url("acme") == "http://127.0.0.1:7"
    assert Settings().base_url("acme") == "https://api.acme.test"
    assert Settings().pointed_at("http://127.0.0.1:8").base_url("acme") == "http://127.0.0.1:8"


def test_the_older_keyword_spelling_still_points_a_provider_elsewhere() -> None:
    given = Settings(anthropic_base_url="http://127.0.0.1:1/", google_base_url="http://127.0.0.1:2",
                     base_urls={"anthropic": "http://127.0.0.1:3"})
    assert (given.base_url("anthropic"), given.base_url("google")) == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    moved = given.pointed_at("http://127.0.0.1:4")  # the emulator wins over anything set before
    assert {moved.base_url(name) for name in ADAPTERS} == {"http://127.0.0.1:4"}


def test_provider_variables_are_named_only_in_their_adapter() -> None:
    """A key or base-URL variable written out elsewhere in the core is a second home for the fact."""
    names = [a.API_KEY_ENV for a in ADAPTERS.values()] + [a.BASE_URL_ENV for a in ADAPTERS.values()]
    pattern = re.compile("|".join(names))
    sources = [p for p in (ROOT / "worker").rglob("*.py") if (ROOT / "worker" / "providers") not in p.parents]
    assert [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text())] == []


def test_anthropic_refuses_embeddings_by_name() -> None:
    spec = ModelSpec.model_validate({"id": "anthropic/claude-x", "provider": "anthropic", "upstream": "claude-x",
                                     "kind": "chat", "pricing": {"input": 1, "output": 5, "cache_read": "0.1", "cache_write": "1.25"}})
    with pytest.raises(InvalidRequest, match="Anthropic has no embeddings API"):
        anthropic.prepare_embeddings(EmbeddingRequest(model="anthropic/claude-x", input="hi"), spec,
                                     api_version="2023-06-01")


def test_a_third_provider_needs_no_change_to_the_registry_schema() -> None:
    """Its rows load once the file's `providers` section names it (the schema lists no providers)."""
    from worker.registry import parse_registry

    raw = {"providers": {"acme": {"api_version": "v1"}},
           "models": [{"id": "acme/rocket-1", "provider": "acme", "upstream": "rocket-1", "kind": "chat",
                       "pricing": {"input": 1, "output": 2, "cache_read": 0.1, "cache_write": 1}}]}
    assert parse_registry(raw).resolve("acme/rocket-1").provider == "acme"
