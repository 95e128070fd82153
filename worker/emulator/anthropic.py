"""Anthropic's wire format: POST /v1/messages, its headers, error bodies, prompt cache and usage.

Cache tokens are reported *beside* `input_tokens`, as Anthropic does; thinking tokens are inside
`output_tokens`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from .anthropic_checks import ANTHROPIC_VERSIONS, validate_messages
from .core import (IMAGE_TOKENS, THINKING_TOKENS, EmuError, EmulatorConfig, compact, hex_id, json_response,
                   retry_text, shape_text, thinking_text, tokens)
from .pipeline import serve_call
from .schema import sample_from_schema
from .state import State

LOOKBACK_BLOCKS = 20  # how far back Anthropic checks for an earlier cache hit
ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request (emulated)"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low (emulated)"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found (emulated)"),
    409: ("conflict_error", "Conflict (emulated)"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit (emulated)"),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable (emulated)"),
    504: ("timeout_error", "Request timed out (emulated)"),
    529: ("overloaded_error", "Overloaded"),
}


class _Anthropic:
    """Anthropic's headers (one key header, anthropic-version, a request-id on every answer) and error body."""

    server_errors: tuple[int, ...] = (500, 503, 529)

    def headers(self) -> dict[str, str]:
        return {"request-id": f"req_{hex_id()}"}

    def check(self, request: web.Request, config: EmulatorConfig) -> None:
        key, bearer = request.headers.get("x-api-key"), request.headers.get("authorization")
        if key and bearer:
            raise EmuError(400, "send exactly one of x-api-key and Authorization, not both")
        if config.require_key and not key and not (bearer or "").lower().startswith("bearer "):
            raise EmuError(401, "x-api-key header is required")
        version = request.headers.get("anthropic-version")
        if version is None:
            raise EmuError(400, "anthropic-version: header is required")
        if version not in ANTHROPIC_VERSIONS:
            raise EmuError(400, f"anthropic-version: invalid value {version!r}; use {' or '.join(ANTHROPIC_VERSIONS)}")

    def model(self, body: dict[str, Any], routed: str) -> str:
        return body["model"] if isinstance(body.get("model"), str) else routed

    def prompt_tokens(self, kind: str, body: dict[str, Any]) -> int:
        return sum(units for units, _, _ in prompt_units(body))

    def error(self, err: EmuError, retry_after: float, headers: dict[str, str]) -> web.Response:
        kind, default = ANTHROPIC_ERRORS.get(err.status, ("api_error", "Error (emulated)"))
        body = {"type": "error", "error": {"type": err.kind or kind, "message": err.message or default},
                "request_id": headers["request-id"]}
        if err.status in (429, 529):
            headers["retry-after"] = retry_text(retry_after)
            headers["retry-after-ms"] = str(round(retry_after * 1000))
        return json_response(err.status, body, headers)


DIALECT = _Anthropic()


def _block_tokens(b: dict[str, Any]) -> int:
    kind = b.get("type")
    if kind == "text":
        return tokens(b["text"])
    if kind in ("image", "document"):
        return IMAGE_TOKENS
    if kind == "tool_use":
        return tokens(compact(b["input"]))
    if kind == "tool_result":
        content = b.get("content")
        if isinstance(content, str):
            return tokens(content)
        return sum(_block_tokens(x) for x in content or [] if isinstance(x, dict))
    return 0  # earlier thinking is stripped from the context, as Anthropic does


def _ttl(block: Any) -> str | None:
    cc = block.get("cache_control") if isinstance(block, dict) else None
    return cc.get("ttl", "5m") if isinstance(cc, dict) else None


def prompt_units(body: dict[str, Any]) -> list[tuple[int, str | None, Any]]:
    """The prompt in Anthropic's cache order (tools, system, messages): (tokens, ttl, identity)."""
    units: list[tuple[int, str | None, Any]] = []
    for tool in body.get("tools") or []:
        plain = {k: v for k, v in tool.items() if k != "cache_control"}
        units.append((tokens(compact(plain)), _ttl(tool), plain))
    system = body.get("system")
    turns = [("system", system)] if system else []
    for role, content in turns + [(m["role"], m["content"]) for m in body["messages"]]:
        for b in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            units.append((_block_tokens(b), _ttl(b), [role, b]))  # a string hashes like its text block
    if isinstance(body.get("cache_control"), dict) and units:  # top-level automatic breakpoint
        n, _, ident = units[-1]
        units[-1] = (n, body["cache_control"].get("ttl", "5m"), ident)
    return units


