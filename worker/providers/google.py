"""Gemini API adapter (generateContent, batchEmbedContents, countTokens). Pure translation, no I/O.

OpenAI-shaped requests go in and `UpstreamCall`s come out. Gemini JSON comes back and becomes
OpenAI-shaped bodies with normalised `Usage`. Thought signatures travel the OpenAI-compat way, as
`extra_content.google.thought_signature` on tool calls and on the assistant message. They are
returned to Gemini unchanged, because Gemini 3+ rejects a replayed function call without its signature.
"""

from __future__ import annotations

import base64
import json
import math
import posixpath
import struct
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from .. import clock
from ..errors import InvalidRequest, ProtocolError, RequestFailed, UnsupportedParameter, upstream_error
from ..registry import ModelSpec
from ..retry import parse_duration, retry_after_from_headers
from ..schemas import ChatRequest, EmbeddingRequest, Message, Usage
from .base import Parsed, Prepared, UpstreamCall, checked_base64

API_KEY_ENV = "GEMINI_API_KEY"
SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's documented "history not from this model" value
EMBED_BATCH_LIMIT = 100  # batchEmbedContents refuses more requests per call
MAX_STOP_SEQUENCES = 5
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}
SAMPLING = (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"))
GATED = (  # (request field, generationConfig key, the Rules flag that allows it)
    ("presence_penalty", "presencePenalty", "penalties"),
    ("frequency_penalty", "frequencyPenalty", "penalties"),
    ("seed", "seed", "seed"),
)
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
NOOP_EXTRAS = frozenset({"logprobs", "logit_bias", "top_logprobs"})  # fine when falsy
MIME_BY_EXTENSION = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif", ".pdf": "application/pdf",
}


def auth_headers(api_key: str) -> dict[str, str]:
    return {"x-goog-api-key": api_key}


# -- chat request ---------------------------------------------------------------------------------
class _Params:
    """Per-parameter decision: raise, or drop and record it (the --drop-unsupported-params switch)."""

    def __init__(self, spec: ModelSpec, drop: bool, prepared: Prepared) -> None:
        self.spec, self.drop, self.prepared = spec, drop, prepared

    def unsupported(self, name: str, what: str | None = None, why: str = "") -> None:
        if self.drop:
            self.prepared.dropped_params.append(name)
            return
        raise UnsupportedParameter(
            f"{what or repr(name)} is not supported by {self.spec.id}{why}; "
            "remove it or submit with --drop-unsupported-params",
            param=name,
        )


def prepare_chat(request: ChatRequest, spec: ModelSpec, *, api_version: str, drop_unsupported: bool) -> Prepared:
    """One generateContent call (never streamed); unsupported parameters raise or are dropped."""
    prepared = Prepared(calls=[])
    params = _Params(spec, drop_unsupported, prepared)
    _check_prefill(request.messages, spec)
    system, contents = _contents(request.messages, spec, prepared.notes)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t["function"]) for t in request.tools]}]
    tool_config = _tool_config(request, spec, params)
    if tool_config:
        body["toolConfig"] = tool_config
    if request.parallel_tool_calls is False:
        params.unsupported("parallel_tool_calls", "'parallel_tool_calls: false'", " (Gemini has no switch for it)")
    config = _generation_config(request, spec, params, prepared)
    if config:
        body["generationConfig"] = config
    _check_extras(request, params)
    path = f"/{api_version}/models/{spec.upstream}:generateContent"
    prepared.calls.append(UpstreamCall("POST", path, json=body))
    return prepared


def _check_prefill(messages: list[Message], spec: ModelSpec) -> None:
    """A last assistant turn with text is a prefill; models that refuse it cannot be helped by dropping."""
    last = messages[-1]
    if last.role == "assistant" and not spec.rules.assistant_prefill and _texts(last, len(messages) - 1):
        raise InvalidRequest(
            f"{spec.id} does not accept a final assistant message with content (prefill); "
            "end the conversation with a user or tool message",
            param="messages",
        )


