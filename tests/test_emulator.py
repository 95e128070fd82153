"""The provider emulator: wire formats, exact usage figures, caching, thinking, tools, faults, stats.

Token rule under test: tokens(text) = max(1, ceil(len(text) / 4)); JSON is counted compact.
"""

from __future__ import annotations

import ast
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from worker.emulator import EmulatorConfig, RunningEmulator, start_background
from worker.registry import Registry, parse_registry

PRICE = {"input": 1, "output": 2, "cache_read": 0.1, "cache_write": 1.25}
A_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
G_HEADERS = {"x-goog-api-key": "k"}
HELLO = "Hello there, emulator!"  # 22 chars -> 6 tokens


def tok(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def split(usage: dict[str, Any]) -> tuple[int, int, int]:
    """Anthropic's three input buckets: (uncached, cache write, cache read)."""
    return usage["input_tokens"], usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]


def _registry() -> Registry:
    def model(id_: str, upstream: str, kind: str = "chat", **lifecycle: Any) -> dict[str, Any]:
        entry = {"id": id_, "provider": id_.split("/")[0], "upstream": upstream, "kind": kind, "lifecycle": lifecycle}
        if lifecycle.get("status") != "retired":
            entry["pricing"] = PRICE
        return entry

    return parse_registry({
        "providers": {"anthropic": {"api_version": "2023-06-01"}, "google": {"api_version": "v1beta"}},
        "models": [
            model("anthropic/claude-x", "claude-x"),
            model("anthropic/claude-old", "claude-old-1", status="retired", retires_on="2026-01-01"),
            model("google/gemini-3.5-flash", "gemini-3.5-flash", status="deprecated", routed_to="gemini-3.6-flash"),
            model("google/gemini-old", "gemini-2.0-flash", status="retired", retires_on="2026-06-01"),
        ],
    })


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    with start_background(EmulatorConfig(seed=1), _registry()) as running:
        yield running


@pytest.fixture()
def client(emu: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=5) as c:
        yield c