def _cache_usage(state: State, model: str, units: list[tuple[int, str | None, Any]]) -> tuple[int, int, int]:
    """(write_5m, write_1h, read), as Anthropic's prefix cache reports them.

    Each breakpoint looks back up to 20 blocks for the longest prefix cached before (so a multi-turn
    chat that moves its breakpoint forward reads the earlier turns); that prefix is read and the rest
    up to the last breakpoint is written, each segment with the ttl of the breakpoint that closes it.
    """
    h = hashlib.sha256(model.encode())
    digests: list[bytes] = []
    totals: list[int] = []
    for n, _, ident in units:
        if isinstance(ident, list) and isinstance(ident[1], dict):
            ident = [ident[0], {k: v for k, v in ident[1].items() if k != "cache_control"}]
        h.update(compact(ident).encode())
        digests.append(h.copy().digest())
        totals.append(n + (totals[-1] if totals else 0))
    breakpoints = [i for i, u in enumerate(units) if u[1]]
    window = {p for b in breakpoints for p in range(max(0, b - LOOKBACK_BLOCKS), b + 1)}
    hit = max((p for p in window if digests[p] in state.cache_seen), default=-1)
    writes = {"5m": 0, "1h": 0}
    done = hit
    for b in breakpoints:
        if b > hit:
            writes[units[b][1] or "5m"] += totals[b] - (totals[done] if done >= 0 else 0)
            state.remember(state.cache_seen, digests[b])
            done = b
    return writes["5m"], writes["1h"], totals[hit] if hit >= 0 else 0


def _last_user_text(messages: list[dict[str, Any]]) -> tuple[str, bool]:
    """The last user turn's text and whether it carries tool results."""
    for msg in reversed(messages):
        if msg["role"] != "user":
            continue
        content = msg["content"]
        if isinstance(content, str):
            return content, False
        text = " ".join(b["text"] for b in content if b.get("type") == "text")
        return text, any(b.get("type") == "tool_result" for b in content)
    return "", False


def _anthropic_thinking(body: dict[str, Any]) -> int:
    thinking = body.get("thinking") or {}
    effort = (body.get("output_config") or {}).get("effort")
    if thinking.get("type") == "enabled":
        return min(int(thinking["budget_tokens"]), 120)
    if thinking.get("type") == "adaptive" or effort:
        return THINKING_TOKENS.get(effort or "high", 160)
    return 0


def answer_messages(state: State, request: web.Request, body: dict[str, Any], model: str) -> dict[str, Any]:
    validate_messages(body, request.headers["anthropic-version"])
    state.check_retired("anthropic", model, f"model: {model}")
    units = prompt_units(body)
    write_5m, write_1h, read = _cache_usage(state, model, units) if any(u[1] for u in units) else (0, 0, 0)
    prompt = sum(u[0] for u in units)
    max_tokens = body["max_tokens"]
    thinking = min(_anthropic_thinking(body), max_tokens)
    content: list[dict[str, Any]] = []
    if thinking:
        shown = "" if (body.get("thinking") or {}).get("display") == "omitted" else thinking_text(thinking)
        content.append({"type": "thinking", "thinking": shown, "signature": f"sig_{hex_id(16)}"})
    user_text, has_results = _last_user_text(body["messages"])
    tools = [t for t in body.get("tools") or [] if isinstance(t.get("input_schema"), dict)]
    choice = body.get("tool_choice") or {"type": "auto"}
    stop_sequence = None
    if tools and choice["type"] != "none" and not has_results:
        tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
        args = sample_from_schema(tool["input_schema"], required_only=True)
        content.append({"type": "tool_use", "id": f"toolu_{hex_id()}", "name": tool["name"], "input": args})
        out, stop_reason = tokens(compact(args)), "tool_use"
    else:
        fmt = (body.get("output_config") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            text = json.dumps(sample_from_schema(fmt.get("schema") or {}))
        else:
            about = f" to: {user_text[:60]}" if user_text else " after tool results" if has_results else "."
            text = f"Emulated reply from {model}{about}"
        text, stop_reason, stop_sequence = shape_text(text, max_tokens - thinking, body.get("stop_sequences") or [])
        content.append({"type": "text", "text": text})
        out = tokens(text) if text else 0
    return {
        "id": f"msg_{hex_id()}", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": prompt - write_5m - write_1h - read, "output_tokens": out + thinking,
            "cache_creation_input_tokens": write_5m + write_1h, "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
            "output_tokens_details": {"thinking_tokens": thinking}, "service_tier": "standard",
        },
    }


async def _messages(request: web.Request) -> web.StreamResponse:
    return await serve_call(request, DIALECT, "messages", "unknown", answer_messages)


ROUTES = [web.post("/v1/messages", _messages)]
