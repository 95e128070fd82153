"""Gemini's wire format: generateContent, countTokens and batchEmbedContents under /{version}/models/.

Cached tokens are reported *inside* `promptTokenCount` and thinking tokens *beside* `candidatesTokenCount`,
as Gemini does; Gemini 3+ models issue and demand thought signatures. A `serviceTier` asked for comes back
in `usageMetadata.serviceTier`; flex calls may be shed (faults.flex_shed).
"""

from __future__ import annotations

import array
import base64
import hashlib
import json
import math
import os
from typing import Any, TypeGuard

from aiohttp import web

from .core import (IMAGE_TOKENS, THINKING_TOKENS, EmuError, EmulatorConfig, compact, expect, hex_id, is_int,
                   json_response, retry_text, shape_text, thinking_text, tokens)
from .faults import flex_shed
from .pipeline import Answer, serve_call
from .schema import sample_from_schema
from .state import STATE, State

EMBED_DIMS = 3072
IMPLICIT_CACHE_MIN = 256
GOOGLE_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    413: ("INVALID_ARGUMENT", "Request payload size exceeds the limit."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                      "https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
    529: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}


class _Google:
    """Gemini's key check and google.rpc.Status error body (RetryInfo on 429); the model is in the URL."""

    server_errors: tuple[int, ...] = (500, 503)

    def headers(self) -> dict[str, str]:
        return {}

    def check(self, request: web.Request, config: EmulatorConfig) -> None:
        if config.require_key and not (request.headers.get("x-goog-api-key") or request.query.get("key")):
            raise EmuError(400, "API key not valid. Please pass a valid API key.", details=[{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])

    def model(self, body: dict[str, Any], routed: str) -> str:
        return routed

    def prompt_tokens(self, kind: str, body: dict[str, Any]) -> int:
        return _gemini_prompt(body) if kind == "generateContent" else 0

    def error(self, err: EmuError, retry_after: float, headers: dict[str, str]) -> web.Response:
        status, default = GOOGLE_ERRORS.get(err.status, ("UNKNOWN", "Unknown error (emulated)"))
        details = list(err.details)
        if err.status == 429:
            details += [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_text(retry_after)}s"},
            ]
        body = {"error": {"code": err.status, "message": err.message or default,
                          "status": err.kind or status, "details": details}}
        return json_response(err.status, body, headers)


DIALECT = _Google()


PART_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
               "codeExecutionResult")


def _signed_model(model: str) -> bool:
    """Gemini 3+ models issue and demand thought signatures (and refuse penalties)."""
    return model.startswith(("gemini-3", "gemini-4"))


def _text_parts(parts: Any, allow_empty: bool = False) -> TypeGuard[list[dict[str, Any]]]:
    ok = isinstance(parts, list) and (allow_empty or bool(parts))
    return ok and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts)