def _contents(messages: list[Message], spec: ModelSpec, notes: list[str]) -> tuple[list[dict], list[dict]]:
    """systemInstruction parts and `contents` turns; same-role neighbours merge (Gemini alternates)."""
    system: list[dict] = []
    contents: list[dict] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, for functionResponse.name
    started = False
    for i, msg in enumerate(messages):
        if msg.role in ("system", "developer"):
            if started:
                notes.append(f"messages[{i}]: {msg.role} message after the conversation started was folded "
                             "into systemInstruction (Gemini has no mid-conversation system turn)")
            system.extend({"text": t} for t in _texts(msg, i))
            continue
        started = True
        if msg.role == "user":
            role, parts = "user", _user_parts(msg, i, spec)
        elif msg.role == "assistant":
            role, parts = "model", _model_parts(msg, i, spec, names, notes)
            if not parts:
                notes.append(f"messages[{i}]: empty assistant message skipped")
                continue
        else:
            role, parts = "user", [_function_response(msg, i, names)]
        if not parts:
            raise InvalidRequest(f"messages[{i}] has no content", param=f"messages[{i}].content")
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise InvalidRequest("Gemini needs at least one user message besides system messages", param="messages")
    return system, contents


def _texts(msg: Message, i: int) -> list[str]:
    """Non-empty text of a message whose content may only be text."""
    if isinstance(msg.content, str):
        return [msg.content] if msg.content else []
    texts = []
    for j, part in enumerate(msg.content or []):
        if part["type"] != "text" or not isinstance(part.get("text"), str):
            where = f"messages[{i}].content[{j}]"
            raise InvalidRequest(f"{where}: a {msg.role} message may only hold text parts", param=where)
        if part["text"]:
            texts.append(part["text"])
    return texts


def _user_parts(msg: Message, i: int, spec: ModelSpec) -> list[dict]:
    if isinstance(msg.content, str):
        return [{"text": msg.content}] if msg.content else []
    parts: list[dict] = []
    for j, part in enumerate(msg.content or []):
        where = f"messages[{i}].content[{j}]"
        kind = part["type"]
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            if not spec.rules.images:
                raise InvalidRequest(f"{spec.id} does not accept images ({where})", param=where)
            parts.append(_image_part(part.get("image_url"), where))
        else:
            raise InvalidRequest(f"{where}: content part type '{kind}' is not supported for Gemini", param=where)
    return parts


def _image_part(image: Any, where: str) -> dict:
    """data: URIs go inline; http(s) URLs go as fileData (Gemini fetches them)."""
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}: image_url needs a 'url'", param=where)
    if url.startswith("data:"):
        return {"inlineData": _data_uri(url, where)}
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise InvalidRequest(f"{where}: image URL must be data:, http: or https:", param=where)
    mime = MIME_BY_EXTENSION.get(posixpath.splitext(parsed.path)[1].lower(), "image/jpeg")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _data_uri(uri: str, where: str) -> dict:
    header, sep, data = uri.partition(",")
    mime = header[5:].split(";")[0] if header.startswith("data:") else ""
    if not sep or not mime or not header.endswith(";base64"):
        raise InvalidRequest(f"{where}: expected a 'data:<mime>;base64,<data>' URI", param=where)
    return {"mimeType": mime, "data": checked_base64(data, where)}


def _model_parts(msg: Message, i: int, spec: ModelSpec, names: dict[str, str], notes: list[str]) -> list[dict]:
    """Assistant text and functionCall parts, with thought signatures back where Gemini put them."""
    parts: list[dict] = [{"text": t} for t in _texts(msg, i)]
    signature = _signature(msg.model_extra or {}, f"messages[{i}].extra_content")
    if signature is not None:
        if parts:
            parts[0]["thoughtSignature"] = signature
        else:  # the signature came on an empty text part: send it back the same way
            parts.append({"text": "", "thoughtSignature": signature})
    calls = [_function_call(call, i, j, names) for j, call in enumerate(msg.tool_calls or [])]
    if calls and spec.rules.thought_signatures and not any("thoughtSignature" in c for c in calls):
        for call in calls:  # Gemini 3+ 400s on unsigned calls; this history did not come from the model
            call["thoughtSignature"] = SKIP_SIGNATURE
        notes.append(f"messages[{i}]: tool calls without a thought signature sent with '{SKIP_SIGNATURE}'")
    return parts + calls


def _signature(holder: Mapping[str, Any], where: str) -> str | None:
    """`extra_content.google.thought_signature`, exactly as received."""
    extra = holder.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    if not isinstance(google, dict) or google.get("thought_signature") is None:
        return None
    signature = google["thought_signature"]
    if not isinstance(signature, str) or not signature:
        raise InvalidRequest(f"{where}.google.thought_signature must be a non-empty string", param=where)
    return signature


