"""Adapter bodies against the emulator, which refuses what the real APIs refuse (issue 8).

Each request here once produced a body the Messages API answers with a 400 (an empty text block, an
image/jpg source, an open object schema...). The adapter now translates it into one the emulator,
and so the API, accepts.
"""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from worker.emulator import EmulatorConfig, start_background
from worker.providers import anthropic
from worker.registry import ModelSpec
from worker.schemas import ChatRequest

API = "2026-10-21"
OPUS = ModelSpec.model_validate({
    "id": "anthropic/claude-opus-5-5", "provider": "anthropic", "upstream": "claude-opus-5-5", "kind": "chat",
    "pricing": {"input": 1, "output": 5, "cache_read": "0.1", "cache_write": "1.25"},
    "rules": {"sampling": "rejected", "thinking": "adaptive", "reasoning_efforts": ["low", "medium", "high"],
              "mid_conversation_system": True, "assistant_prefill": False, "max_output_tokens": 128000}})
PNG = "data:image/png;base64,iVBORw0KGgo="
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


CASES: dict[str, dict[str, Any]] = {
    "empty system parts": {"messages": [{"role": "system", "content": [text(""), text("Valid"), text("")]},
                                        {"role": "user", "content": "Hi"}]},
    "empty mid-conversation system": {"messages": [{"role": "user", "content": "Hi"},
                                                   {"role": "system", "content": ""}]},
    "empty part beside an image": {"messages": [{"role": "user", "content": [text(""), image(PNG), text("What?")]}]},
    "image/jpg": {"messages": [{"role": "user", "content": [image("data:image/jpg;base64,/9j/4AAQ"), text("?")]}]},
    "json_object": {"messages": [{"role": "user", "content": "JSON please"}],
                    "response_format": {"type": "json_object"}},
    "non-strict json_schema": {"messages": [{"role": "user", "content": "Profile"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {
            "name": {"type": "string"}, "tags": {"type": "array", "items": {
                "type": "object", "properties": {"k": {"type": "string"}}}}}}}}},
    "1h system then 5m user breakpoints": {"messages": [
        {"role": "system", "content": [text("S" * 40, cache_control={"type": "ephemeral", "ttl": "1h"})]},
        {"role": "user", "content": [text("Q", cache_control={"type": "ephemeral"})]}]},
    "empty tool output": {"tools": [TOOL], "messages": [
        {"role": "user", "content": "Look it up"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": [text("")]}]},
    "foreign tool call id": {"tools": [TOOL], "messages": [
        {"role": "user", "content": "Look it up"},
        {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": "functions.lookup:0"}]},
        {"role": "tool", "tool_call_id": "functions.lookup:0", "content": "found"}]},
    "parameters without type": {"messages": [{"role": "user", "content": "Look it up"}], "tools": [
        {"type": "function", "function": {"name": "lookup", "parameters": {"properties": {"q": {"type": "string"}}}}}]},
}


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with start_background(EmulatorConfig(seed=3)) as emu, httpx.Client(base_url=emu.url, timeout=5) as c:
        yield c


@pytest.mark.parametrize("name", CASES)
def test_the_emulator_accepts_what_the_adapter_sends(client: httpx.Client, name: str) -> None:
    request = ChatRequest.model_validate({"model": OPUS.id, **CASES[name]})
    (call,) = anthropic.prepare_chat(request, OPUS, api_version=API, drop_unsupported=False).calls
    r = client.post(call.path, json=call.json, headers={**call.headers, **anthropic.auth_headers("k")})
    assert r.status_code == 200, r.json()["error"]["message"]
    assert anthropic.parse_chat(r.json(), OPUS).body["choices"][0]["finish_reason"] in ("stop", "tool_calls")