def messages(client: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    body = {"model": "claude-x", "max_tokens": 256, "messages": [{"role": "user", "content": HELLO}], **body}
    return client.post("/v1/messages", json=body, headers=A_HEADERS if headers is None else headers)


def generate(client: httpx.Client, model: str = "gemini-2.5-flash", **body: Any) -> httpx.Response:
    body = {"contents": [{"role": "user", "parts": [{"text": HELLO}]}], **body}
    return client.post(f"/v1beta/models/{model}:generateContent", json=body, headers=G_HEADERS)


# -- Anthropic ------------------------------------------------------------------------------------
def test_anthropic_success_with_exact_usage(client: httpx.Client) -> None:
    r = messages(client, system="You are terse.")  # 14 chars -> 4 tokens
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")
    m = r.json()
    text = f"Emulated reply from claude-x to: {HELLO}"
    assert m["id"].startswith("msg_") and m["type"] == "message" and m["role"] == "assistant"
    assert m["model"] == "claude-x" and m["content"] == [{"type": "text", "text": text}]
    assert m["stop_reason"] == "end_turn" and m["stop_sequence"] is None
    assert m["usage"] == {
        "input_tokens": 10, "output_tokens": tok(text), "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens_details": {"thinking_tokens": 0}, "service_tier": "standard",
    }


def test_anthropic_cache_write_then_read(client: httpx.Client) -> None:
    system = [{"type": "text", "text": "A" * 400, "cache_control": {"type": "ephemeral"}}]  # 100 tokens
    first = messages(client, system=system).json()["usage"]
    assert split(first) == (6, 100, 0)
    assert first["cache_creation"] == {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0}
    again = messages(client, system=system, messages=[{"role": "user", "content": "Another question"}]).json()
    assert split(again["usage"]) == (4, 0, 100)


def test_anthropic_cache_follows_a_moving_breakpoint(client: httpx.Client) -> None:
    system = "M" * 400  # 100 tokens
    q1 = {"type": "text", "text": "Q" * 40}  # 10 tokens
    turn1 = [{"role": "user", "content": [{**q1, "cache_control": {"type": "ephemeral"}}]}]
    assert split(messages(client, system=system, messages=turn1).json()["usage"]) == (0, 110, 0)
    turn2 = [{"role": "user", "content": [q1]}, {"role": "assistant", "content": "R" * 40},
             {"role": "user", "content": [{"type": "text", "text": "W" * 40, "cache_control": {"type": "ephemeral"}}]}]
    assert split(messages(client, system=system, messages=turn2).json()["usage"]) == (0, 20, 110)


def test_anthropic_cache_ttl_split(client: httpx.Client) -> None:
    tool = {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
    tools = [{**tool, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    system = [{"type": "text", "text": "S" * 200, "cache_control": {"type": "ephemeral", "ttl": "5m"}}]  # 50 tokens
    body = {"tools": tools, "tool_choice": {"type": "none"}, "system": system}
    usage = messages(client, **body).json()["usage"]
    assert usage["cache_creation"] == {"ephemeral_5m_input_tokens": 50, "ephemeral_1h_input_tokens": tok(compact(tool))}
    assert usage["cache_creation_input_tokens"] == 50 + tok(compact(tool)) and usage["input_tokens"] == 6
    usage = messages(client, **body).json()["usage"]
    assert usage["cache_read_input_tokens"] == 50 + tok(compact(tool)) and usage["cache_creation_input_tokens"] == 0


def test_anthropic_thinking_tokens(client: httpx.Client) -> None:
    m = messages(client, max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000}).json()
    assert m["content"][0]["type"] == "thinking" and m["content"][0]["signature"].startswith("sig_")
    text = m["content"][1]["text"]
    assert m["usage"]["output_tokens"] == 120 + tok(text)
    assert m["usage"]["output_tokens_details"] == {"thinking_tokens": 120}
    low = messages(client, thinking={"type": "adaptive"}, output_config={"effort": "low"}).json()
    assert low["usage"]["output_tokens_details"]["thinking_tokens"] == 40
    bad = messages(client, max_tokens=1000, thinking={"type": "enabled", "budget_tokens": 1024})
    assert bad.status_code == 400


def test_anthropic_max_tokens_and_stop_sequences(client: httpx.Client) -> None:
    cut = messages(client, max_tokens=3).json()
    assert cut["content"][0]["text"] == "Emulated rep" and cut["stop_reason"] == "max_tokens"
    assert cut["usage"]["output_tokens"] == 3
    stop = messages(client, stop_sequences=["zzz", "emulator"]).json()
    assert stop["content"][0]["text"] == "Emulated reply from claude-x to: Hello there, "
    assert (stop["stop_reason"], stop["stop_sequence"]) == ("stop_sequence", "emulator")


def test_anthropic_structured_output(client: httpx.Client) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                             "tags": {"type": "array", "items": {"type": "string"}}}}
    m = messages(client, output_config={"format": {"type": "json_schema", "schema": schema}}).json()
    assert json.loads(m["content"][0]["text"]) == {"name": "sample", "age": 1, "tags": ["sample"]}


def test_anthropic_tool_round_trip(client: httpx.Client) -> None:
    weather = {"name": "get_weather", "input_schema": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}}}
    other = {"name": "other", "input_schema": {"type": "object", "required": ["n"],
                                               "properties": {"n": {"type": "integer"}}}}
    first = messages(client, tools=[weather, other]).json()
    call = first["content"][0]
    assert first["stop_reason"] == "tool_use" and call["type"] == "tool_use" and call["id"].startswith("toolu_")
    assert (call["name"], call["input"]) == ("get_weather", {"city": "sample"})
    assert first["usage"]["output_tokens"] == tok('{"city":"sample"}')
    forced = messages(client, tools=[weather, other], tool_choice={"type": "tool", "name": "other"}).json()
    assert forced["content"][0]["input"] == {"n": 1}
    history = [{"role": "user", "content": HELLO}, {"role": "assistant", "content": [call]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}]}]
    final = messages(client, tools=[weather, other], messages=history).json()
    assert final["stop_reason"] == "end_turn" and final["content"][0]["text"].endswith("after tool results")
    tools_tokens = tok(compact(weather)) + tok(compact(other))
    assert final["usage"]["input_tokens"] == tools_tokens + 6 + tok('{"city":"sample"}') + tok("sunny")
    stray = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "x"}]}]
    assert messages(client, messages=stray).status_code == 400


