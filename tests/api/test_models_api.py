"""GET /v1/models and /v1/models/{provider}/{model} through the real SDK against a real `otb serve`."""

from __future__ import annotations

import email.utils
import http.client
from decimal import Decimal

import openai
import pytest
from openai.types import Model

pytestmark = pytest.mark.e2e


def test_models_list_is_the_callable_catalog_with_prices(acme, registry):
    raw = acme.models.with_raw_response.list()
    listing = raw.http_response.json()
    assert listing["object"] == "list"
    # the server's day, from its Date header: under `faketime` only this process is shifted (README, Testing)
    today = email.utils.parsedate_to_datetime(raw.http_response.headers["date"]).date()
    assert [m["id"] for m in listing["data"]] == [m.id for m in registry.callable_models(today)]
    for entry in listing["data"]:
        Model.model_validate(entry)  # the SDK's own model, strictly: `created` is required there
        rates, _ = registry.models[entry["id"]].pricing.in_effect(today)
        assert {k: Decimal(str(v)) for k, v in entry["pricing"].items()} == {
            "input": rates.input, "output": rates.output, "cache_read": rates.cache_read, "cache_write": rates.cache_write}
        assert set(entry) <= {"id", "object", "owned_by", "pricing", "created", "shutdown_date"}
    assert [m.id for m in raw.parse().data] == [m["id"] for m in listing["data"]]


def test_retrieve_an_id_with_a_slash_as_the_sdk_sends_it(acme, server):
    model = acme.models.retrieve("google/gemini-3-flash")  # the SDK sends google%2Fgemini-3-flash
    assert (model.id, model.owned_by, model.object) == ("google/gemini-3-flash", "google", "model")
    assert model.pricing == {"input": 0.5, "output": 3.0, "cache_read": 0.05, "cache_write": 0.5}
    Model.model_validate(model.to_dict())
    # and the plain slash, as curl users write it
    raw = acme.get("/models/google/gemini-3-flash", cast_to=object)
    assert raw["id"] == "google/gemini-3-flash"


def test_unknown_model_is_404_with_the_seeds_body(acme):
    with pytest.raises(openai.NotFoundError) as caught:
        acme.models.retrieve("openai/gpt-4o")
    err = caught.value
    assert err.status_code == 404 and err.code == "model_not_found"
    assert err.response.json() == {"error": {"message": 'model "openai/gpt-4o" not found',
                                             "type": "invalid_request_error", "code": "model_not_found"}}
    assert err.response.headers["x-should-retry"] == "false"


def test_retired_model_is_404_naming_its_replacement(acme, registry):
    with pytest.raises(openai.NotFoundError) as caught:
        acme.models.retrieve("anthropic/claude-opus-4-1")
    assert caught.value.code == "model_retired"
    assert "retired" in caught.value.message


def test_models_need_a_key(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v1/models")
    response = conn.getresponse()
    assert response.status == 401
    assert b'"invalid_api_key"' in response.read()


def test_the_server_serves_prometheus_metrics_without_a_key(server):
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        body = answer.read().decode()
    finally:
        conn.close()
    assert answer.status == 200 and answer.getheader("content-type", "").startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    depth = {s.labels["queue"]: s.value for s in families["otb_queue_chunks"].samples}
    assert set(depth) == {"otb", "otb:interactive"} and all(v >= 0 for v in depth.values())
