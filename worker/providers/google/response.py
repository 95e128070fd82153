"""Gemini answers back: generateContent -> OpenAI chat.completion + normalised Usage; errors -> the tree.

Usage is normalised here, once: Gemini counts cached tokens *inside* promptTokenCount and thinking tokens
*beside* candidatesTokenCount. Unexpected shapes raise ProtocolError naming the field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from ... import clock
from ...errors import ProtocolError, RequestFailed, upstream_error
from ...registry import ModelSpec
from ...retry import parse_duration, retry_after_from_headers
from ...schemas import Usage
from ..base import Parsed, completion_id, snippet

# Every candidate finishReason of google-genai's FinishReason (types.py, 2026-08) plus CONTINUATION and ESCALATION.
# "length" when the answer was cut short, "content_filter" when a filter stopped it; the rest (and any reason
# added later) end normally as "stop". OTHER is "all other reasons", not a filter; the tool-call failures leave
# no tool call to report.
FINISH_REASONS = {
    "STOP": "stop", "FINISH_REASON_UNSPECIFIED": "stop", "OTHER": "stop", "IMAGE_OTHER": "stop", "NO_IMAGE": "stop",
    "MALFORMED_FUNCTION_CALL": "stop", "UNEXPECTED_TOOL_CALL": "stop", "TOO_MANY_TOOL_CALLS": "stop",
    "MAX_TOKENS": "length", "CONTINUATION": "length",
    **dict.fromkeys(("SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                     "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "ESCALATION"), "content_filter"),
}


def parse_chat(data: dict[str, Any], spec: ModelSpec, *, request_id: str | None = None) -> Parsed:
    """A generateContent answer as an OpenAI chat.completion, priced by `modelVersion`."""
    if not isinstance(data, dict):
        raise ProtocolError("Gemini answer is not a JSON object")
    usage = _chat_usage(data.get("usageMetadata"))
    candidate = _candidate(data)
    if candidate is None:  # prompt blocked: HTTP 200, no candidates, prompt still billed
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        finish = "content_filter"
    else:
        message, finish = _message(candidate)
    body = {
        "id": completion_id(data.get("responseId")),
        "object": "chat.completion",
        "created": int(clock.now()),
        "model": spec.id,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage.openai_chat_usage(),
    }
    version = data.get("modelVersion")
    return Parsed(body=body, usage=usage, upstream_model=version if isinstance(version, str) else None,
                  request_id=request_id, service_tier=_service_tier(data["usageMetadata"]))


def _service_tier(meta: dict[str, Any]) -> str | None:
    """usageMetadata.serviceTier: the tier the call ran (and is billed) at; absent on older answers."""
    tier = meta.get("serviceTier")
    if not isinstance(tier, str) or tier.lower() in ("", "unspecified", "service_tier_unspecified"):
        return None
    return tier.lower().removeprefix("service_tier_")


def _candidate(data: dict[str, Any]) -> dict[str, Any] | None:
    candidates = data.get("candidates")
    if not candidates:
        feedback = data.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            return None
        raise ProtocolError("Gemini answer has no 'candidates' and no 'promptFeedback.blockReason'")
    if not isinstance(candidates, list) or not isinstance(candidates[0], dict):
        raise ProtocolError("Gemini answer field 'candidates' is not a list of objects")
    return candidates[0]


def _message(candidate: dict[str, Any]) -> tuple[dict[str, Any], str]:
    content = candidate.get("content") or {}  # absent when blocked mid-answer or out of tokens while thinking
    parts = content.get("parts", []) if isinstance(content, dict) else None
    if not isinstance(parts, list):
        raise ProtocolError("Gemini answer field 'candidates[0].content.parts' is not a list")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    signature: str | None = None
    for k, part in enumerate(parts):
        if not isinstance(part, dict):
            raise ProtocolError(f"Gemini answer field 'candidates[0].content.parts[{k}]' is not an object")
        if "functionCall" in part:
            calls.append(_tool_call(part, k))
            continue
        if signature is None and isinstance(part.get("thoughtSignature"), str):
            signature = part["thoughtSignature"]
        if isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if "".join(thoughts):
        message["reasoning_content"] = "".join(thoughts)
    if signature is not None:
        message["extra_content"] = {"google": {"thought_signature": signature}}
    return message, _finish_reason(candidate.get("finishReason"), bool(calls))


def _tool_call(part: dict[str, Any], k: int) -> dict[str, Any]:
    call = part["functionCall"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ProtocolError(f"Gemini answer field 'candidates[0].content.parts[{k}].functionCall.name' is missing")
    args = call.get("args") or {}
    if not isinstance(args, dict):
        raise ProtocolError(f"Gemini answer field 'candidates[0].content.parts[{k}].functionCall.args' "
                            "is not an object")
    out: dict[str, Any] = {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }
    if isinstance(part.get("thoughtSignature"), str):
        out["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return out


def _finish_reason(reason: Any, has_calls: bool) -> str:
    """Gemini says STOP for function calls too, so the parts decide."""
    if has_calls:
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def _chat_usage(meta: Any) -> Usage:
    """Disjoint buckets: cached tokens come out of the prompt once, thoughts go into output once."""
    if not isinstance(meta, dict):
        raise ProtocolError("Gemini answer has no 'usageMetadata' object")
    prompt = _count(meta, "promptTokenCount", required=True)
    cached = _count(meta, "cachedContentTokenCount")
    tool_use = _count(meta, "toolUsePromptTokenCount")
    candidates = _count(meta, "candidatesTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    if cached > prompt:
        raise ProtocolError("Gemini answer field 'usageMetadata.cachedContentTokenCount' exceeds promptTokenCount")
    total = meta.get("totalTokenCount")
    # Some variants count thoughts inside candidates; then the total has no room for them.
    inclusive = thoughts > 0 and isinstance(total, int) and prompt + tool_use + candidates == total
    return Usage(
        input_tokens=prompt - cached + tool_use,
        cache_read_tokens=cached,
        output_tokens=candidates if inclusive else candidates + thoughts,
        reasoning_tokens=thoughts,
    )


def _count(meta: dict[str, Any], key: str, *, required: bool = False) -> int:
    value = meta.get(key)
    if value is None and not required:
        return 0  # proto3 JSON omits zero counts
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"Gemini answer field 'usageMetadata.{key}' is missing or not a count")
    return value


# -- errors ---------------------------------------------------------------------------------------
def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> RequestFailed:
    """A google.rpc.Status answer as an UpstreamError; RetryInfo.retryDelay sets the wait."""
    error = _status_object(body)
    if error is None:
        return upstream_error("google", status, f"http_{status}", f"non-JSON error body: {snippet(body)}",
                              retry_after=retry_after_from_headers(headers))
    raw_message = error.get("message")
    message = raw_message if isinstance(raw_message, str) else f"HTTP {status}"
    rpc_status = error.get("status")
    code = rpc_status.lower() if isinstance(rpc_status, str) and rpc_status else f"http_{status}"
    raw_details = error.get("details")
    details = [d for d in raw_details if isinstance(d, dict)] if isinstance(raw_details, list) else []
    if any(_detail_type(d) == "ErrorInfo" and d.get("reason") == "API_KEY_INVALID" for d in details):
        failure = upstream_error("google", status, "api_key_invalid", message, retryable=False)
        failure.type = "authentication_error"  # Gemini says 400; it is a key problem, not a body problem
        return failure
    retry_after = next((_duration(d.get("retryDelay")) for d in details if _detail_type(d) == "RetryInfo"), None)
    if retry_after is None:
        retry_after = retry_after_from_headers(headers)
    return upstream_error("google", status, code, message, retry_after=retry_after)


def _status_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and data:  # streaming-style answers wrap the status in a list
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def _duration(value: Any) -> float | None:
    return parse_duration(value) if isinstance(value, str) else None


def _detail_type(detail: dict[str, Any]) -> str:
    return str(detail.get("@type", "")).rsplit(".", 1)[-1]

