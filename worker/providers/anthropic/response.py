"""Anthropic answers back: a Messages answer -> OpenAI chat.completion + normalised Usage, an error -> the tree.

Unexpected shapes raise ProtocolError naming the field, never KeyError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from ... import clock
from ...errors import ProtocolError, RequestFailed, upstream_error
from ...registry import ModelSpec
from ...retry import ratelimit_reset_after, retry_after_from_headers
from ...schemas import Usage
from ..base import Parsed, completion_id, snippet

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_EXPECTED: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


def parse_chat(data: dict[str, Any], spec: ModelSpec, *, request_id: str | None = None) -> Parsed:
    """A Messages answer -> OpenAI chat.completion plus normalised usage; bad shapes are ProtocolError."""
    if not isinstance(data, dict):
        raise ProtocolError("anthropic answer is not a JSON object")
    msg_id = _field(data, "id", str)
    content = _field(data, "content", list)
    stop_reason = _field(data, "stop_reason", str)
    usage = _usage(_field(data, "usage", dict))
    message = _message(content, stop_reason, data.get("stop_details"))
    finish = FINISH_REASONS.get(stop_reason, "stop")  # unknown future stop reasons read as a normal stop
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    body = {"id": completion_id(msg_id), "object": "chat.completion", "created": int(clock.now()), "model": spec.id,
            "choices": [choice], "usage": usage.openai_chat_usage()}
    model = data.get("model")
    tier = data["usage"].get("service_tier")  # standard | priority | batch: the tier billed
    return Parsed(body=body, usage=usage, upstream_model=model if isinstance(model, str) else None,
                  request_id=request_id, service_tier=tier.lower() if isinstance(tier, str) and tier else None)


def _message(content: list[Any], stop_reason: str, stop_details: Any) -> dict[str, Any]:
    """Text joined; thinking both as text and as the raw signed blocks, which a caller must send back unchanged."""
    texts, thinking, raw_thinking, tool_calls = [], [], [], []
    for k, block in enumerate(content):
        where = f"content[{k}]"
        kind = _field(block, "type", str, where) if isinstance(block, dict) else _bad(where, "an object")
        if kind == "text":
            texts.append(_field(block, "text", str, where))
        elif kind == "thinking":
            thinking.append(_field(block, "thinking", str, where))
            raw_thinking.append(block)
        elif kind == "redacted_thinking":
            raw_thinking.append(block)
        elif kind == "tool_use":
            call_input = _field(block, "input", dict, where)
            tool_calls.append({"id": _field(block, "id", str, where), "type": "function",
                               "function": {"name": _field(block, "name", str, where),
                                            "arguments": json.dumps(call_input)}})
    text = "".join(texts) or None
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if stop_reason == "refusal":
        explanation = stop_details.get("explanation") if isinstance(stop_details, dict) else None
        message["content"] = None
        message["refusal"] = text or explanation or "The model declined to answer (stop_reason refusal)."
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if raw_thinking:
        message["thinking_blocks"] = raw_thinking
    return message


def _usage(u: dict[str, Any]) -> Usage:
    """Anthropic reports cache tokens beside input_tokens (not inside it); each bucket is filled once."""
    input_tokens = _required(u, "input_tokens")
    output_tokens = _required(u, "output_tokens")
    breakdown = u.get("cache_creation")
    if breakdown is not None and not isinstance(breakdown, dict):
        _bad("usage.cache_creation", "an object")
    breakdown = breakdown or {}
    write_1h = _count(breakdown, "ephemeral_1h_input_tokens", "usage.cache_creation.") or 0
    written = _count(u, "cache_creation_input_tokens")
    if written is None:
        written = (_count(breakdown, "ephemeral_5m_input_tokens", "usage.cache_creation.") or 0) + write_1h
    if written < write_1h:
        raise ProtocolError("anthropic answer: usage.cache_creation_input_tokens is below its 1h part")
    details = u.get("output_tokens_details")
    thinking = _count(details, "thinking_tokens", "usage.output_tokens_details.") if isinstance(details, dict) else None
    return Usage(input_tokens=input_tokens, cache_read_tokens=_count(u, "cache_read_input_tokens") or 0,
                 cache_write_5m_tokens=written - write_1h, cache_write_1h_tokens=write_1h,
                 output_tokens=output_tokens, reasoning_tokens=min(thinking or 0, output_tokens))


def _count(obj: dict[str, Any], name: str, prefix: str = "usage.") -> int | None:
    """An optional token count: None when absent, else it must be one."""
    return None if obj.get(name) is None else _required(obj, name, prefix)


def _required(obj: dict[str, Any], name: str, prefix: str = "usage.") -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _bad(prefix + name, "a non-negative integer")
    return value


def _field(obj: dict[str, Any], name: str, typ: type, where: str = "") -> Any:
    value = obj.get(name)
    if not isinstance(value, typ):
        _bad(f"{where}.{name}" if where else name, _EXPECTED[typ])
    return value


def _bad(where: str, expected: str) -> NoReturn:
    raise ProtocolError(f"anthropic answer: '{where}' is missing or not {expected}")


# -- errors -------------------------------------------------------------------------------------
def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> RequestFailed:
    """An error answer -> UpstreamError. A spend-cap 429 is never retried; else x-should-retry beats the status."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):  # a proxy's HTML page, an empty body...
        payload, error = {}, {"message": f"unreadable error body: {snippet(body) or '(empty body)'}"}
    raw_details = error.get("details")
    details = raw_details if isinstance(raw_details, dict) else {}
    should_retry = lowered.get("x-should-retry", "").strip().lower()
    retryable = should_retry == "true" if should_retry in ("true", "false") else None
    if details.get("error_code") == "enforced_spend_limit_reached":
        retryable = False
    retry_after = retry_after_from_headers(headers)
    if retry_after is None and status == 429:
        retry_after = ratelimit_reset_after(headers)  # no retry-after: wait for the exhausted limit to reset
    return upstream_error("anthropic", status, _str(error, "type") or f"http_{status}",
                          _str(error, "message") or "(no message)", retry_after=retry_after,
                          request_id=_str(payload, "request_id") or lowered.get("request-id"), retryable=retryable)


def _str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None

