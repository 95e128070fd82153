"""The OpenAI sub-shapes are typed once (worker/schemas.py): one parse, one error-path style, typed objects out.

Submit-time validation (`producer.batchfile`) and the workers parse bodies with the same `chat_request`,
so a bad place in a body is named the same way at submit, at work and by the adapters' own rules:
`messages[2].content[1].image_url.url`, never pydantic's `messages.2.content.list[...].1` nor a
union branch's name.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from producer.batchfile import read_batch
from worker.errors import InvalidRequest
from worker.providers import anthropic, google
from worker.registry import Registry
from worker.schemas import (ImagePart, JsonSchemaFormat, NamedToolChoice, OtherPart, TextPart, ToolCall,
                            chat_request, error_path)

USER = {"role": "user", "content": "hi"}
ONE_STYLE = re.compile(r"[a-z_]+(\[\d+\])*(\.[a-z_]+(\[\d+\])*)*")
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "google/gemini-3-flash", "messages": list(messages) or [USER], **fields}


def call(arguments: Any, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}, **extra}


def with_call(arguments: Any) -> dict[str, Any]:
    return body(USER, {"role": "assistant", "tool_calls": [call(arguments)]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"})


BAD = [  # (body, the param naming the bad place, a fragment of the message)
    (body({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}),
     "messages[0].content[1].image_url.url", "Field required"),
    (body({"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}),
     "messages[0].content[1]", "needs a string 'type'"),
    (body({"role": "user", "content": [{"type": "text", "text": 7}]}), "messages[0].content[0].text", "valid string"),
    (body({"role": "user", "content": 5}), "messages[0].content", "a string or a list of content parts"),
    (with_call("[1, 2]"), "messages[1].tool_calls[0].function.arguments", "must be a JSON object"),
    (with_call("{oops"), "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
    (body(tools=[{"type": "function", "function": {"description": "no name"}}]), "tools[0].function.name", "required"),
    (body(tools=[{"type": "retrieval"}]), "tools[0].type", "'function'"),
    (body(tools=TOOLS, tool_choice="sometimes"), "tool_choice", "'auto', 'none' or 'required'"),
    (body(tools=TOOLS, tool_choice=3), "tool_choice", "{'type': 'function'"),
    (body(response_format={"type": "yaml"}), "response_format", "{'type': 'json_object'}"),
    (body(response_format={"type": "json_schema", "json_schema": {"name": "a"}}),
     "response_format.json_schema.schema", "Field required"),
    (body(stop=5), "stop", "valid string"),
]


@pytest.mark.parametrize(("bad", "where", "fragment"), BAD, ids=[w + ":" + f for _, w, f in BAD])
def test_a_bad_place_is_named_one_way_at_submit_and_at_work(registry: Registry, bad: dict[str, Any], where: str,
                                                             fragment: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        chat_request(bad)  # what the worker runs before translating
    assert exc.value.param == where
    assert exc.value.message.startswith(f"body.{where}: ") and fragment in exc.value.message
    assert ONE_STYLE.fullmatch(where)  # field names and [index], nothing of pydantic's own
    (err,) = read_batch(io.BytesIO(json.dumps(bad).encode() + b"\n"), registry).errors  # what submit says
    assert err.error.message == exc.value.message and err.error.to_openai()["error"]["param"] == where


def test_error_path_drops_union_branches_only() -> None:
    loc = ("messages", 2, "content", "content parts", 1, "image part", "image_url", "url")
    assert error_path(loc) == "messages[2].content[1].image_url.url"
    assert error_path(("input", "list[str]", 0)) == "input[0]"
    assert error_path(()) == ""


def test_adapters_receive_typed_objects() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    request = chat_request(body(
        {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": "https://x/a.png"},
                                     {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]},
        {"role": "assistant", "tool_calls": [call('{"q": 1}')]}, {"role": "tool", "tool_call_id": "c1", "content": "1"},
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "f"}}, response_format=rf))
    text, image, audio = request.messages[0].content or []
    assert isinstance(text, TextPart) and text.text == "see"
    assert isinstance(image, ImagePart) and image.image_url.url == "https://x/a.png"  # a bare URL string is read too
    assert isinstance(audio, OtherPart) and audio.type == "input_audio"  # left for the adapter to name
    (tool_call,) = request.messages[1].tool_calls or []
    assert isinstance(tool_call, ToolCall) and tool_call.function.parsed_arguments() == {"q": 1}
    assert isinstance(request.tool_choice, NamedToolChoice) and request.tool_choice.function.name == "f"
    assert isinstance(request.response_format, JsonSchemaFormat)
    assert request.response_format.json_schema.schema_ == {"type": "object"}
    assert request.tool_names() == ["f"]


def test_unknown_fields_of_sub_shapes_are_kept() -> None:
    request = chat_request(body(
        {"role": "user", "content": [{"type": "text", "text": "a", "annotations": []}], "audio": None},
        tools=[{**TOOLS[0], "custom": 1, "function": {**TOOLS[0]["function"], "strict": True}}]))
    assert (request.messages[0].content or [])[0].model_extra == {"annotations": []}
    assert request.messages[0].model_extra == {"audio": None}
    assert (request.tools or [])[0].model_extra == {"custom": 1}
    assert (request.tools or [])[0].function.model_extra == {"strict": True}


@pytest.mark.parametrize("arguments", ["", None, "  ", {}, "{}"])
def test_no_arguments_read_as_an_empty_object_for_both_providers(registry: Registry, arguments: Any) -> None:
    request = chat_request(with_call(arguments))
    haiku = registry.resolve_for("anthropic/claude-haiku-5-5", "chat")
    flash = registry.resolve_for("google/gemini-3-flash", "chat")
    sent = anthropic.prepare_chat(request, haiku, api_version="2023-06-01", drop_unsupported=False).calls[0].json
    assert sent["messages"][1]["content"][0]["input"] == {}
    sent = google.prepare_chat(request, flash, api_version="v1beta", drop_unsupported=False).calls[0].json
    assert sent["contents"][1]["parts"][0]["functionCall"]["args"] == {}


def test_anthropic_names_a_tool_call_without_an_id(registry: Registry) -> None:
    bad = body(USER, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}, USER)
    haiku = registry.resolve_for("anthropic/claude-haiku-5-5", "chat")
    with pytest.raises(InvalidRequest) as exc:
        anthropic.prepare_chat(chat_request(bad), haiku, api_version="2023-06-01", drop_unsupported=False)
    assert exc.value.param == "messages[1].tool_calls[0].id"