def _function_call(call: dict[str, Any], i: int, j: int, names: dict[str, str]) -> dict:
    where = f"messages[{i}].tool_calls[{j}]"
    fn = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where} must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}",
                             param=where)
    args = fn.get("arguments")
    if isinstance(args, str) and args.strip():
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{where}.function.arguments is not valid JSON: {exc}",
                                 param=f"{where}.function.arguments") from exc
    elif args in (None, ""):
        args = {}
    if not isinstance(args, dict):
        raise InvalidRequest(f"{where}.function.arguments must be a JSON object", param=f"{where}.function.arguments")
    if isinstance(call.get("id"), str):
        names[call["id"]] = fn["name"]
    part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": args}}
    signature = _signature(call, f"{where}.extra_content")
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _function_response(msg: Message, i: int, names: dict[str, str]) -> dict:
    """Gemini needs the function name (looked up by tool_call_id) and an object response."""
    name = names.get(msg.tool_call_id or "")
    if name is None:
        raise InvalidRequest(f"messages[{i}]: tool_call_id '{msg.tool_call_id}' matches no earlier assistant "
                             "tool call", param=f"messages[{i}].tool_call_id")
    text = "".join(_texts(msg, i))
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"result": text}
    return {"functionResponse": {"name": name, "response": response}}


def _declaration(fn: dict[str, Any]) -> dict:
    decl: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        decl["description"] = fn["description"]
    if fn.get("parameters") is not None:
        decl["parametersJsonSchema"] = fn["parameters"]  # full JSON Schema; `parameters` is an OpenAPI subset
    return decl


def _tool_config(request: ChatRequest, spec: ModelSpec, params: _Params) -> dict | None:
    choice = request.tool_choice
    names = [t["function"]["name"] for t in request.tools or []]
    if choice is None or (choice in ("auto", "none") and not names):
        return None
    if choice in ("auto", "none"):
        return {"functionCallingConfig": {"mode": choice.upper()}}
    forced = _forced_name(choice)
    if not names:
        raise InvalidRequest("tool_choice forces a tool call but 'tools' is empty", param="tool_choice")
    if forced is not None and forced not in names:
        raise InvalidRequest(f"tool_choice names '{forced}', which is not in 'tools'", param="tool_choice")
    config: dict[str, Any] = {"mode": "ANY"}
    if forced is not None:
        config["allowedFunctionNames"] = [forced]
    if not spec.rules.forced_tool_choice:
        params.unsupported("tool_choice", "a forced tool_choice")
        return None
    return {"functionCallingConfig": config}


def _forced_name(choice: str | dict[str, Any]) -> str | None:
    """None for "required"; the function name for a named choice."""
    if choice == "required":
        return None
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest("tool_choice must be 'auto', 'none', 'required' or "
                             "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
    return name


def _generation_config(request: ChatRequest, spec: ModelSpec, params: _Params, prepared: Prepared) -> dict:
    rules = spec.rules
    config: dict[str, Any] = {}
    limit = request.output_limit()
    if limit is not None and rules.max_output_tokens is not None and limit > rules.max_output_tokens:
        name = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise InvalidRequest(f"{name} {limit} is above {spec.id}'s output limit of {rules.max_output_tokens}",
                             param=name)
    if limit or rules.default_max_tokens:
        config["maxOutputTokens"] = limit or rules.default_max_tokens
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"Gemini takes at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}",
                             param="stop")
    if stops:
        config["stopSequences"] = stops
    _sampling(request, spec, params, prepared, config)
    for name, key, flag in GATED:
        value = getattr(request, name)
        if value is not None and getattr(rules, flag):
            config[key] = value
        elif value is not None:
            params.unsupported(name)
    if request.n is not None and request.n > 1:
        params.unsupported("n", "'n' above 1")
    _response_format(request.response_format, spec, params, config)
    thinking = _thinking(request, spec, params)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


def _sampling(request: ChatRequest, spec: ModelSpec, params: _Params, prepared: Prepared, config: dict) -> None:
    """Models that ignore sampling never see it: dropped and recorded, never an error."""
    given = [(name, key) for name, key in SAMPLING if getattr(request, name) is not None]
    for name, key in given:
        if spec.rules.sampling == "accepted":
            config[key] = getattr(request, name)
        elif spec.rules.sampling == "ignored":
            prepared.dropped_params.append(name)
        else:
            params.unsupported(name)
    if given and spec.rules.sampling == "ignored":
        prepared.notes.append(f"{spec.id} ignores {', '.join(n for n, _ in given)}; not sent")


