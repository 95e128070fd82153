"""Anthropic adapter: pure translation, checked on hand-built specs and fixture answers shaped like the API's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from worker import clock
from worker.errors import InvalidRequest, ProtocolError, UnsupportedParameter, UpstreamError
from worker.providers import anthropic
from worker.registry import ModelSpec
from worker.schemas import ChatRequest, chat_request

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
NEW_API = "2026-10-21"
OLD_API = "2023-06-01"
PRICING = {"input": 1, "output": 5, "cache_read": "0.1", "cache_write": "1.25"}


def spec(name: str = "claude-opus-5-5", **rules: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": f"anthropic/{name}", "provider": "anthropic", "upstream": name, "kind": "chat",
         "pricing": PRICING, "rules": rules}
    )


# The rule sets that matter, after registry.json's entries for these models.
OPUS_55 = spec("claude-opus-5-5", sampling="rejected", thinking="adaptive",
               reasoning_efforts=["minimal", "low", "medium", "high", "xhigh"], forced_tool_choice=False,
               mid_conversation_system=True, assistant_prefill=False, max_output_tokens=128000,
               default_max_tokens=8192)
OPUS_5 = spec("claude-opus-5", sampling="rejected", thinking="adaptive",
              reasoning_efforts=["none", "minimal", "low", "medium", "high", "xhigh"], forced_tool_choice=True,
              mid_conversation_system=True, assistant_prefill=False, max_output_tokens=128000)
SONNET_45 = spec("claude-sonnet-4-5-20250929", sampling="accepted", thinking="budget",
                 reasoning_efforts=["none", "low", "medium", "high"], forced_tool_choice=True,
                 mid_conversation_system=False, assistant_prefill=True, max_output_tokens=64000,
                 default_max_tokens=8192)
PLAIN = spec("claude-plain")  # every Rules default: sampling accepted, no thinking, no mid-conversation system


def req(*messages: dict[str, Any], **params: Any) -> ChatRequest:
    msgs = list(messages) or [{"role": "user", "content": "Hi"}]
    return chat_request({"model": "anthropic/x", "messages": msgs, **params})


def prep(request: ChatRequest, model: ModelSpec = PLAIN, *, api: str = OLD_API, drop: bool = False):
    return anthropic.prepare_chat(request, model, api_version=api, drop_unsupported=drop)


def body(request: ChatRequest, model: ModelSpec = PLAIN, **kw: Any) -> dict[str, Any]:
    return prep(request, model, **kw).calls[0].json


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# -- call shape ---------------------------------------------------------------------------------
def test_auth_and_call_shape() -> None:
    assert anthropic.API_KEY_ENV == "ANTHROPIC_API_KEY"
    assert anthropic.auth_headers("sk-ant-1") == {"x-api-key": "sk-ant-1"}
    prepared = prep(req(stream=False), OPUS_55, api=NEW_API)
    (call,) = prepared.calls
    assert (call.method, call.path) == ("POST", "/v1/messages")
    assert call.headers == {"anthropic-version": NEW_API, "content-type": "application/json"}
    assert call.json == {"model": "claude-opus-5-5", "max_tokens": 8192,
                         "messages": [{"role": "user", "content": "Hi"}]}
    assert prepared.dropped_params == [] and prepared.notes == []


# -- max_tokens ---------------------------------------------------------------------------------
def test_max_tokens_from_request_default_and_fallback() -> None:
    assert body(req(max_tokens=100))["max_tokens"] == 100
    assert body(req(max_tokens=100, max_completion_tokens=200))["max_tokens"] == 200
    assert body(req(), OPUS_55)["max_tokens"] == 8192
    assert body(req(), PLAIN)["max_tokens"] == 4096


def test_max_tokens_above_limit_is_invalid() -> None:
    with pytest.raises(InvalidRequest) as exc:
        prep(req(max_tokens=70000), SONNET_45)
    assert exc.value.param == "max_tokens"
    assert "max_tokens 70000" in exc.value.message and "64000" in exc.value.message
    assert not isinstance(exc.value, UnsupportedParameter)


# -- system messages ----------------------------------------------------------------------------
def test_leading_system_and_developer_become_top_level_system() -> None:
    b = body(req({"role": "system", "content": "Be terse."}, {"role": "developer", "content": "Answer in French."},
                 {"role": "user", "content": "Hi"}))
    assert b["system"] == "Be terse.\n\nAnswer in French."
    assert b["messages"] == [{"role": "user", "content": "Hi"}]


def test_system_with_cache_control_stays_blocks() -> None:
    cc = {"type": "ephemeral", "ttl": "1h"}
    b = body(req({"role": "system", "content": [{"type": "text", "text": "Long doc", "cache_control": cc}]},
                 {"role": "user", "content": "Q"}))
    assert b["system"] == [{"type": "text", "text": "Long doc", "cache_control": cc}]


def test_system_with_non_text_part_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[0\]"):
        prep(req({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
                 {"role": "user", "content": "Q"}))


def test_mid_conversation_system_kept_where_placement_is_legal() -> None:
    prepared = prep(req({"role": "system", "content": "S0"}, {"role": "user", "content": "U1"},
                        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                        {"role": "system", "content": "Now be formal."}, {"role": "developer", "content": "Short."},
                        {"role": "assistant", "content": "A2"}, {"role": "user", "content": "U3"},
                        {"role": "system", "content": "Last word."}), OPUS_55, api=NEW_API)
    b = prepared.calls[0].json
    assert b["system"] == "S0"
    assert b["messages"] == [
        {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"}, {"role": "system", "content": "Now be formal.\n\nShort."},
        {"role": "assistant", "content": "A2"}, {"role": "user", "content": "U3"},
        {"role": "system", "content": "Last word."},
    ]
    assert prepared.notes == []


def test_mid_conversation_system_folded_when_model_lacks_it() -> None:
    prepared = prep(req({"role": "system", "content": "S0"}, {"role": "user", "content": "U1"},
                        {"role": "system", "content": "Be formal."}, {"role": "assistant", "content": "A1"},
                        {"role": "user", "content": "U2"}), SONNET_45)
    b = prepared.calls[0].json
    assert b["system"] == "S0\n\nBe formal."
    assert [m["role"] for m in b["messages"]] == ["user", "assistant", "user"]
    assert len(prepared.notes) == 1 and "folded" in prepared.notes[0]
    assert "anthropic/claude-sonnet-4-5-20250929" in prepared.notes[0]


def test_mid_conversation_system_folded_when_placement_illegal() -> None:
    # after an assistant turn, and before a user turn: both illegal; the user turns around it merge.
    prepared = prep(req({"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
                        {"role": "system", "content": "After assistant."}, {"role": "user", "content": "U2"},
                        {"role": "system", "content": "Before user."}, {"role": "user", "content": "U3"}), OPUS_55)
    b = prepared.calls[0].json
    assert b["system"] == "After assistant.\n\nBefore user."
    assert b["messages"] == [
        {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": [{"type": "text", "text": "U2"}, {"type": "text", "text": "U3"}]},
    ]
    assert len(prepared.notes) == 2 and "must follow a user turn" in prepared.notes[0]


def test_only_system_messages_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="add a user message"):
        prep(req({"role": "system", "content": "S"}))


# -- user content -------------------------------------------------------------------------------
def test_user_parts_text_images_and_cache_control() -> None:
    cc = {"type": "ephemeral"}
    b = body(req({"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
         "cache_control": cc},
        {"type": "text", "text": "Big context", "cache_control": cc},
    ]}))
    assert b["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}, "cache_control": cc},
        {"type": "text", "text": "Big context", "cache_control": cc},
    ]


@pytest.mark.parametrize("url", ["ftp://x/a.png", "data:text/plain;base64,aGk=", "data:image/png,raw"])
def test_bad_image_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        prep(req({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}))
    assert exc.value.param == "messages[0].content[0]"


def test_images_refused_on_model_without_images() -> None:
    with pytest.raises(InvalidRequest, match="does not accept images"):
        prep(req({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}),
             spec("claude-textonly", images=False))


def test_unknown_part_type_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="input_audio"):
        prep(req({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}))


# -- assistant turns, tools, multi-turn ---------------------------------------------------------
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}},
]


def tool_loop() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, cloudy"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "14:05"}]},
        {"role": "user", "content": "Thanks, and tomorrow?"},
    ]


def test_multi_turn_tool_results_merge_into_one_user_turn() -> None:
    b = body(req(*tool_loop(), tools=TOOLS))
    assert b["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, cloudy"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "14:05"}]},
            {"type": "text", "text": "Thanks, and tomorrow?"},
        ]},
    ]
    assert b["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": TOOLS[0]["function"]["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in b


def test_consecutive_same_role_turns_merge() -> None:
    b = body(req({"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                 {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"},
                 {"role": "user", "content": "e"}))
    assert b["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
        {"role": "user", "content": "e"},
    ]


def test_invalid_tool_arguments_name_the_message() -> None:
    msgs = tool_loop()
    msgs[1]["tool_calls"][0]["function"]["arguments"] = '{"city": '
    with pytest.raises(InvalidRequest) as exc:
        prep(req(*msgs, tools=TOOLS))
    where = "messages[1].tool_calls[0].function.arguments"  # the one path style, as at submit and for Gemini
    assert exc.value.param == where and where in exc.value.message


def test_thinking_blocks_are_passed_back_first_and_unchanged() -> None:
    blocks = fixture("thinking_reply.json")["content"][:2]
    msgs = tool_loop()[:4]
    msgs[1]["thinking_blocks"] = blocks
    msgs[1]["reasoning_content"] = "ignored: the signed blocks carry it"
    b = body(req(*msgs, tools=TOOLS), OPUS_55, api=NEW_API)
    assistant = b["messages"][1]["content"]
    assert assistant[:2] == blocks
    assert [blk["type"] for blk in assistant[2:]] == ["text", "tool_use", "tool_use"]


def test_malformed_thinking_blocks_are_invalid() -> None:
    with pytest.raises(InvalidRequest, match="thinking_blocks"):
        prep(req({"role": "user", "content": "q"},
                 {"role": "assistant", "content": "a", "thinking_blocks": [{"type": "text", "text": "x"}]},
                 {"role": "user", "content": "q2"}))


def test_prefill_refused_on_model_without_it() -> None:
    with pytest.raises(InvalidRequest) as exc:
        prep(req({"role": "user", "content": "Write JSON"}, {"role": "assistant", "content": "{"}), OPUS_55)
    assert "prefill" in exc.value.message and "anthropic/claude-opus-5-5" in exc.value.message
    assert not isinstance(exc.value, UnsupportedParameter)


def test_prefill_allowed_where_the_model_takes_it() -> None:
    b = body(req({"role": "user", "content": "Write JSON"}, {"role": "assistant", "content": "{"}), SONNET_45)
    assert b["messages"][-1] == {"role": "assistant", "content": "{"}


# -- simple parameters --------------------------------------------------------------------------
def test_stop_user_and_no_stream() -> None:
    b = body(req(stop="END", user="u-42", stream=False))
    assert b["stop_sequences"] == ["END"] and b["metadata"] == {"user_id": "u-42"} and "stream" not in b
    assert body(req(stop=["a", "b"]))["stop_sequences"] == ["a", "b"]


@pytest.mark.parametrize("params, name", [
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"seed": 7}, "seed"),
    ({"n": 2}, "n"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"service_tier_x": "fast"}, "service_tier_x"),
])
def test_openai_only_params_refused_or_dropped(params: dict[str, Any], name: str) -> None:
    with pytest.raises(UnsupportedParameter) as exc:
        prep(req(**params), OPUS_55)
    assert exc.value.param == name
    assert name in exc.value.message and "anthropic/claude-opus-5-5" in exc.value.message
    assert "--drop-unsupported-params" in exc.value.message
    prepared = prep(req(**params), OPUS_55, drop=True)
    assert prepared.dropped_params == [name]
    assert name not in prepared.calls[0].json


def test_openai_defaults_are_not_refused() -> None:
    prepared = prep(req(n=1, presence_penalty=0, frequency_penalty=0.0, logprobs=False, logit_bias={}))
    assert prepared.dropped_params == []


# -- sampling -----------------------------------------------------------------------------------
def test_sampling_rejected_under_new_api_version_even_if_model_accepts() -> None:
    with pytest.raises(UnsupportedParameter) as exc:
        prep(req(temperature=1.0), SONNET_45, api=NEW_API)
    assert exc.value.message == (
        "temperature is not supported by anthropic/claude-sonnet-4-5-20250929 (anthropic-version 2026-10-21 "
        "rejects sampling parameters); remove it or submit with --drop-unsupported-params"
    )


def test_sampling_rejected_by_model_and_dropped() -> None:
    with pytest.raises(UnsupportedParameter, match="top_p"):
        prep(req(top_p=0.9), OPUS_55, api=OLD_API)
    prepared = prep(req(temperature=0.2, top_p=0.9, top_k=40), OPUS_55, api=NEW_API, drop=True)
    assert prepared.dropped_params == ["temperature", "top_p", "top_k"]
    assert not {"temperature", "top_p", "top_k"} & set(prepared.calls[0].json)


def test_sampling_accepted_passes_and_range_checked() -> None:
    b = body(req(temperature=0.3, top_k=40), SONNET_45)
    assert (b["temperature"], b["top_k"]) == (0.3, 40)
    with pytest.raises(InvalidRequest) as exc:
        prep(req(temperature=1.5), SONNET_45, drop=True)  # not droppable: the value is wrong, not the parameter
    assert exc.value.param == "temperature" and not isinstance(exc.value, UnsupportedParameter)


def test_temperature_and_top_p_together_drop_top_p() -> None:
    with pytest.raises(UnsupportedParameter, match="cannot both"):
        prep(req(temperature=0.3, top_p=0.9), SONNET_45)
    prepared = prep(req(temperature=0.3, top_p=0.9), SONNET_45, drop=True)
    assert prepared.dropped_params == ["top_p"] and prepared.calls[0].json["temperature"] == 0.3


def test_sampling_with_thinking_on() -> None:
    prepared = prep(req(temperature=0.3, top_p=0.97, reasoning_effort="low"), SONNET_45, drop=True)
    b = prepared.calls[0].json
    assert prepared.dropped_params == ["temperature"] and b["top_p"] == 0.97
    with pytest.raises(UnsupportedParameter, match="0.95-1"):
        prep(req(top_p=0.5, reasoning_effort="low"), SONNET_45)


def test_sampling_ignored_is_dropped_with_a_note() -> None:
    prepared = prep(req(temperature=0.2), spec("claude-ign", sampling="ignored"))
    assert prepared.dropped_params == ["temperature"] and "ignores" in prepared.notes[0]
    assert "temperature" not in prepared.calls[0].json


# -- reasoning ----------------------------------------------------------------------------------
@pytest.mark.parametrize("effort, thinking, out_effort", [
    ("minimal", {"type": "adaptive"}, "low"),
    ("low", {"type": "adaptive"}, "low"),
    ("xhigh", {"type": "adaptive"}, "xhigh"),
    ("none", {"type": "disabled"}, None),
])
def test_reasoning_effort_on_adaptive_model(effort: str, thinking: dict[str, Any], out_effort: str | None) -> None:
    b = body(req(reasoning_effort=effort), OPUS_5, api=NEW_API)
    assert b["thinking"] == thinking
    assert b.get("output_config", {}).get("effort") == out_effort
    assert b["max_tokens"] == 4096


@pytest.mark.parametrize("effort, budget, max_tokens", [("low", 2048, 10240), ("medium", 8192, 16384),
                                                         ("high", 24576, 32768)])  # budget + default 8192
def test_reasoning_effort_on_budget_model(effort: str, budget: int, max_tokens: int) -> None:
    prepared = prep(req(reasoning_effort=effort), SONNET_45)
    b = prepared.calls[0].json
    assert b["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert b["max_tokens"] == max_tokens and "output_config" not in b
    assert "raised" in prepared.notes[0]


def test_budget_thinking_max_tokens_rules() -> None:
    # a max_tokens the caller gave caps thinking + answer: the budget shrinks to fit (at most half of it)
    low = body(req(reasoning_effort="low", max_tokens=5000), SONNET_45)
    assert (low["max_tokens"], low["thinking"]["budget_tokens"]) == (5000, 2048)
    high = body(req(reasoning_effort="high", max_tokens=20000), SONNET_45)
    assert (high["max_tokens"], high["thinking"]["budget_tokens"]) == (20000, 10000)
    floor = body(req(reasoning_effort="high", max_tokens=1500), SONNET_45)
    assert (floor["max_tokens"], floor["thinking"]["budget_tokens"]) == (1500, 1024)
    with pytest.raises(InvalidRequest, match="raise max_tokens above 1024"):
        prep(req(reasoning_effort="low", max_tokens=1024), SONNET_45)
    # without one, the default max_tokens is the visible part and the budget comes on top, capped
    capped = spec("claude-small", thinking="budget", reasoning_efforts=["high"], max_output_tokens=30000)
    assert body(req(reasoning_effort="high"), capped)["max_tokens"] == 28672
    tiny = spec("claude-tiny", thinking="budget", reasoning_efforts=["high"], max_output_tokens=16000)
    with pytest.raises(InvalidRequest, match="thinking budget"):
        prep(req(reasoning_effort="high"), tiny)
    none = prep(req(reasoning_effort="none"), SONNET_45)
    assert "thinking" not in none.calls[0].json and none.calls[0].json["max_tokens"] == 8192 and none.notes == []


def test_reasoning_effort_not_allowed_names_allowed_values() -> None:
    with pytest.raises(UnsupportedParameter) as exc:
        prep(req(reasoning_effort="none"), OPUS_55, api=NEW_API)
    assert exc.value.param == "reasoning_effort"
    assert "minimal, low, medium, high, xhigh" in exc.value.message
    prepared = prep(req(reasoning_effort="xhigh"), SONNET_45, drop=True)
    assert prepared.dropped_params == ["reasoning_effort"] and "thinking" not in prepared.calls[0].json


def test_reasoning_effort_on_model_without_thinking() -> None:
    with pytest.raises(UnsupportedParameter, match="no thinking control"):
        prep(req(reasoning_effort="low"), PLAIN)


# -- tool_choice --------------------------------------------------------------------------------
@pytest.mark.parametrize("choice, expected", [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"}),
])
def test_tool_choice_mapping(choice: Any, expected: dict[str, Any]) -> None:
    assert body(req(tools=TOOLS, tool_choice=choice), SONNET_45)["tool_choice"] == expected


def test_parallel_tool_calls_false() -> None:
    assert body(req(tools=TOOLS, parallel_tool_calls=False))["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    assert body(req(tools=TOOLS, tool_choice="required", parallel_tool_calls=False))["tool_choice"] == {
        "type": "any", "disable_parallel_tool_use": True}
    assert body(req(tools=TOOLS, tool_choice="none", parallel_tool_calls=False))["tool_choice"] == {"type": "none"}
    assert "tool_choice" not in body(req(tools=TOOLS, parallel_tool_calls=True))


def test_forced_tool_choice_refused_on_model_without_it() -> None:
    with pytest.raises(UnsupportedParameter) as exc:
        prep(req(tools=TOOLS, tool_choice="required"), OPUS_55, api=NEW_API)
    assert exc.value.param == "tool_choice" and "anthropic/claude-opus-5-5" in exc.value.message
    prepared = prep(req(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
                        parallel_tool_calls=False), OPUS_55, api=NEW_API, drop=True)
    assert prepared.dropped_params == ["tool_choice"]
    assert prepared.calls[0].json["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_forced_tool_choice_refused_with_thinking_on() -> None:
    with pytest.raises(UnsupportedParameter, match="thinking"):
        prep(req(tools=TOOLS, tool_choice="required", reasoning_effort="low"), SONNET_45)
    always_thinks = spec("claude-fable-5", thinking="adaptive", reasoning_efforts=["low", "high"])
    with pytest.raises(UnsupportedParameter, match="thinking"):
        prep(req(tools=TOOLS, tool_choice="required"), always_thinks)
    ok = spec("claude-ok", thinking="budget", reasoning_efforts=["low"], forced_tool_choice_with_thinking=True)
    assert body(req(tools=TOOLS, tool_choice="required", reasoning_effort="low"), ok)["tool_choice"] == {"type": "any"}


def test_forced_tool_choice_turns_default_thinking_off() -> None:
    prepared = prep(req(tools=TOOLS, tool_choice="required"), OPUS_5, api=NEW_API)
    b = prepared.calls[0].json
    assert b["tool_choice"] == {"type": "any"} and b["thinking"] == {"type": "disabled"}
    assert "thinking disabled" in prepared.notes[0]


@pytest.mark.parametrize(("params", "where"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice.function"),  # the missing field itself
])
def test_bad_tool_choice_is_invalid(params: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        prep(req(**params))
    assert exc.value.param == where and not isinstance(exc.value, UnsupportedParameter)


# -- response_format ----------------------------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}


def test_response_format_mapping() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}}
    b = body(req(response_format=rf, reasoning_effort="high"), OPUS_5, api=NEW_API)
    assert b["output_config"] == {"effort": "high", "format": {"type": "json_schema", "schema": SCHEMA}}
    assert "output_config" not in body(req(response_format={"type": "json_object"}))  # see the json_object test
    assert "output_config" not in body(req(response_format={"type": "text"}))


def test_response_format_refused_without_json_schema() -> None:
    model = spec("claude-old", json_schema=False)
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    with pytest.raises(UnsupportedParameter, match="response_format"):
        prep(req(response_format=rf), model)
    prepared = prep(req(response_format=rf), model, drop=True)
    assert prepared.dropped_params == ["response_format"] and "output_config" not in prepared.calls[0].json


@pytest.mark.parametrize(("rf", "where"), [
    ({"type": "json_schema", "json_schema": {"name": "a"}}, "response_format.json_schema.schema"),  # the missing field
    ({"type": "yaml"}, "response_format"),
])
def test_bad_response_format_is_invalid(rf: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        prep(req(response_format=rf))
    assert exc.value.param == where


# -- parse_chat ---------------------------------------------------------------------------------
def test_parse_text_reply() -> None:
    parsed = anthropic.parse_chat(fixture("text_reply.json"), SONNET_45, request_id="req_1")
    b = parsed.body
    assert b["id"] == "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL" and b["object"] == "chat.completion"  # OpenAI's shape, traceable
    assert isinstance(b["created"], int) and b["model"] == "anthropic/claude-sonnet-4-5-20250929"
    assert b["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Hello! How can I help?", "refusal": None}}]
    assert b["usage"] == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21,
                          "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}}
    assert parsed.upstream_model == "claude-sonnet-4-5-20250929" and parsed.request_id == "req_1"


def test_parse_tool_use_reply() -> None:
    parsed = anthropic.parse_chat(fixture("tool_use_reply.json"), OPUS_55)
    choice = parsed.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the weather."
    assert choice["message"]["tool_calls"] == [
        {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"location": "San Francisco, CA", "unit": "celsius"}'}},
        {"id": "toolu_01B77", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert parsed.usage.input_tokens == 472 and parsed.usage.cache_read_tokens == 0  # nulls read as 0


def test_parse_thinking_reply() -> None:
    data = fixture("thinking_reply.json")
    parsed = anthropic.parse_chat(data, OPUS_55)
    message = parsed.body["choices"][0]["message"]
    assert message["content"] == "27 × 453 = 12,231."
    assert message["reasoning_content"] == "The user asks for 27 * 453. 27*453 = 12231."
    assert message["thinking_blocks"] == data["content"][:2]
    assert (parsed.usage.output_tokens, parsed.usage.reasoning_tokens) == (412, 380)
    assert parsed.body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 380}


def test_parsed_thinking_blocks_round_trip_into_the_next_request() -> None:
    message = anthropic.parse_chat(fixture("thinking_reply.json"), OPUS_55).body["choices"][0]["message"]
    b = body(req({"role": "user", "content": "27*453?"}, message, {"role": "user", "content": "And *2?"}),
             OPUS_55, api=NEW_API)
    assert b["messages"][1]["content"] == fixture("thinking_reply.json")["content"]


def test_usage_normalisation_with_cache_breakdown() -> None:
    usage = anthropic.parse_chat(fixture("cache_reply.json"), SONNET_45).usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_5m_tokens,
            usage.cache_write_1h_tokens, usage.output_tokens, usage.reasoning_tokens) == (21, 100000, 56, 13999, 393, 0)
    assert usage.prompt_tokens == 21 + 100000 + 14055
    assert usage.openai_chat_usage()["prompt_tokens_details"] == {"cached_tokens": 100000, "cache_write_tokens": 14055}


def test_usage_without_breakdown_is_all_5m() -> None:
    data = fixture("cache_reply.json")
    del data["usage"]["cache_creation"]
    usage = anthropic.parse_chat(data, SONNET_45).usage
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (14055, 0)


def test_parse_refusal_and_max_tokens() -> None:
    choice = anthropic.parse_chat(fixture("refusal_reply.json"), OPUS_55).body["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] is None
    assert choice["message"]["refusal"] == "This request was declined by a safety classifier."
    choice = anthropic.parse_chat(fixture("max_tokens_reply.json"), OPUS_55).body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"].startswith("Once upon")


@pytest.mark.parametrize("stop_reason, finish", [("stop_sequence", "stop"), ("pause_turn", "stop"),
                                                 ("model_context_window_exceeded", "length")])
def test_other_stop_reasons(stop_reason: str, finish: str) -> None:
    data = fixture("text_reply.json") | {"stop_reason": stop_reason}
    assert anthropic.parse_chat(data, OPUS_55).body["choices"][0]["finish_reason"] == finish


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = fixture("tool_use_reply.json")
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize("path, value, named", [
    (("content",), KeyError, "content"),
    (("content",), "hello", "content"),
    (("stop_reason",), None, "stop_reason"),
    (("usage",), KeyError, "usage"),
    (("usage", "input_tokens"), "472", "usage.input_tokens"),
    (("usage", "output_tokens"), KeyError, "usage.output_tokens"),
    (("usage", "output_tokens"), True, "usage.output_tokens"),
    (("usage", "cache_read_input_tokens"), 1.5, "usage.cache_read_input_tokens"),
    (("id",), 7, "id"),
])
def test_malformed_body_is_protocol_error(path: tuple[str, ...], value: Any, named: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        anthropic.parse_chat(_broken(path, value), OPUS_55)
    assert f"'{named}'" in exc.value.message and exc.value.retryable


def test_malformed_blocks_are_protocol_errors() -> None:
    data = fixture("tool_use_reply.json")
    data["content"][1]["input"] = "not an object"
    with pytest.raises(ProtocolError, match=r"content\[1\]\.input"):
        anthropic.parse_chat(data, OPUS_55)
    data["content"] = ["text"]
    with pytest.raises(ProtocolError, match=r"content\[0\]"):
        anthropic.parse_chat(data, OPUS_55)
    with pytest.raises(ProtocolError):
        anthropic.parse_chat([], OPUS_55)  # type: ignore[arg-type]


# -- parse_error --------------------------------------------------------------------------------
def test_error_429_with_retry_after() -> None:
    err = anthropic.parse_error(429, {"Retry-After": "17", "request-id": "req_hdr"},
                                fixture_bytes("error_429_rate_limit.json"))
    assert isinstance(err, UpstreamError)
    assert (err.code, err.type, err.status_code, err.retryable, err.retry_after) == (
        "rate_limit_error", "rate_limit_error", 429, True, 17.0)
    assert err.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"  # the body's id wins over the header's
    assert err.message.startswith("anthropic answered 429: This request would exceed the rate limit")


def test_error_retry_after_ms_wins() -> None:
    err = anthropic.parse_error(429, {"retry-after-ms": "1500", "retry-after": "9"},
                                fixture_bytes("error_429_rate_limit.json"))
    assert err.retry_after == 1.5


def test_error_529_overloaded() -> None:
    err = anthropic.parse_error(529, {}, fixture_bytes("error_529_overloaded.json"))
    assert (err.code, err.type, err.retryable, err.retry_after) == ("overloaded_error", "api_error", True, None)


def test_error_400_invalid_request() -> None:
    err = anthropic.parse_error(400, {"request-id": "req_x"}, fixture_bytes("error_400_invalid.json"))
    assert (err.code, err.type, err.retryable) == ("invalid_request_error", "invalid_request_error", False)
    assert "Extra inputs are not permitted" in err.message


def test_error_spend_limit_429_is_not_retryable() -> None:
    err = anthropic.parse_error(429, {"x-should-retry": "true"}, fixture_bytes("error_429_spend_limit.json"))
    assert (err.code, err.retryable, err.retry_after) == ("rate_limit_error", False, None)


def test_x_should_retry_overrides_status() -> None:
    body400 = fixture_bytes("error_400_invalid.json")
    assert anthropic.parse_error(400, {"X-Should-Retry": "true"}, body400).retryable is True
    assert anthropic.parse_error(529, {"x-should-retry": "false"},
                                 fixture_bytes("error_529_overloaded.json")).retryable is False


def test_non_json_error_body() -> None:
    html = b"<html><head><title>413 Request Entity Too Large</title></head><body>" + b"x" * 1000 + b"</body></html>"
    err = anthropic.parse_error(413, {"request-id": "req_cf"}, html)
    assert isinstance(err, UpstreamError) and err.code == "http_413" and not err.retryable
    assert "413 Request Entity Too Large" in err.message and len(err.message) < 300
    assert err.request_id == "req_cf"
    assert "(empty body)" in anthropic.parse_error(502, {}, b"").message
    assert anthropic.parse_error(502, {}, b"").retryable


def test_a_429_without_retry_after_waits_for_the_exhausted_limit_to_reset() -> None:
    import datetime as dt

    soon = (clock.utcnow() + dt.timedelta(seconds=20)).isoformat().replace("+00:00", "Z")
    later = (clock.utcnow() + dt.timedelta(seconds=50)).isoformat().replace("+00:00", "Z")
    headers = {"anthropic-ratelimit-input-tokens-remaining": "0", "anthropic-ratelimit-input-tokens-reset": soon,
               "anthropic-ratelimit-requests-remaining": "120", "anthropic-ratelimit-requests-reset": later}
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    err = anthropic.parse_error(429, headers, body)
    assert err.retryable and 18 < err.retry_after <= 20  # the input-token limit, not the untouched request limit


# -- what the Messages API refuses (issue 8): empty text, images, structured output, caching, stops ---------
PNG = "iVBORw0KGgo="


def image_part(media: str, data: str = PNG, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}, **extra}


def text_part(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": text, **extra}


def test_empty_system_text_is_skipped_not_joined() -> None:
    parts = [text_part(""), text_part("Valid"), text_part("")]
    assert body(req({"role": "system", "content": parts}, {"role": "user", "content": "Q"}))["system"] == "Valid"
    assert "system" not in body(req({"role": "system", "content": ""}, {"role": "user", "content": "Q"}))


def test_empty_mid_conversation_system_turn_is_not_sent() -> None:
    prepared = prep(req({"role": "user", "content": "U1"}, {"role": "system", "content": ""}), OPUS_55, api=NEW_API)
    assert prepared.calls[0].json["messages"] == [{"role": "user", "content": "U1"}]
    system = {"role": "system", "content": [text_part(""), text_part("Be brief.")]}
    b = body(req({"role": "user", "content": "U1"}, system,
                 {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}), OPUS_55, api=NEW_API)
    assert b["messages"][1] == {"role": "system", "content": "Be brief."}


def test_empty_text_part_beside_other_parts_is_skipped() -> None:
    b = body(req({"role": "user", "content": [text_part(""), image_part("image/png"), text_part("What is it?")]}))
    assert b["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is it?"}]


def test_empty_text_inside_a_tool_result_is_skipped() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [{"role": "user", "content": "Go"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    parts = [text_part(""), text_part("42")]
    listed = body(req(*history, {"role": "tool", "tool_call_id": "call_1", "content": parts}))
    assert listed["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "42"}]}]
    empty = body(req(*history, {"role": "tool", "tool_call_id": "call_1", "content": ""}))
    assert empty["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1"}]


def test_a_breakpoint_on_empty_text_is_dropped_with_a_note() -> None:
    parts = [text_part("Q"), text_part("", cache_control={"type": "ephemeral"})]
    prepared = prep(req({"role": "user", "content": parts}))
    assert prepared.calls[0].json["messages"] == [{"role": "user", "content": "Q"}]
    assert prepared.notes == ["messages[0].content[1]: empty text with cache_control not sent (Anthropic refuses "
                              "empty text blocks), so that cache breakpoint is gone"]


def test_json_object_is_not_sent_and_says_so() -> None:
    prepared = prep(req(response_format={"type": "json_object"}), OPUS_5, api=NEW_API)
    assert "output_config" not in prepared.calls[0].json
    assert prepared.dropped_params == ["response_format"]
    assert len(prepared.notes) == 1 and "json_object" in prepared.notes[0] and "json_schema" in prepared.notes[0]


def test_a_non_strict_schema_gets_additional_properties_false_on_every_object() -> None:
    item = {"type": "object", "properties": {"id": {"type": "integer"}}}
    schema = {"type": "object", "properties": {
        "user": {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": True},
        "items": {"type": "array", "items": item},
        "either": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]}},
        "$defs": {"point": {"type": ["object", "null"], "properties": {"x": {"type": "number"}}}}}
    original = json.loads(json.dumps(schema))
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    prepared = prep(req(response_format=rf), OPUS_5, api=NEW_API)
    sent = prepared.calls[0].json["output_config"]["format"]["schema"]
    assert sent["additionalProperties"] is False
    assert sent["properties"]["user"]["additionalProperties"] is False
    assert sent["properties"]["items"]["items"]["additionalProperties"] is False
    assert sent["$defs"]["point"]["additionalProperties"] is False
    assert sent["properties"]["either"] == schema["properties"]["either"]  # $ref and null: not objects
    assert schema == original  # the caller's schema is not changed in place
    assert prepared.notes == ["response_format: additionalProperties: false set on 4 object schemas (schema, "
                              "schema.properties.user, schema.properties.items.items, schema.$defs.point): Anthropic's "
                              "structured output requires it; answers still fit your schema"]
    strict = prep(req(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}))
    assert strict.calls[0].json["output_config"]["format"]["schema"] == SCHEMA and strict.notes == []


def test_a_map_schema_cannot_be_closed_and_is_refused() -> None:
    scores = {"type": "object", "additionalProperties": {"type": "number"}}
    schema = {"type": "object", "properties": {"scores": scores}}
    with pytest.raises(InvalidRequest) as exc:
        prep(req(response_format={"type": "json_schema", "json_schema": {"name": "m", "schema": schema}}))
    assert exc.value.param == "response_format"
    assert "schema.properties.scores" in exc.value.message and "additionalProperties" in exc.value.message


def test_image_jpg_is_sent_as_jpeg_with_a_note() -> None:
    prepared = prep(req({"role": "user", "content": [image_part("image/jpg"), text_part("?")]}))
    assert prepared.calls[0].json["messages"][0]["content"][0]["source"]["media_type"] == "image/jpeg"
    assert prepared.notes == ["messages[0].content[0]: media type image/jpg sent as image/jpeg"]


@pytest.mark.parametrize("media", ["image/heic", "image/svg+xml", "image/bmp", "image/tiff"])
def test_image_media_types_anthropic_refuses_fail_at_submit(media: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        prep(req({"role": "user", "content": [image_part(media)]}))
    assert exc.value.param == "messages[0].content[0]"
    assert media in exc.value.message and "image/jpeg, image/png, image/gif, image/webp" in exc.value.message


def test_image_over_five_megabytes_of_base64_is_refused() -> None:
    limit = anthropic.MAX_IMAGE_BASE64
    assert limit == 5 * 1024 * 1024
    prep(req({"role": "user", "content": [image_part("image/png", "A" * limit)]}))
    with pytest.raises(InvalidRequest, match="5 MB") as exc:
        prep(req({"role": "user", "content": [image_part("image/png", "A" * (limit + 4))]}))
    assert exc.value.param == "messages[0].content[0]"


@pytest.mark.parametrize("cc", [
    {"type": "persistent"}, {"type": "ephemeral", "ttl": "2h"}, {"type": "ephemeral", "ttl": 300},
    {"type": "ephemeral", "scope": "global"}, "ephemeral", {},
])
def test_invalid_cache_control_is_refused_where_it_stands(cc: Any) -> None:
    with pytest.raises(InvalidRequest) as exc:
        prep(req({"role": "user", "content": [text_part("Q", cache_control=cc)]}))
    assert exc.value.param == "messages[0].content[0].cache_control"
    assert "ephemeral" in exc.value.message and "5m" in exc.value.message
    tool = {"type": "function", "function": {"name": "f"}, "cache_control": cc}
    with pytest.raises(InvalidRequest) as exc:
        prep(req(tools=[tool]))
    assert exc.value.param == "tools[0].cache_control"


def test_valid_cache_control_passes_unchanged() -> None:
    for cc in ({"type": "ephemeral"}, {"type": "ephemeral", "ttl": "5m"}, {"type": "ephemeral", "ttl": "1h"}):
        b = body(req({"role": "user", "content": [text_part("Q", cache_control=cc)]}))
        assert b["messages"][0]["content"][0]["cache_control"] == cc


def test_more_than_four_breakpoints_are_refused() -> None:
    cc = {"type": "ephemeral"}
    four = [text_part(f"part {k}", cache_control=cc) for k in range(4)]
    prep(req({"role": "user", "content": four}))
    tool = {"type": "function", "function": {"name": "f"}, "cache_control": cc}
    with pytest.raises(InvalidRequest, match="at most 4") as exc:
        prep(req({"role": "user", "content": four}, tools=[tool]))
    assert exc.value.param == "cache_control"


def test_a_1h_breakpoint_after_a_5m_one_is_refused() -> None:
    short, long = {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}
    tool = {"type": "function", "function": {"name": "f"}, "cache_control": long}
    system = {"role": "system", "content": [text_part("S", cache_control=short)]}
    prep(req(system, {"role": "user", "content": "Q"}, tools=[tool]))  # tools come first: 1h then 5m is fine
    late = {"role": "user", "content": [text_part("Q", cache_control=long)]}
    with pytest.raises(InvalidRequest, match="1h") as exc:
        prep(req(system, late))
    assert exc.value.param == "cache_control"


@pytest.mark.parametrize("stop", ["\n", ["END", " \t"], [""]])
def test_blank_stop_sequences_are_refused_or_dropped(stop: Any) -> None:
    with pytest.raises(UnsupportedParameter, match="whitespace") as exc:
        prep(req(stop=stop))
    assert exc.value.param == "stop"
    prepared = prep(req(stop=stop), drop=True)
    kept = [s for s in ([stop] if isinstance(stop, str) else stop) if s.strip()]
    assert prepared.calls[0].json.get("stop_sequences", []) == kept
    assert prepared.dropped_params == ["stop"]


def test_created_comes_from_the_clock() -> None:
    with clock.pinned("2026-12-02"):
        parsed = anthropic.parse_chat(fixture("text_reply.json"), SONNET_45)
    assert parsed.body["created"] == 1796212800


def test_tool_call_ids_anthropic_refuses_are_rewritten_in_pairs() -> None:
    msgs = tool_loop()
    msgs[1]["tool_calls"][0]["id"] = "functions.get_weather:0"  # ids from other providers' histories
    msgs[2]["tool_call_id"] = "functions.get_weather:0"
    prepared = prep(req(*msgs, tools=TOOLS))
    b = prepared.calls[0].json
    sent = b["messages"][1]["content"][1]["id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", sent) and sent.startswith("functions_get_weather_0_")
    assert b["messages"][2]["content"][0]["tool_use_id"] == sent
    assert b["messages"][1]["content"][2]["id"] == "toolu_2"  # valid ids are left alone
    assert prepared.notes == [f"tool call id 'functions.get_weather:0' sent as '{sent}' (Anthropic takes only "
                              "letters, digits, '_' and '-' in ids)"]
    other = anthropic.prepare_chat(req(*msgs[:1]), PLAIN, api_version=OLD_API, drop_unsupported=False)
    assert other.notes == []


def test_tool_parameters_without_type_get_object_and_other_types_are_refused() -> None:
    loose = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"q": {"type": "string"}}}}}
    prepared = prep(req(tools=[loose]))
    assert prepared.calls[0].json["tools"][0]["input_schema"] == {"type": "object",
                                                                  "properties": {"q": {"type": "string"}}}
    assert prepared.notes == ["tools[0]: parameters sent with type 'object' (Anthropic requires it)"]
    array = {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
    with pytest.raises(InvalidRequest, match="object") as exc:
        prep(req(tools=[array]))
    assert exc.value.param == "tools[0].function.parameters"
