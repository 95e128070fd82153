"""Gemini adapter: pure translation tests against fixtures shaped like real API answers."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from worker import clock
from worker.errors import InvalidRequest, ProtocolError, UnsupportedParameter, UpstreamError
from worker.providers import google
from worker.providers.base import UpstreamCall
from worker.registry import ModelSpec
from worker.schemas import ChatRequest, chat_request, EmbeddingRequest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "google"
PRICING = {"input": "0.75", "output": "3.75", "cache_read": "0.075", "cache_write": "0"}
GEMINI_3 = {
    "sampling": "ignored",
    "thinking": "level",
    "reasoning_efforts": ["low", "medium", "high", "xhigh"],
    "thought_signatures": True,
    "assistant_prefill": False,
    "max_output_tokens": 65536,
}
GEMINI_25 = {
    "sampling": "accepted",
    "penalties": True,
    "seed": True,
    "thinking": "budget",
    "reasoning_efforts": ["none", "low", "medium", "high"],
    "max_output_tokens": 65536,
}


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def spec(model: str = "gemini-3.8-flash", kind: str = "chat", **rules: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": f"google/{model}", "provider": "google", "upstream": model, "kind": kind, "pricing": PRICING,
         "rules": rules}
    )


G3 = spec(**GEMINI_3)
G25 = spec("gemini-2.5-flash", **GEMINI_25)


def chat(*messages: dict[str, Any], **fields: Any) -> ChatRequest:
    msgs = list(messages) or [{"role": "user", "content": "Hi"}]
    return chat_request({"model": "google/x", "messages": msgs, **fields})


def prepare(request: ChatRequest, model: ModelSpec = G3, *, drop: bool = False):
    return google.prepare_chat(request, model, api_version="v1beta", drop_unsupported=drop)


def body_of(request: ChatRequest, model: ModelSpec = G3, *, drop: bool = False) -> dict[str, Any]:
    return prepare(request, model, drop=drop).calls[0].json


def config_of(request: ChatRequest, model: ModelSpec = G3, *, drop: bool = False) -> dict[str, Any]:
    return body_of(request, model, drop=drop).get("generationConfig", {})


# -- auth and call shape --------------------------------------------------------------------------
def test_auth_header_and_env_name() -> None:
    assert google.API_KEY_ENV == "GEMINI_API_KEY"
    assert google.auth_headers("k-123") == {"x-goog-api-key": "k-123"}


def test_one_non_streaming_generate_content_call() -> None:
    prepared = prepare(chat())
    assert prepared.calls == [
        UpstreamCall("POST", "/v1beta/models/gemini-3.8-flash:generateContent",
                     json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
    ]
    assert prepared.dropped_params == [] and prepared.notes == []
    v1 = google.prepare_chat(chat(), spec("gemini-x", **GEMINI_3), api_version="v1", drop_unsupported=False)
    assert v1.calls[0].path == "/v1/models/gemini-x:generateContent"


# -- messages -------------------------------------------------------------------------------------
def test_system_and_developer_messages_fold_into_system_instruction() -> None:
    prepared = prepare(chat(
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut"},
        {"role": "system", "content": "Now answer in German."},
        {"role": "user", "content": "Again"},
    ))
    body = prepared.calls[0].json
    assert body["systemInstruction"] == {
        "parts": [{"text": "Be terse."}, {"text": "Answer in French."}, {"text": "Now answer in German."}]
    }
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert len(prepared.notes) == 1 and "messages[4]" in prepared.notes[0]


def test_only_system_messages_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        prepare(chat({"role": "system", "content": "x"}))


def test_user_images_inline_and_by_url() -> None:
    body = body_of(chat({"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.PNG?size=large"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
    ]}))
    assert body["contents"][0]["parts"] == [
        {"text": "Compare"},
        {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.PNG?size=large"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/render"}},
    ]


@pytest.mark.parametrize("url", ["data:image/png,rawbytes", "ftp://example.com/a.png", ""])
def test_bad_image_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        prepare(chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}))
    assert err.value.param == "messages[0].content[0]"


def test_images_refused_when_model_takes_none() -> None:
    no_images = spec(**GEMINI_3, images=False)
    with pytest.raises(InvalidRequest, match="does not accept images"):
        prepare(chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}),
                no_images)


def test_unknown_content_part_is_invalid() -> None:
    with pytest.raises(InvalidRequest) as err:
        prepare(chat({"role": "user", "content": [{"type": "video_url", "video_url": "x"}]}))
    assert err.value.param == "messages[0].content[0]"


def tool_call(call_id: str, name: str, args: str, signature: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
    if signature is not None:
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return call


def test_assistant_tool_calls_and_tool_results() -> None:
    prepared = prepare(chat(
        {"role": "user", "content": "Weather in Paris and London?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            tool_call("call_a", "get_weather", '{"city": "Paris"}'),
            tool_call("call_b", "get_time", ""),
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 18}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "14:05"},
        {"role": "user", "content": "Thanks"},
    ), G25)
    contents = prepared.calls[0].json["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"text": "Checking."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "args": {}}},
    ]}
    assert contents[2] == {"role": "user", "parts": [  # both tool results and the next user text: one turn
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
        {"functionResponse": {"name": "get_time", "response": {"result": "14:05"}}},
        {"text": "Thanks"},
    ]}
    assert len(contents) == 3


def test_tool_result_that_is_json_but_not_an_object_is_wrapped() -> None:
    contents = body_of(chat(
        {"role": "user", "content": "list"},
        {"role": "assistant", "tool_calls": [tool_call("c1", "ls", "{}")]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "[1, 2]"}]},
    ), G25)["contents"]
    assert contents[2]["parts"] == [{"functionResponse": {"name": "ls", "response": {"result": "[1, 2]"}}}]


def test_tool_result_for_unknown_call_is_invalid() -> None:
    with pytest.raises(InvalidRequest) as err:
        prepare(chat({"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}))
    assert err.value.param == "messages[1].tool_call_id"


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_bad_tool_call_arguments_name_the_message(arguments: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        prepare(chat({"role": "user", "content": "x"},
                     {"role": "assistant", "tool_calls": [tool_call("c1", "f", arguments)]}), G25)
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"
    assert "messages[1]" in err.value.message


def test_consecutive_same_role_turns_merge() -> None:
    contents = body_of(chat({"role": "user", "content": "a"}, {"role": "user", "content": "b"}), G25)["contents"]
    assert contents == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}]


def test_prefill_refused_when_model_refuses_it() -> None:
    with pytest.raises(InvalidRequest) as err:
        prepare(chat({"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure, "}), drop=True)
    assert not isinstance(err.value, UnsupportedParameter) and err.value.param == "messages"
    ok = body_of(chat({"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure, "}), G25)
    assert ok["contents"][-1] == {"role": "model", "parts": [{"text": "Sure, "}]}


def test_last_assistant_without_text_is_not_a_prefill() -> None:
    prepare(chat({"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [
        tool_call("c1", "f", "{}", "sig")]}))


# -- thought signatures ---------------------------------------------------------------------------
def test_tool_call_round_trip_keeps_signatures_byte_for_byte() -> None:
    answer = fixture("chat_function_call.json")
    sent_sig = answer["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    parsed = google.parse_chat(answer, G3)
    message = json.loads(json.dumps(parsed.body))["choices"][0]["message"]  # as stored in a results file
    calls = message["tool_calls"]
    assert calls[0]["extra_content"] == {"google": {"thought_signature": sent_sig}}
    assert "extra_content" not in calls[1]  # parallel calls: only the first is signed

    replay = chat(
        {"role": "user", "content": "Weather in Paris and London?"},
        message,
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temp_c": 18}'},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": '{"temp_c": 14}'},
    )
    prepared = prepare(replay)
    model_turn = prepared.calls[0].json["contents"][1]
    assert model_turn == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
         "thoughtSignature": sent_sig},
        {"functionCall": {"name": "get_weather", "args": {"city": "London", "unit": "celsius"}}},
    ]}
    assert json.dumps(model_turn["parts"][0]["thoughtSignature"]) == json.dumps(sent_sig)
    assert prepared.notes == []  # signed history: no sentinel
    assert prepared.calls[0].json["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 14}}},
    ]


def test_text_signature_returns_on_first_text_part() -> None:
    answer = fixture("chat_thoughts.json")
    sig = answer["candidates"][0]["content"]["parts"][1]["thoughtSignature"]
    message = google.parse_chat(answer, G3).body["choices"][0]["message"]
    assert message["extra_content"] == {"google": {"thought_signature": sig}}
    contents = body_of(chat({"role": "user", "content": "Count"}, message, {"role": "user", "content": "Sure?"}))
    assert contents["contents"][1]["parts"] == [{"text": message["content"], "thoughtSignature": sig}]


def test_unsigned_replayed_calls_get_the_sentinel_on_signature_models() -> None:
    request = chat(
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [tool_call("c1", "f", "{}"), tool_call("c2", "g", "{}")]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
    )
    prepared = prepare(request)
    parts = prepared.calls[0].json["contents"][1]["parts"]
    assert [p["thoughtSignature"] for p in parts] == ["skip_thought_signature_validator"] * 2
    assert len(prepared.notes) == 1 and "skip_thought_signature_validator" in prepared.notes[0]
    older = prepare(request, G25)  # 2.5 does not require signatures: nothing invented
    assert all("thoughtSignature" not in p for p in older.calls[0].json["contents"][1]["parts"])
    assert older.notes == []


def test_bad_signature_value_is_invalid() -> None:
    message = {"role": "assistant", "tool_calls": [tool_call("c1", "f", "{}")]}
    message["tool_calls"][0]["extra_content"] = {"google": {"thought_signature": 42}}
    with pytest.raises(InvalidRequest):
        prepare(chat({"role": "user", "content": "x"}, message, {"role": "tool", "tool_call_id": "c1", "content": "1"}))


# -- generation config ----------------------------------------------------------------------------
def test_output_limit_and_stop_sequences() -> None:
    assert config_of(chat(max_tokens=100, stop="END")) == {"maxOutputTokens": 100, "stopSequences": ["END"]}
    assert config_of(chat(max_tokens=100, max_completion_tokens=200))["maxOutputTokens"] == 200
    assert config_of(chat(), spec(**GEMINI_3, default_max_tokens=4096)) == {"maxOutputTokens": 4096}
    assert "generationConfig" not in body_of(chat())


def test_output_limit_above_model_limit_is_invalid() -> None:
    with pytest.raises(InvalidRequest) as err:
        prepare(chat(max_completion_tokens=70000), drop=True)
    assert err.value.param == "max_completion_tokens" and "65536" in err.value.message


def test_more_than_five_stop_sequences_is_invalid() -> None:
    assert config_of(chat(stop=list("abcde")))["stopSequences"] == list("abcde")
    with pytest.raises(InvalidRequest) as err:
        prepare(chat(stop=list("abcdef")), drop=True)
    assert err.value.param == "stop"


def test_sampling_accepted_is_sent() -> None:
    assert config_of(chat(temperature=0.2, top_p=0.9, top_k=40), G25) == {
        "temperature": 0.2, "topP": 0.9, "topK": 40}


def test_sampling_ignored_is_always_dropped_without_error() -> None:
    prepared = prepare(chat(temperature=0.2, top_k=40))  # drop_unsupported is False
    assert "generationConfig" not in prepared.calls[0].json
    assert prepared.dropped_params == ["temperature", "top_k"]
    assert prepared.notes and "ignores" in prepared.notes[0]


def test_sampling_rejected_is_unsupported() -> None:
    rejecting = spec(**{**GEMINI_3, "sampling": "rejected"})
    with pytest.raises(UnsupportedParameter) as err:
        prepare(chat(top_p=0.5), rejecting)
    assert err.value.param == "top_p"
    for text in ("top_p", "google/gemini-3.8-flash", "remove it or submit with --drop-unsupported-params"):
        assert text in err.value.message
    dropped = prepare(chat(top_p=0.5), rejecting, drop=True)
    assert dropped.dropped_params == ["top_p"] and "generationConfig" not in dropped.calls[0].json


def test_penalties_and_seed_follow_rules() -> None:
    request = chat(presence_penalty=0.5, frequency_penalty=-0.5, seed=7)
    assert config_of(request, G25) == {"presencePenalty": 0.5, "frequencyPenalty": -0.5, "seed": 7}
    with pytest.raises(UnsupportedParameter) as err:
        prepare(request)
    assert err.value.param == "presence_penalty"
    dropped = prepare(request, drop=True)
    assert dropped.dropped_params == ["presence_penalty", "frequency_penalty", "seed"]
    assert "generationConfig" not in dropped.calls[0].json


@pytest.mark.parametrize("seed", [2**31, -(2**31) - 1, 99999999999999999999])
def test_a_seed_past_32_bits_is_refused_at_submit_not_by_gemini(seed: int) -> None:
    """Gemini's seed is an int32: a bigger one was forwarded, and the provider's 400 came at work time."""
    with pytest.raises(InvalidRequest) as err:
        config_of(chat(seed=seed), G25)
    assert err.value.param == "seed"
    assert config_of(chat(seed=2**31 - 1), G25)["seed"] == 2**31 - 1


@pytest.mark.parametrize("fields, param", [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"123": 5}}, "logit_bias"),
    ({"service_tier": "priority"}, "service_tier"),  # flex, auto and default are routes (test_routes.py)
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
])
def test_parameters_gemini_lacks_are_unsupported(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as err:
        prepare(chat(**fields))
    assert err.value.param == param and "google/gemini-3.8-flash" in err.value.message
    dropped = prepare(chat(**fields), drop=True)
    assert dropped.dropped_params == [param]
    assert dropped.calls[0].json == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_harmless_values_and_user_pass_silently() -> None:
    prepared = prepare(chat(n=1, logprobs=False, logit_bias={}, parallel_tool_calls=True, user="u-1", stream=False))
    assert prepared.dropped_params == [] and prepared.notes == []
    assert prepared.calls[0].json == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert config_of(chat(response_format={"type": "text"})) == {}
    assert config_of(chat(response_format={"type": "json_object"})) == {"responseMimeType": "application/json"}
    assert config_of(chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})) == {
        "responseMimeType": "application/json", "responseJsonSchema": schema}
    with pytest.raises(UnsupportedParameter):
        prepare(chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}),
                spec(**GEMINI_3, json_schema=False))
    with pytest.raises(InvalidRequest):
        prepare(chat(response_format={"type": "yaml"}))


# -- tools ----------------------------------------------------------------------------------------
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "now"}},
]


@pytest.mark.parametrize("choice, config", [
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "now"}}, {"mode": "ANY", "allowedFunctionNames": ["now"]}),
])
def test_tools_and_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    body = body_of(chat(tools=TOOLS, tool_choice=choice))
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather now",
         "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now"},
    ]}]
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_forced_tool_choice_unsupported_when_model_cannot_force() -> None:
    no_force = spec(**GEMINI_3, forced_tool_choice=False)
    assert body_of(chat(tools=TOOLS, tool_choice="auto"), no_force)["toolConfig"]["functionCallingConfig"] == {
        "mode": "AUTO"}
    with pytest.raises(UnsupportedParameter) as err:
        prepare(chat(tools=TOOLS, tool_choice="required"), no_force)
    assert err.value.param == "tool_choice"
    dropped = prepare(chat(tools=TOOLS, tool_choice="required"), no_force, drop=True)
    assert "toolConfig" not in dropped.calls[0].json and dropped.dropped_params == ["tool_choice"]


def test_bad_tool_choice_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        prepare(chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "missing"}}))
    with pytest.raises(InvalidRequest):
        prepare(chat(tool_choice="required"))
    with pytest.raises(InvalidRequest):
        prepare(chat(tools=TOOLS, tool_choice="always"))


# -- reasoning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("effort, level", [("low", "low"), ("high", "high"), ("xhigh", "high")])
def test_reasoning_effort_as_thinking_level(effort: str, level: str) -> None:
    assert config_of(chat(reasoning_effort=effort)) == {"thinkingConfig": {"thinkingLevel": level}}


def test_reasoning_none_becomes_minimal_only_where_minimal_is_allowed() -> None:
    flash_lite = spec(**{**GEMINI_3, "reasoning_efforts": ["none", "minimal", "low", "high"]})
    assert config_of(chat(reasoning_effort="none"), flash_lite) == {"thinkingConfig": {"thinkingLevel": "minimal"}}
    no_minimal = spec(**{**GEMINI_3, "reasoning_efforts": ["none", "low", "high"]})
    with pytest.raises(UnsupportedParameter):
        prepare(chat(reasoning_effort="none"), no_minimal)


@pytest.mark.parametrize("effort, budget", [("none", 0), ("low", 1024), ("medium", 8192), ("high", 24576)])
def test_reasoning_effort_as_thinking_budget(effort: str, budget: int) -> None:
    assert config_of(chat(reasoning_effort=effort), G25) == {"thinkingConfig": {"thinkingBudget": budget}}


def test_reasoning_effort_outside_allowed_values_names_them() -> None:
    with pytest.raises(UnsupportedParameter) as err:
        prepare(chat(reasoning_effort="minimal"))
    assert err.value.param == "reasoning_effort"
    assert "low, medium, high, xhigh" in err.value.message and "google/gemini-3.8-flash" in err.value.message
    dropped = prepare(chat(reasoning_effort="minimal"), drop=True)
    assert dropped.dropped_params == ["reasoning_effort"] and "generationConfig" not in dropped.calls[0].json
    with pytest.raises(UnsupportedParameter, match="no reasoning control"):
        prepare(chat(reasoning_effort="low"), spec())


# -- chat answers ---------------------------------------------------------------------------------
def test_parse_text_reply_with_thoughts() -> None:
    parsed = google.parse_chat(fixture("chat_thoughts.json"), G3, request_id="req-1")
    body = parsed.body
    assert body["id"] == "chatcmpl-Vn4yaZmVNNKrz7IPtKu3iQk"  # OpenAI's shape, the responseId kept
    assert body["object"] == "chat.completion" and body["model"] == "google/gemini-3.8-flash"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "There are three r's in \"strawberry\"."
    assert choice["message"]["reasoning_content"].startswith("**Counting the letters**")
    assert "tool_calls" not in choice["message"]
    assert parsed.usage.model_dump() == {
        "input_tokens": 12, "cache_read_tokens": 0, "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
        "output_tokens": 229, "reasoning_tokens": 218, "estimated": False}
    assert body["usage"]["completion_tokens"] == 229 and body["usage"]["total_tokens"] == 241
    assert parsed.upstream_model == "gemini-3.8-flash" and parsed.request_id == "req-1"


def test_parse_function_calls() -> None:
    parsed = google.parse_chat(fixture("chat_function_call.json"), G3)
    choice = parsed.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"  # Gemini said STOP
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_weather"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "London", "unit": "celsius"}
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert calls[0]["id"] != calls[1]["id"]
    assert choice["message"]["content"] is None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.reasoning_tokens) == (84, 147, 101)


def test_cached_tokens_are_subtracted_once() -> None:
    parsed = google.parse_chat(fixture("chat_cached.json"), spec("gemini-3.6-flash", **GEMINI_3))
    usage = parsed.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        2048, 8192, 78, 64)
    assert usage.prompt_tokens == 10240
    openai = parsed.body["usage"]
    assert openai["prompt_tokens"] == 10240 and openai["prompt_tokens_details"]["cached_tokens"] == 8192
    assert openai["total_tokens"] == 10318  # equals Gemini's totalTokenCount: nothing counted twice


def test_blocked_prompt_is_content_filter_and_billed() -> None:
    parsed = google.parse_chat(fixture("chat_blocked.json"), G3)
    choice = parsed.body["choices"][0]
    assert choice["message"]["content"] is None and choice["finish_reason"] == "content_filter"
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (27, 0)


def test_max_tokens_is_length() -> None:
    parsed = google.parse_chat(fixture("chat_max_tokens.json"), spec("gemini-2.5-flash-lite", **GEMINI_25))
    assert parsed.body["choices"][0]["finish_reason"] == "length"
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.reasoning_tokens) == (9, 16, 0)


def test_rerouted_model_version_is_reported() -> None:
    parsed = google.parse_chat(fixture("chat_rerouted.json"), spec("gemini-3.7-flash", **GEMINI_3))
    assert parsed.body["model"] == "google/gemini-3.7-flash"
    assert parsed.upstream_model == "gemini-3.8-flash-001"
    assert parsed.usage.output_tokens == 33


def reply(usage: dict[str, Any], finish: str = "STOP", parts: list[dict] | None = None) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": parts or [{"text": "ok"}]}, "finishReason": finish}],
            "usageMetadata": usage, "modelVersion": "gemini-3.8-flash"}


def test_candidates_that_already_include_thoughts_are_not_added_twice() -> None:
    usage = google.parse_chat(reply({"promptTokenCount": 10, "candidatesTokenCount": 50, "thoughtsTokenCount": 20,
                                     "totalTokenCount": 60}), G3).usage
    assert (usage.output_tokens, usage.reasoning_tokens) == (50, 20)


def test_tool_use_prompt_tokens_bill_as_input() -> None:
    usage = google.parse_chat(reply({"promptTokenCount": 100, "cachedContentTokenCount": 40,
                                     "toolUsePromptTokenCount": 30, "candidatesTokenCount": 5,
                                     "thoughtsTokenCount": 7, "totalTokenCount": 142}), G3).usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (90, 40, 12)


# Every google-genai FinishReason (types.py, HEAD 66807187, 2026-08-21), plus CONTINUATION and ESCALATION
# (issue 8): an answer cut short is "length", one a filter stopped is "content_filter".
FINISH_REASONS = {
    "FINISH_REASON_UNSPECIFIED": "stop", "STOP": "stop", "MAX_TOKENS": "length", "CONTINUATION": "length",
    "SAFETY": "content_filter", "RECITATION": "content_filter", "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter", "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter", "ESCALATION": "content_filter",
    "OTHER": "stop", "IMAGE_OTHER": "stop", "NO_IMAGE": "stop",
    "MALFORMED_FUNCTION_CALL": "stop", "UNEXPECTED_TOOL_CALL": "stop", "TOO_MANY_TOOL_CALLS": "stop",
}


@pytest.mark.parametrize("reason, finish", [*FINISH_REASONS.items(), (None, "stop"), ("SOMETHING_NEW", "stop")])
def test_finish_reasons(reason: str | None, finish: str) -> None:
    parsed = google.parse_chat(reply({"promptTokenCount": 1}, finish=reason), G3)  # type: ignore[arg-type]
    assert parsed.body["choices"][0]["finish_reason"] == finish


def test_created_comes_from_the_clock() -> None:
    with clock.pinned("2026-12-02"):
        parsed = google.parse_chat(reply({"promptTokenCount": 1}), G3)
    assert parsed.body["created"] == 1796212800


def test_candidate_without_content_has_no_text() -> None:
    data = {"candidates": [{"finishReason": "MAX_TOKENS"}], "usageMetadata": {
        "promptTokenCount": 5, "thoughtsTokenCount": 100, "totalTokenCount": 105}, "modelVersion": "m"}
    parsed = google.parse_chat(data, G3)
    assert parsed.body["choices"][0]["message"]["content"] is None
    assert parsed.usage.output_tokens == 100


def test_generated_id_without_response_id() -> None:
    data = reply({"promptTokenCount": 1})
    assert google.parse_chat(data, G3).body["id"].startswith("chatcmpl-")


@pytest.mark.parametrize("data, field", [
    ({"candidates": [{"content": {"parts": [{"text": "x"}]}}]}, "usageMetadata"),
    ({"candidates": [], "usageMetadata": {"promptTokenCount": 1}}, "candidates"),
    ({"candidates": "x", "usageMetadata": {"promptTokenCount": 1}}, "candidates"),
    (reply({"candidatesTokenCount": 1}), "promptTokenCount"),
    (reply({"promptTokenCount": "12"}), "promptTokenCount"),
    (reply({"promptTokenCount": 5, "cachedContentTokenCount": 9}), "cachedContentTokenCount"),
    ({"candidates": [{"content": {"parts": {"text": "x"}}}], "usageMetadata": {"promptTokenCount": 1}}, "parts"),
    (reply({"promptTokenCount": 1}, parts=[{"functionCall": {"args": {}}}]), "functionCall"),
])
def test_malformed_answers_are_protocol_errors(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        google.parse_chat(data, G3)
    assert field in err.value.message and err.value.retryable


# -- embeddings -----------------------------------------------------------------------------------
EMBED = spec("gemini-embedding-001", kind="embedding", max_inputs=2048, dimensions=[128, 3072])


def embed(inputs: Any, **fields: Any) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "google/gemini-embedding-001", "input": inputs, **fields})


def test_embeddings_split_into_batches_of_100() -> None:
    texts = [f"doc {i}" for i in range(250)]
    prepared = google.prepare_embeddings(embed(texts, dimensions=768), EMBED, api_version="v1beta")
    assert [len(c.json["requests"]) for c in prepared.calls] == [100, 100, 50]
    assert {c.path for c in prepared.calls} == {"/v1beta/models/gemini-embedding-001:batchEmbedContents"}
    assert prepared.calls[2].json["requests"][-1] == {
        "model": "models/gemini-embedding-001", "content": {"parts": [{"text": "doc 249"}]},
        "outputDimensionality": 768}
    sent = [r["content"]["parts"][0]["text"] for c in prepared.calls for r in c.json["requests"]]
    assert sent == texts


def test_single_input_without_dimensions() -> None:
    prepared = google.prepare_embeddings(embed("hello"), EMBED, api_version="v1beta")
    assert prepared.calls[0].json == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello"}]}}]}


def test_embedding_limits() -> None:
    with pytest.raises(InvalidRequest) as err:
        google.prepare_embeddings(embed(["a", "b", "c"]), spec("e", kind="embedding", max_inputs=2),
                                  api_version="v1beta")
    assert err.value.param == "input"
    for dims in (64, 4096):
        with pytest.raises(InvalidRequest) as err:
            google.prepare_embeddings(embed("a", dimensions=dims), EMBED, api_version="v1beta")
        assert err.value.param == "dimensions"


def test_count_tokens_call_and_answer() -> None:
    call = google.prepare_count_tokens(embed(["a b", "c"]), EMBED, api_version="v1beta")
    assert call == UpstreamCall("POST", "/v1beta/models/gemini-embedding-001:countTokens", json={"contents": [
        {"role": "user", "parts": [{"text": "a b"}]}, {"role": "user", "parts": [{"text": "c"}]}]})
    assert google.parse_count_tokens(fixture("count_tokens.json")) == 23
    with pytest.raises(ProtocolError, match="totalTokens"):
        google.parse_count_tokens({"promptTokensDetails": []})


def test_estimate_tokens_is_a_quarter_of_characters_at_least_one_each() -> None:
    assert google.estimate_tokens(["abcd", "abcde", "a", "x" * 400]) == 1 + 2 + 1 + 100


THREE = ["alpha", "beta gamma", "delta epsilon zeta"]


def test_parse_embeddings_with_exact_count() -> None:
    parsed = google.parse_embeddings([fixture("embed_batch.json")], embed(THREE), EMBED, token_count=23)
    body = parsed.body
    assert body["object"] == "list" and body["model"] == "google/gemini-embedding-001"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["data"][0] == {"object": "embedding", "index": 0, "embedding": [0.012451172, -0.0234375, 0.5, -1.0]}
    assert body["data"][2]["embedding"][3] == 0.0
    assert body["usage"] == {"prompt_tokens": 23, "total_tokens": 23}
    assert parsed.usage.estimated is False


def test_parse_embeddings_estimates_without_count() -> None:
    parsed = google.parse_embeddings([fixture("embed_batch.json")], embed(THREE), EMBED, token_count=None)
    assert parsed.usage.input_tokens == google.estimate_tokens(THREE) == 2 + 3 + 5
    assert parsed.usage.estimated is True


def test_reported_usage_is_preferred() -> None:
    responses = [{"embeddings": [{"values": [1.0]}], "usageMetadata": {"promptTokenCount": 4}},
                 {"embeddings": [{"values": [2.0]}, {"values": [3.0]}], "usageMetadata": {"promptTokenCount": 6}}]
    parsed = google.parse_embeddings(responses, embed(THREE), EMBED, token_count=99)
    assert parsed.usage.input_tokens == 10 and not parsed.usage.estimated
    assert [d["embedding"] for d in parsed.body["data"]] == [[1.0], [2.0], [3.0]]


def test_base64_embeddings_are_little_endian_float32() -> None:
    parsed = google.parse_embeddings([fixture("embed_batch.json")], embed(THREE, encoding_format="base64"), EMBED,
                                     token_count=23)
    raw = base64.b64decode(parsed.body["data"][1]["embedding"])
    assert struct.unpack("<4f", raw) == (0.25, 0.0, -0.125, 0.75)


def test_embedding_count_mismatch_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        google.parse_embeddings([fixture("embed_batch.json")], embed(["a", "b"]), EMBED, token_count=None)
    with pytest.raises(ProtocolError):
        google.parse_embeddings([{"embedding": {"values": [1.0]}}], embed("a"), EMBED, token_count=None)
    with pytest.raises(ProtocolError):
        google.parse_embeddings([{"embeddings": [{"values": ["x"]}]}], embed("a"), EMBED, token_count=None)


# -- errors ---------------------------------------------------------------------------------------
def error_body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_rate_limit_error_uses_retry_info() -> None:
    err = google.parse_error(429, {"retry-after": "3"}, error_body("error_429.json"))
    assert isinstance(err, UpstreamError)
    assert (err.code, err.type, err.status_code, err.retryable) == ("resource_exhausted", "rate_limit_error", 429, True)
    assert err.retry_after == pytest.approx(27.324)
    assert "You exceeded your current quota" in err.message


def test_invalid_api_key_is_an_authentication_error() -> None:
    err = google.parse_error(400, {}, error_body("error_400_api_key.json"))
    assert (err.code, err.type, err.retryable) == ("api_key_invalid", "authentication_error", False)
    assert err.to_openai()["error"]["code"] == "api_key_invalid"


def test_overloaded_is_retryable_with_header_delay() -> None:
    err = google.parse_error(503, {"Retry-After": "5"}, error_body("error_503.json"))
    assert (err.code, err.type, err.retryable, err.retry_after) == ("unavailable", "api_error", True, 5.0)
    assert google.parse_error(503, {}, error_body("error_503.json")).retry_after is None


def test_status_without_rpc_status_uses_http_code() -> None:
    err = google.parse_error(404, {}, b'{"error": {"code": 404, "message": "models/x is not found"}}')
    assert (err.code, err.retryable) == ("http_404", False)


def test_non_json_error_body_keeps_a_snippet() -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head>\n<body>" + b"x" * 1000 + b"</body></html>"
    err = google.parse_error(502, {}, html)
    assert isinstance(err, UpstreamError)
    assert (err.code, err.retryable) == ("http_502", True)
    assert "502 Bad Gateway" in err.message and len(err.message) < 300