def _response_format(fmt: dict[str, Any] | None, spec: ModelSpec, params: _Params, config: dict) -> None:
    kind = (fmt or {}).get("type")
    if fmt is None or kind == "text":
        return
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
    elif kind == "json_schema":
        spec_obj = fmt.get("json_schema")
        schema = spec_obj.get("schema") if isinstance(spec_obj, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema must be an object", param="response_format")
        if not spec.rules.json_schema:
            params.unsupported("response_format", "response_format 'json_schema'")
            return
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = schema
    else:
        raise InvalidRequest(f"response_format type '{kind}' is not one of text, json_object, json_schema",
                             param="response_format")


def _thinking(request: ChatRequest, spec: ModelSpec, params: _Params) -> dict | None:
    """Gemini 3+ takes a level, 2.5 a budget; never both (400)."""
    effort = request.reasoning_effort
    if effort is None:
        return None
    rules = spec.rules
    allowed = rules.reasoning_efforts
    level_none_ok = rules.thinking != "level" or effort != "none" or "minimal" in allowed
    if effort not in allowed or rules.thinking not in ("level", "budget") or not level_none_ok:
        why = f" (allowed: {', '.join(allowed)})" if allowed else " (it has no reasoning control)"
        params.unsupported("reasoning_effort", f"reasoning_effort '{effort}'", why)
        return None
    if rules.thinking == "level":
        return {"thinkingLevel": {"xhigh": "high", "none": "minimal"}.get(effort, effort)}
    return {"thinkingBudget": THINKING_BUDGETS[effort]}


def _check_extras(request: ChatRequest, params: _Params) -> None:
    """Fields ChatRequest does not know (logprobs, logit_bias, ...) have no Gemini counterpart here."""
    for name, value in (request.model_extra or {}).items():
        if value is None or (name in NOOP_EXTRAS and not value):
            continue
        params.unsupported(name)


# -- chat response --------------------------------------------------------------------------------
def parse_chat(data: dict, spec: ModelSpec, *, request_id: str | None = None) -> Parsed:
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
    response_id = data.get("responseId")
    body = {
        "id": response_id if isinstance(response_id, str) and response_id else f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(clock.now()),
        "model": spec.id,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage.openai_chat_usage(),
    }
    version = data.get("modelVersion")
    return Parsed(body=body, usage=usage, upstream_model=version if isinstance(version, str) else None,
                  request_id=request_id)


def _candidate(data: dict) -> dict | None:
    candidates = data.get("candidates")
    if not candidates:
        feedback = data.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            return None
        raise ProtocolError("Gemini answer has no 'candidates' and no 'promptFeedback.blockReason'")
    if not isinstance(candidates, list) or not isinstance(candidates[0], dict):
        raise ProtocolError("Gemini answer field 'candidates' is not a list of objects")
    return candidates[0]


def _message(candidate: dict) -> tuple[dict, str]:
    content = candidate.get("content") or {}  # absent when blocked mid-answer or out of tokens while thinking
    parts = content.get("parts", []) if isinstance(content, dict) else None
    if not isinstance(parts, list):
        raise ProtocolError("Gemini answer field 'candidates[0].content.parts' is not a list")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict] = []
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


def _tool_call(part: dict, k: int) -> dict:
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


def _count(meta: dict, key: str, *, required: bool = False) -> int:
    value = meta.get(key)
    if value is None and not required:
        return 0  # proto3 JSON omits zero counts
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"Gemini answer field 'usageMetadata.{key}' is missing or not a count")
    return value


# -- embeddings -----------------------------------------------------------------------------------
def prepare_embeddings(request: EmbeddingRequest, spec: ModelSpec, *, api_version: str) -> Prepared:
    """batchEmbedContents calls of at most 100 inputs each, in input order."""
    inputs = request.inputs()
    rules = spec.rules
    if rules.max_inputs is not None and len(inputs) > rules.max_inputs:
        raise InvalidRequest(f"'input' has {len(inputs)} items; {spec.id} takes at most {rules.max_inputs}",
                             param="input")
    if request.dimensions is not None and rules.dimensions:
        low, high = min(rules.dimensions), max(rules.dimensions)
        if not low <= request.dimensions <= high:
            raise InvalidRequest(f"'dimensions' must be between {low} and {high} for {spec.id}", param="dimensions")
    extra = {"outputDimensionality": request.dimensions} if request.dimensions is not None else {}
    items = [{"model": f"models/{spec.upstream}", "content": {"parts": [{"text": s}]}, **extra} for s in inputs]
    path = f"/{api_version}/models/{spec.upstream}:batchEmbedContents"
    calls = [UpstreamCall("POST", path, json={"requests": items[k:k + EMBED_BATCH_LIMIT]})
             for k in range(0, len(items), EMBED_BATCH_LIMIT)]
    return Prepared(calls=calls)