def _check_contents(contents: Any, where: str = "GenerateContentRequest") -> None:
    if not isinstance(contents, list) or not contents:
        raise EmuError(400, f"* {where}.contents: contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
            raise EmuError(400, "Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise EmuError(400, f"* {where}.contents[{i}].parts: contents.parts must not be empty.")
        for j, part in enumerate(parts):
            present = [f for f in PART_FIELDS if f in part] if isinstance(part, dict) else []
            if len(present) != 1 or part[present[0]] is None:
                raise EmuError(400, f"* {where}.contents[{i}].parts[{j}].data: required oneof field 'data' "
                               "must have one initialized field")
            expect(part, f"Invalid JSON payload received. contents[{i}].parts[{j}].", text=str, functionCall=dict,
                    functionResponse=dict, inlineData=dict, fileData=dict)
            call = part.get("functionCall") or part.get("functionResponse") or {}
            payload = call.get("args") or call.get("response") or {}
            if not isinstance(call.get("name", ""), str) or not isinstance(payload, dict):
                raise EmuError(400, f"* {where}.contents[{i}].parts[{j}]: function parts need a name and an object")


def _validate_generate(body: dict[str, Any], model: str) -> None:
    _check_contents(body.get("contents"))
    for name in ("systemInstruction", "toolConfig", "generationConfig"):
        if not isinstance(body.get(name) or {}, dict):
            raise EmuError(400, f"Invalid JSON payload received. Invalid value at '{name}': expected an object")
    system_parts = (body.get("systemInstruction") or {}).get("parts") or []
    if not _text_parts(system_parts, allow_empty=True):
        raise EmuError(400, "* GenerateContentRequest.system_instruction.parts: expected text parts")
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not isinstance(fcc, dict) or not isinstance(fcc.get("allowedFunctionNames") or [], list):
        raise EmuError(400, "Invalid JSON payload received. Invalid value at 'tool_config.function_calling_config'")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise EmuError(400, "Invalid JSON payload received. Invalid value at 'tools': expected a list of Tool")
    for t in tools:
        decls = t.get("functionDeclarations") or []
        named = isinstance(decls, list) and all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in decls)
        if not named:
            raise EmuError(400, "* GenerateContentRequest.tools.function_declarations: each needs a name")
    gc = body.get("generationConfig") or {}
    expect(gc, "Invalid JSON payload received. generationConfig.", thinkingConfig=dict, stopSequences=list,
            responseMimeType=str, responseJsonSchema=dict, responseSchema=dict, maxOutputTokens=int)
    if not all(isinstance(x, str) for x in gc.get("stopSequences") or []):
        raise EmuError(400, "Invalid JSON payload received. generationConfig.stopSequences: expected strings")
    tc = gc.get("thinkingConfig") or {}
    if tc.get("thinkingLevel") is not None and tc.get("thinkingBudget") is not None:
        raise EmuError(400, "Unable to submit request because thinking_budget and thinking_level are not "
                       "supported together.")
    level = tc.get("thinkingLevel")
    if level is not None and str(level).lower() not in ("minimal", "low", "medium", "high"):
        raise EmuError(400, f"Invalid value at 'generation_config.thinking_config.thinking_level' ({level!r})")
    if not _signed_model(model):
        return
    for name in ("presencePenalty", "frequencyPenalty"):
        if name in gc:
            raise EmuError(400, f"{name} is not supported for models/{model}.")
    for i, content in enumerate(body["contents"]):
        if content.get("role") != "model":
            continue
        # Google signs only the first functionCall of a step (parallel calls carry one signature).
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if first is not None and not first.get("thoughtSignature"):
            name = first["functionCall"].get("name")
            raise EmuError(400, "Function call is missing a thought_signature in functionCall parts. This is "
                           "required for tools to work correctly. Additional data, function call "
                           f"`default_api:{name}`, position {i + 1}. Please refer to "
                           "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.")


def _part_tokens(part: dict[str, Any]) -> int:
    if "text" in part:
        return tokens(part["text"])
    if "inlineData" in part or "fileData" in part:
        return IMAGE_TOKENS
    if "functionCall" in part:
        return tokens(compact(part["functionCall"].get("args") or {}))
    if "functionResponse" in part:
        return tokens(compact(part["functionResponse"].get("response") or {}))
    return tokens(compact(part))


def _system_text(body: dict[str, Any]) -> str:
    system = body.get("systemInstruction") or {}
    return "".join(p.get("text", "") for p in system.get("parts") or [] if isinstance(p, dict))


def _gemini_prompt(body: dict[str, Any]) -> int:
    system = body.get("systemInstruction") or {}
    n = sum(_part_tokens(p) for p in system.get("parts") or [])
    n += sum(_part_tokens(p) for c in body.get("contents") or [] for p in c["parts"])
    for tool in body.get("tools") or []:
        n += sum(tokens(compact(d)) for d in tool.get("functionDeclarations") or [])
    return n


def _gemini_thinking(tc: dict[str, Any]) -> int:
    level, budget = tc.get("thinkingLevel"), tc.get("thinkingBudget")
    if level is not None:
        return THINKING_TOKENS[str(level).lower()]
    if not is_int(budget) or budget == 0:
        return 0
    return 120 if budget < 0 else min(budget, 120)


def _gemini_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The declaration to call, or None when the model should answer in text."""
    decls: list[dict[str, Any]] = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not decls or fcc.get("mode") == "NONE":
        return None
    last_user: dict[str, Any] = next((c for c in reversed(body["contents"]) if c.get("role", "user") == "user"), {})
    if any("functionResponse" in p for p in last_user.get("parts", [])):
        return None
    allowed = fcc.get("allowedFunctionNames") or []
    return next((d for d in decls if d.get("name") in allowed), decls[0])


SERVICE_TIERS = ("unspecified", "standard", "flex", "priority")  # GenerateContentRequest.serviceTier


def _service_tier(state: State, body: dict[str, Any]) -> str | None:
    """The tier asked for (None: not named); a flex call may be shed as the flex tier does under load."""
    tier = body.get("serviceTier")
    if tier is None:
        return None
    if not isinstance(tier, str) or tier.lower() not in SERVICE_TIERS:
        raise EmuError(400, f"Invalid value at 'service_tier' ({json.dumps(tier)})")
    if tier.lower() == "flex":
        flex_shed(state, compact(body))
    return "standard" if tier.lower() == "unspecified" else tier.lower()


def answer_generate(state: State, request: web.Request, body: dict[str, Any], model: str) -> dict[str, Any]:
    version = request.match_info["version"]
    _validate_generate(body, model)
    tier = _service_tier(state, body)
    state.check_retired("google", model, f"models/{model} is not found for API version {version}, or is not "
                        "supported for generateContent. Call ListModels to see the list of available models "
                        "and their supported methods.")
    spec = state.spec("google", model)
    served = spec.lifecycle.routed_to if spec and spec.lifecycle.routed_to else model
    gc = body.get("generationConfig") or {}
    prompt = _gemini_prompt(body)
    cached = _implicit_cache(state, model, _system_text(body))
    tc = gc.get("thinkingConfig") or {}
    max_output = gc.get("maxOutputTokens")
    budget = max_output if is_int(max_output) else 65536
    thoughts = min(_gemini_thinking(tc), budget)
    parts: list[dict[str, Any]] = []
    if thoughts and tc.get("includeThoughts"):
        parts.append({"text": thinking_text(thoughts), "thought": True})
    decl = _gemini_tool(body)
    finish = "STOP"
    if decl is not None:
        args = sample_from_schema(decl.get("parametersJsonSchema") or decl.get("parameters") or {}, required_only=True)
        part: dict[str, Any] = {"functionCall": {"name": decl["name"], "args": args}}
        if _signed_model(model):
            part["thoughtSignature"] = base64.b64encode(os.urandom(24)).decode()
        parts.append(part)
        out = tokens(compact(args))
    else:
        text, reason, _ = shape_text(_gemini_text(body, gc, model), budget - thoughts, gc.get("stopSequences") or [])
        finish = "MAX_TOKENS" if reason == "max_tokens" else "STOP"
        parts.append({"text": text})
        out = tokens(text) if text else 0
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": out,
                             "totalTokenCount": prompt + out + thoughts}
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if tier is not None:
        usage["serviceTier"] = tier  # the tier that ran (and bills) the call, as Gemini reports it
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage, "modelVersion": served, "responseId": hex_id()}


def _implicit_cache(state: State, model: str, system: str) -> int:
    """A long systemInstruction seen before is a hit: its tokens come back as cachedContentTokenCount."""
    if not system or tokens(system) < IMPLICIT_CACHE_MIN:
        return 0
    key = hashlib.sha256(f"{model}\0{system}".encode()).digest()
    if key in state.system_seen:
        return tokens(system)
    state.remember(state.system_seen, key)
    return 0


def _gemini_text(body: dict[str, Any], gc: dict[str, Any], model: str) -> str:
    schema = gc.get("responseJsonSchema") or gc.get("responseSchema")
    if gc.get("responseMimeType") == "text/x.enum" and isinstance(schema, dict):
        return str(sample_from_schema(schema))
    last_user: dict[str, Any] = next((c for c in reversed(body["contents"]) if c.get("role", "user") == "user"), {})
    user_text = " ".join(p["text"] for p in last_user.get("parts", []) if "text" in p)
    has_results = any("functionResponse" in p for p in last_user.get("parts", []))
    about = f" to: {user_text[:60]}" if user_text else " after tool results" if has_results else "."
    text = f"Emulated reply from {model}{about}"
    if gc.get("responseMimeType") == "application/json":
        return json.dumps(sample_from_schema(schema)) if isinstance(schema, dict) else json.dumps({"reply": text})
    return text


def answer_count_tokens(state: State, request: web.Request, body: dict[str, Any], model: str) -> dict[str, Any]:
    state.check_retired("google", model, f"models/{model} is not found for API version {request.match_info['version']}")
    inner = body.get("generateContentRequest")
    if isinstance(inner, dict):
        _check_contents(inner.get("contents"))
        return {"totalTokens": _gemini_prompt(inner)}
    _check_contents(body.get("contents"), "CountTokensRequest")
    return {"totalTokens": _gemini_prompt({"contents": body["contents"]})}


def embedding(text: str, dims: int) -> list[float]:
    """A unit vector derived from the text alone, so equal texts embed equally across runs."""
    raw = array.array("h", hashlib.shake_256(text.encode()).digest(dims * 2))
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def _embed_one(req: dict[str, Any], where: str) -> dict[str, Any]:
    parts = req["content"].get("parts") if isinstance(req.get("content"), dict) else None
    if not _text_parts(parts):
        raise EmuError(400, f"* {where}.content.parts: content must contain text parts")
    dims = req.get("outputDimensionality", EMBED_DIMS)
    if not is_int(dims) or not 1 <= dims <= EMBED_DIMS:
        raise EmuError(400, f"* {where}.output_dimensionality: must be between 1 and {EMBED_DIMS}")
    return {"values": embedding("".join(p["text"] for p in parts), dims)}


def embed_token_count(req: dict[str, Any]) -> int:
    """The input tokens of one EmbedContentRequest, as countTokens counts its content (a batch answer's
    `tokenCount`)."""
    return _gemini_prompt({"contents": [req["content"]]})


def answer_batch_embed(state: State, request: web.Request, body: dict[str, Any], model: str) -> dict[str, Any]:
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise EmuError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    if len(requests) > 100:
        raise EmuError(400, "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch")
    for i, req in enumerate(requests):
        if not isinstance(req, dict) or req.get("model") != f"models/{model}":
            got = req.get("model") if isinstance(req, dict) else None
            raise EmuError(400, f"* BatchEmbedContentsRequest.requests[{i}].model: {got!r} differs from "
                           f"models/{model} in the URL")
    state.check_retired("google", model, f"models/{model} is not found for API version {request.match_info['version']}")
    return {"embeddings": [_embed_one(r, f"BatchEmbedContentsRequest.requests[{i}]") for i, r in enumerate(requests)]}


GOOGLE_ACTIONS: dict[str, Answer] = {
    "generateContent": answer_generate, "countTokens": answer_count_tokens,
    "batchEmbedContents": answer_batch_embed,
}


async def _google(request: web.Request) -> web.StreamResponse:
    model, _, action = request.match_info["target"].rpartition(":")
    answer = GOOGLE_ACTIONS.get(action)
    if request.match_info["version"] not in ("v1beta", "v1") or answer is None or not model:
        state = request.app[STATE]
        state.record(action or "unknown", "404", model or None)
        return DIALECT.error(EmuError(404, f"Method not found: {request.path}"), 0, {})
    return await serve_call(request, DIALECT, action, model, answer)


ROUTES = [web.post("/{version}/models/{target}", _google)]