def test_sampling_rejected_under_2026_10_21_only(client: httpx.Client) -> None:
    new = {"authorization": "Bearer k", "anthropic-version": "2026-10-21"}
    for field, value in (("temperature", 1.0), ("top_p", 0.9), ("top_k", 5)):
        r = messages(client, headers=new, **{field: value})
        assert r.status_code == 400
        message = f"{field}: Extra inputs are not permitted"
        assert r.json()["error"] == {"type": "invalid_request_error", "message": message}
    assert messages(client, headers=new).status_code == 200
    assert messages(client, temperature=0.2).status_code == 200


def test_anthropic_auth_version_and_validation(client: httpx.Client) -> None:
    r = messages(client, headers={"anthropic-version": "2023-06-01"})
    body = r.json()
    assert r.status_code == 401 and body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert body["request_id"] == r.headers["request-id"]
    both = {**A_HEADERS, "authorization": "Bearer k"}
    assert messages(client, headers=both).status_code == 400
    assert messages(client, headers={"x-api-key": "k"}).status_code == 400
    assert messages(client, headers={"x-api-key": "k", "anthropic-version": "2024-01-01"}).status_code == 400
    first_system = [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]
    assert messages(client, messages=first_system).status_code == 400
    mid = [{"role": "user", "content": "a"}, {"role": "system", "content": "be brief"},
           {"role": "user", "content": [{"type": "text", "text": "b"},
                                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]
    assert messages(client, messages=mid).json()["usage"]["input_tokens"] == 1 + 2 + 1 + 1000
    assert messages(client, n=2).json()["error"]["message"] == "n: Extra inputs are not permitted"
    gone = messages(client, model="claude-old-1")
    assert gone.status_code == 404
    assert gone.json()["error"] == {"type": "not_found_error", "message": "model: claude-old-1"}


def _image(media: str, data: str = "iVBORw0KGgo=") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}


def _user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


EPHEMERAL, ONE_HOUR = {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}
OPEN_OBJECT = {"type": "object", "properties": {"a": {"type": "string"}}}
CALL = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
LOOKUP = {"name": "f", "input_schema": {"type": "object"}}


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": text, **extra}


@pytest.mark.parametrize("body, message", [
    ({"system": [_text("")]}, "system.0.text: text content blocks must be non-empty"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": ""}]},
     "text content blocks must be non-empty"),
    ({"messages": _user(_text(""), _text("b"))}, "messages.0.content.0.text: text content blocks must be non-empty"),
    ({"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": [CALL]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                 "content": [_text("")]}]}]},
     "messages.2.content.0.content.0.text: text content blocks must be non-empty"),
    ({"messages": _user(_image("image/jpg"))}, "messages.0.content.0.source.media_type: Input should be"),
    ({"messages": _user(_image("image/heic"))}, "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"),
    ({"messages": _user(_image("image/svg+xml"))}, "media_type"),
    ({"messages": _user(_image("image/png", "A" * (5 * 1024 * 1024 + 4)))},
     "image exceeds 5 MB maximum: 5242884 bytes > 5242880 bytes"),
    ({"messages": _user(_text("a", cache_control={"type": "ephemeral", "scope": "x"}))},
     "messages.0.content.0.cache_control"),
    ({"messages": _user(_text("a", cache_control={"type": "ephemeral", "ttl": "2h"}))}, "cache_control"),
    ({"tools": [{**LOOKUP, "cache_control": {"type": "persistent"}}], "tool_choice": {"type": "none"}},
     "tools.0.cache_control"),
    ({"messages": _user(*[_text(f"p{k}", cache_control=EPHEMERAL) for k in range(5)])},
     "A maximum of 4 blocks with cache_control may be provided. Found 5."),
    ({"system": [_text("s", cache_control=EPHEMERAL)], "messages": _user(_text("a", cache_control=ONE_HOUR))},
     "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"),
    ({"stop_sequences": ["END", "\n"]}, "stop_sequences: each stop sequence must contain non-whitespace"),
    ({"stop_sequences": [""]}, "stop_sequences: each stop sequence must be non-empty"),
    ({"output_config": {"format": {"type": "json_schema", "schema": OPEN_OBJECT}}},
     "output_config.format.schema: For 'object' type, 'additionalProperties' must be explicitly set to false"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {
        "type": "object", "additionalProperties": False,
        "properties": {"in": {"type": "array", "items": OPEN_OBJECT}}}}}},
     "'additionalProperties' must be explicitly set to false"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {**OPEN_OBJECT, "additionalProperties": True}}}},
     "'additionalProperties' must be explicitly set to false"),
    ({"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": [{**CALL, "id": "fn.f:0"}]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "fn.f:0"}]}]},
     "messages.1.content.0.id: String should match pattern '^[a-zA-Z0-9_-]+$'"),
    ({"tools": [{"name": "f", "input_schema": {"properties": {}}}]},
     "tools.0.custom.input_schema.type: Field required"),
    ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]},
     "tools.0.custom.input_schema.type: Input should be"),
])
def test_anthropic_refuses_what_the_api_refuses(client: httpx.Client, body: dict[str, Any], message: str) -> None:
    r = messages(client, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and message in r.json()["error"]["message"]


def test_anthropic_accepts_the_valid_neighbours(client: httpx.Client) -> None:
    ok = [_image(media) for media in ("image/jpeg", "image/png", "image/gif", "image/webp")]
    assert messages(client, messages=_user(*ok, _text("?"))).status_code == 200
    four = [_text(f"p{k}", cache_control=ONE_HOUR if k < 2 else EPHEMERAL) for k in range(4)]
    assert messages(client, messages=_user(*four), stop_sequences=[" END "]).status_code == 200
    tools = [{**LOOKUP, "cache_control": ONE_HOUR}]
    system = [_text("s", cache_control={"type": "ephemeral", "ttl": "5m"})]
    assert messages(client, tools=tools, tool_choice={"type": "none"}, system=system).status_code == 200


# -- Gemini ---------------------------------------------------------------------------------------
def test_gemini_success_with_exact_usage(client: httpx.Client) -> None:
    r = generate(client, systemInstruction={"parts": [{"text": "You are terse."}]})
    assert r.status_code == 200
    g = r.json()
    text = f"Emulated reply from gemini-2.5-flash to: {HELLO}"
    cand = g["candidates"][0]
    assert cand == {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
    n = tok(text)
    assert g["usageMetadata"] == {"promptTokenCount": 10, "candidatesTokenCount": n, "totalTokenCount": 10 + n}
    assert g["modelVersion"] == "gemini-2.5-flash" and g["responseId"]
    assert generate(client, "gemini-3.5-flash").json()["modelVersion"] == "gemini-3.6-flash"
    cut = generate(client, generationConfig={"maxOutputTokens": 2}).json()
    assert cut["candidates"][0]["finishReason"] == "MAX_TOKENS" and cut["usageMetadata"]["candidatesTokenCount"] == 2
    gone = generate(client, "gemini-2.0-flash")
    assert gone.status_code == 404 and gone.json()["error"]["status"] == "NOT_FOUND"
    assert gone.json()["error"]["message"].startswith("models/gemini-2.0-flash is not found for API version v1beta")


def test_gemini_implicit_cache_is_inside_prompt(client: httpx.Client) -> None:
    system = {"parts": [{"text": "B" * 1200}]}  # 300 tokens
    first = generate(client, systemInstruction=system).json()["usageMetadata"]
    assert first["promptTokenCount"] == 306 and "cachedContentTokenCount" not in first
    second = generate(client, systemInstruction=system).json()["usageMetadata"]
    assert second["promptTokenCount"] == 306 and second["cachedContentTokenCount"] == 300
    short = {"parts": [{"text": "C" * 800}]}  # 200 tokens: below the implicit-cache minimum
    generate(client, systemInstruction=short)
    assert "cachedContentTokenCount" not in generate(client, systemInstruction=short).json()["usageMetadata"]


def test_gemini_thinking(client: httpx.Client) -> None:
    g = generate(client, generationConfig={"thinkingConfig": {"thinkingLevel": "low", "includeThoughts": True}}).json()
    parts, usage = g["candidates"][0]["content"]["parts"], g["usageMetadata"]
    assert parts[0]["thought"] is True and "thought" not in parts[1]
    assert usage["thoughtsTokenCount"] == 40
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"] + 40
    off = generate(client, generationConfig={"thinkingConfig": {"thinkingBudget": 0}}).json()
    assert "thoughtsTokenCount" not in off["usageMetadata"]
    both = generate(client, generationConfig={"thinkingConfig": {"thinkingBudget": 100, "thinkingLevel": "low"}})
    assert both.status_code == 400 and both.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_gemini_function_call_and_thought_signatures(client: httpx.Client) -> None:
    tools = [{"functionDeclarations": [{"name": "get_weather", "parameters": {
        "type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}]
    model = "gemini-3-flash-preview"
    g = generate(client, model, tools=tools).json()
    part = g["candidates"][0]["content"]["parts"][0]
    assert part["functionCall"] == {"name": "get_weather", "args": {"city": "sample"}} and part["thoughtSignature"]
    assert g["candidates"][0]["finishReason"] == "STOP"

    def replay(call_part: dict[str, Any]) -> httpx.Response:
        contents = [{"role": "user", "parts": [{"text": HELLO}]}, {"role": "model", "parts": [call_part]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 20}}}]}]
        return generate(client, model, tools=tools, contents=contents)

    missing = replay({"functionCall": part["functionCall"]})
    assert missing.status_code == 400 and missing.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert missing.json()["error"]["message"].startswith("Function call is missing a thought_signature")
    ok = replay(part)
    assert ok.status_code == 200 and "text" in ok.json()["candidates"][0]["content"]["parts"][0]
    assert replay({**part, "thoughtSignature": "skip_thought_signature_validator"}).status_code == 200
    old = generate(client, tools=tools).json()["candidates"][0]["content"]["parts"][0]
    assert "thoughtSignature" not in old
    assert generate(client, model, generationConfig={"presencePenalty": 0.5}).status_code == 400
    assert generate(client, generationConfig={"presencePenalty": 0.5}).status_code == 200


def test_gemini_json_mode_and_missing_key(client: httpx.Client, emu: RunningEmulator) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    g = generate(client, generationConfig={"responseMimeType": "application/json", "responseJsonSchema": schema}).json()
    assert json.loads(g["candidates"][0]["content"]["parts"][0]["text"]) == {"ok": True}
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    r = client.post("/v1beta/models/gemini-2.5-flash:generateContent", json=body)
    err = r.json()["error"]
    assert r.status_code == 400 and err["status"] == "INVALID_ARGUMENT"
    assert err["details"][0]["reason"] == "API_KEY_INVALID"
    assert client.post("/v1/models/gemini-2.5-flash:generateContent?key=k", json=body).status_code == 200


def test_gemini_embeddings_and_count_tokens(client: httpx.Client) -> None:
    url = "/v1beta/models/gemini-embedding-001:batchEmbedContents"

    def req(text: str, **extra: Any) -> dict[str, Any]:
        return {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": text}]}, **extra}

    r = client.post(url, json={"requests": [req("a"), req("b"), req("a", outputDimensionality=8)]}, headers=G_HEADERS)
    embs = r.json()["embeddings"]
    assert r.status_code == 200 and set(r.json()) == {"embeddings"}
    assert [len(e["values"]) for e in embs] == [3072, 3072, 8]
    for e in (embs[0], embs[2]):
        assert abs(sum(v * v for v in e["values"]) - 1) < 1e-9
    assert embs[0] != embs[1]
    assert client.post(url, json={"requests": [req("a")]}, headers=G_HEADERS).json()["embeddings"][0] == embs[0]
    many = client.post(url, json={"requests": [req(str(i)) for i in range(101)]}, headers=G_HEADERS)
    assert many.status_code == 400 and "at most 100 requests can be in one batch" in many.json()["error"]["message"]
    wrong = {"requests": [{**req("a"), "model": "models/other"}]}
    assert client.post(url, json=wrong, headers=G_HEADERS).status_code == 400
    count = client.post("/v1beta/models/gemini-2.5-flash:countTokens", headers=G_HEADERS,
                        json={"contents": [{"role": "user", "parts": [{"text": HELLO}, {"text": "abcd"}]}]})
    assert count.json() == {"totalTokens": 7}


# -- faults, markers, latency, stats ---------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 429, 500, 503, 529])
def test_fail_marker_answers_status_with_provider_body(client: httpx.Client, status: int) -> None:
    a = messages(client, messages=[{"role": "user", "content": f"x #emu:fail={status}"}])
    assert a.status_code == status and a.json()["type"] == "error" and a.json()["request_id"].startswith("req_")
    g = generate(client, contents=[{"role": "user", "parts": [{"text": f"x #emu:fail={status}"}]}])
    assert g.status_code == status and g.json()["error"]["code"] == status


def test_retry_headers_and_retry_info(client: httpx.Client) -> None:
    r = messages(client, messages=[{"role": "user", "content": "#emu:fail=429"}])
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("1", "1000")
    r = messages(client, messages=[{"role": "user", "content": "#emu:fail=529 #emu:retry-after=2.5"}])
    assert r.json()["error"]["type"] == "overloaded_error"
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("2.5", "2500")
    g = generate(client, contents=[{"parts": [{"text": "#emu:fail=429 #emu:retry-after=7"}]}]).json()["error"]
    assert g["status"] == "RESOURCE_EXHAUSTED"
    info = [d for d in g["details"] if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
    assert info == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]


def test_fail_first_reset_malformed_slow(client: httpx.Client) -> None:
    flaky = [{"role": "user", "content": "flaky #emu:fail-first=2:503"}]
    assert [messages(client, messages=flaky).status_code for _ in range(3)] == [503, 503, 200]
    with pytest.raises(httpx.RemoteProtocolError):
        messages(client, messages=[{"role": "user", "content": "#emu:reset"}])
    bad = generate(client, contents=[{"parts": [{"text": "#emu:malformed"}]}])
    assert bad.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        bad.json()
    start = time.perf_counter()
    assert messages(client, messages=[{"role": "user", "content": "#emu:slow=150"}]).status_code == 200
    assert time.perf_counter() - start >= 0.15


def test_random_faults_latency_and_stats() -> None:
    with start_background(EmulatorConfig(rate_429=1.0, retry_after=3, latency_ms=40, seed=7)) as emu, \
            httpx.Client(base_url=emu.url) as c:
        start = time.perf_counter()
        r = messages(c)
        assert time.perf_counter() - start >= 0.04
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        g = generate(c).json()["error"]
        assert g["details"][-1]["retryDelay"] == "3s"
        c.post("/v1beta/models/gemini-embedding-001:countTokens", json={"contents": [{"parts": [{"text": "a"}]}]},
               headers=G_HEADERS)
        stats = c.get("/_emulator/stats").json()
        assert stats == emu.stats() == {
            "calls": 3, "by_path": {"messages": 1, "generateContent": 1, "countTokens": 1}, "by_status": {"429": 3},
            "by_model": {"claude-x": 1, "gemini-2.5-flash": 1, "gemini-embedding-001": 1}, "rate_limited": 0,
            "batch_items": {}}
        c.post("/_emulator/reset")
        assert emu.stats()["calls"] == 0
    with start_background(EmulatorConfig(error_rate=1.0, require_key=False, seed=3)) as emu, \
            httpx.Client(base_url=emu.url) as c:
        statuses = {messages(c, headers={"anthropic-version": "2023-06-01"}).status_code for _ in range(20)}
        assert statuses <= {500, 503, 529} and len(statuses) > 1
        assert {generate(c).status_code for _ in range(20)} == {500, 503}  # Gemini has no 529
        assert emu.stats()["by_status"].keys() <= {"500", "503", "529"}


def test_rpm_limit_answers_429_over_a_sliding_minute():
    with start_background(EmulatorConfig(rpm_limit=3, require_key=False)) as emu, httpx.Client(base_url=emu.url) as c:
        codes = [messages(c, headers={"anthropic-version": "2026-10-21"}).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        assert emu.stats()["rate_limited"] == 2


@pytest.mark.parametrize("package", ["worker/emulator", "worker/providers"])
def test_each_module_reads_in_one_sitting(package: str) -> None:
    """Issue 9's bound for the wire formats: no module over 400 lines, no function over 60."""
    paths = sorted((Path(__file__).resolve().parents[1] / package).rglob("*.py"))
    assert paths, f"{package} is not a package"
    too_long = []
    for path in paths:
        source = path.read_text()
        lines = source.count("\n")
        too_long += [f"{path.name}: {lines} lines"] if lines > 400 else []
        too_long += [f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                     for node in ast.walk(ast.parse(source))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and (node.end_lineno or node.lineno) - node.lineno + 1 > 60]
    assert too_long == []