def prepare_count_tokens(request: EmbeddingRequest, spec: ModelSpec, *, api_version: str) -> UpstreamCall:
    """batchEmbedContents reports no tokens; countTokens gives the exact billed count."""
    contents = [{"role": "user", "parts": [{"text": s}]} for s in request.inputs()]
    return UpstreamCall("POST", f"/{api_version}/models/{spec.upstream}:countTokens", json={"contents": contents})


def parse_count_tokens(data: dict) -> int:
    total = data.get("totalTokens") if isinstance(data, dict) else None
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise ProtocolError("Gemini countTokens answer has no 'totalTokens' count")
    return total


def estimate_tokens(texts: list[str]) -> int:
    """About 4 characters per token (Google's rule of thumb), at least 1 per text; flagged as estimated."""
    return sum(max(1, math.ceil(len(t) / 4)) for t in texts)


def parse_embeddings(
    responses: list[dict], request: EmbeddingRequest, spec: ModelSpec, *, token_count: int | None
) -> Parsed:
    """Join the batch answers into one OpenAI embeddings list, in input order."""
    vectors = [v for r, resp in enumerate(responses) for v in _vectors(resp, r)]
    inputs = request.inputs()
    if len(vectors) != len(inputs):
        raise ProtocolError(f"Gemini returned {len(vectors)} embeddings for {len(inputs)} inputs")
    usage = _embedding_usage(responses, inputs, token_count)
    as_base64 = request.encoding_format == "base64"
    data = [{"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v}
            for i, v in enumerate(vectors)]
    body = {"object": "list", "data": data, "model": spec.id, "usage": usage.openai_embedding_usage()}
    return Parsed(body=body, usage=usage)


def _vectors(response: Any, r: int) -> list[list[float]]:
    embeddings = response.get("embeddings") if isinstance(response, dict) else None
    if not isinstance(embeddings, list):
        raise ProtocolError(f"Gemini batchEmbedContents answer {r} has no 'embeddings' list")
    vectors = []
    for e, emb in enumerate(embeddings):
        values = emb.get("values") if isinstance(emb, dict) else None
        if not isinstance(values, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in values
        ):
            raise ProtocolError(f"Gemini answer {r} field 'embeddings[{e}].values' is not a list of numbers")
        vectors.append([float(x) for x in values])
    return vectors


def _embedding_usage(responses: list[dict], inputs: list[str], token_count: int | None) -> Usage:
    """Reported usage beats countTokens, which beats the estimate (the only case marked estimated)."""
    reported = [(resp.get("usageMetadata") or {}).get("promptTokenCount") for resp in responses]
    if reported and all(isinstance(n, int) and not isinstance(n, bool) for n in reported):
        return Usage(input_tokens=sum(reported))
    if token_count is not None:
        return Usage(input_tokens=token_count)
    return Usage(input_tokens=estimate_tokens(inputs), estimated=True)


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# -- errors ---------------------------------------------------------------------------------------
def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> RequestFailed:
    """A google.rpc.Status answer as an UpstreamError; RetryInfo.retryDelay sets the wait."""
    error = _status_object(body)
    if error is None:
        return upstream_error("google", status, f"http_{status}", f"non-JSON error body: {_snippet(body)}",
                              retry_after=retry_after_from_headers(headers))
    message = error.get("message") if isinstance(error.get("message"), str) else f"HTTP {status}"
    rpc_status = error.get("status")
    code = rpc_status.lower() if isinstance(rpc_status, str) and rpc_status else f"http_{status}"
    raw_details = error.get("details")
    details = [d for d in raw_details if isinstance(d, dict)] if isinstance(raw_details, list) else []
    if any(_detail_type(d) == "ErrorInfo" and d.get("reason") == "API_KEY_INVALID" for d in details):
        failure = upstream_error("google", status, "api_key_invalid", message, retryable=False)
        failure.type = "authentication_error"  # Gemini says 400; it is a key problem, not a body problem
        return failure
    retry_after = next((parse_duration(d.get("retryDelay")) for d in details if _detail_type(d) == "RetryInfo"), None)
    if retry_after is None:
        retry_after = retry_after_from_headers(headers)
    return upstream_error("google", status, code, message, retry_after=retry_after)


def _status_object(body: bytes) -> dict | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and data:  # streaming-style answers wrap the status in a list
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def _detail_type(detail: dict) -> str:
    return str(detail.get("@type", "")).rsplit(".", 1)[-1]


def _snippet(body: bytes, limit: int = 200) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return text[:limit] + ("…" if len(text) > limit else "")
