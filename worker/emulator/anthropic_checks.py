"""The Messages request checks an adapter is most likely to trip, with Anthropic's `path: problem` messages."""

from __future__ import annotations

import re
from typing import Any

from .core import EmuError, compact, expect, is_int

ANTHROPIC_VERSIONS = ("2023-06-01", "2026-10-21")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")


ANTHROPIC_FIELDS = frozenset({
    "model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k", "stop_sequences",
    "stream", "tools", "tool_choice", "metadata", "thinking", "output_config", "service_tier",
    "cache_control", "inference_geo", "container", "context_management", "mcp_servers",
})
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_IMAGE_BASE64 = 5 * 1024 * 1024  # counted on the base64 text, as Anthropic does
MAX_BREAKPOINTS = 4
TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
BLOCK_TYPES = frozenset({"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"})


def validate_messages(body: dict[str, Any], version: str) -> None:
    """The checks an adapter is most likely to trip, with Anthropic's `path: problem` messages (in its order)."""
    _check_fields(body, version)
    _check_output(body)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise EmuError(400, "model: Field required")
    if not is_int(body.get("max_tokens")) or body["max_tokens"] < 1:
        raise EmuError(400, "max_tokens: Field required (an integer >= 1)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EmuError(400, "messages: Field required (a non-empty list)")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _check_blocks(system, "system", "system", version)
    _check_turns(messages, version)
    _check_tool_pairs(messages)
    _check_tools(body)
    _check_breakpoints(body)
    _check_thinking(body)


def _check_fields(body: dict[str, Any], version: str) -> None:
    """No field Anthropic does not know (sampling ones are gone in 2026-10-21), each of its type."""
    for field in body:
        if field not in ANTHROPIC_FIELDS:
            raise EmuError(400, f"{field}: Extra inputs are not permitted")
    if version == "2026-10-21":
        for field in SAMPLING_FIELDS:
            if field in body:
                raise EmuError(400, f"{field}: Extra inputs are not permitted")
    if body.get("stream"):
        raise EmuError(400, "stream: streaming is not supported by the emulator")
    expect(body, "", system=(str, list), tools=list, tool_choice=dict, thinking=dict, output_config=dict,
           stop_sequences=list, metadata=dict, cache_control=dict)
    expect(body.get("output_config") or {}, "output_config.", format=dict, effort=str)
    expect((body.get("output_config") or {}).get("format") or {}, "output_config.format.", schema=dict)


def _check_output(body: dict[str, Any]) -> None:
    """Stop sequences must hold text; a structured-output schema must close every object."""
    if not all(isinstance(x, str) for x in body.get("stop_sequences") or []):
        raise EmuError(400, "stop_sequences: Input should be a list of strings")
    for stop in body.get("stop_sequences") or []:
        if not stop:
            raise EmuError(400, "stop_sequences: each stop sequence must be non-empty")
        if not stop.strip():
            raise EmuError(400, "stop_sequences: each stop sequence must contain non-whitespace")
    fmt = (body.get("output_config") or {}).get("format") or {}
    if fmt.get("schema") is not None and not _closed_objects(fmt["schema"]):
        raise EmuError(400, "output_config.format.schema: For 'object' type, 'additionalProperties' must be "
                       "explicitly set to false")


def _check_turns(messages: list[Any], version: str) -> None:
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("user", "assistant", "system"):
            raise EmuError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if role == "system" and i == 0:
            raise EmuError(400, "messages.0.role: a system message may not come first; use the top-level system")
        content = msg.get("content")
        if isinstance(content, str):
            if not content and not (role == "assistant" and i == len(messages) - 1):
                raise EmuError(400, "messages: text content blocks must be non-empty")
        else:
            _check_blocks(content, f"messages.{i}.content", role, version)


def _check_thinking(body: dict[str, Any]) -> None:
    """A thinking budget of 1024 up to below max_tokens, and no thinking with a forced tool choice."""
    thinking = body.get("thinking") or {}
    if thinking and thinking.get("type") not in ("enabled", "disabled", "adaptive"):
        raise EmuError(400, "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not is_int(budget) or budget < 1024 or budget >= body["max_tokens"]:
            raise EmuError(400, "thinking.budget_tokens: must be >= 1024 and less than max_tokens")
    forced = (body.get("tool_choice") or {}).get("type") in ("any", "tool")
    if forced and thinking.get("type") in ("enabled", "adaptive"):
        raise EmuError(400, "Thinking may not be enabled when tool_choice forces tool use.")


def _check_blocks(blocks: Any, where: str, role: str, version: str) -> None:
    if not isinstance(blocks, list):
        raise EmuError(400, f"{where}: Input should be a valid string or list of content blocks")
    for j, b in enumerate(blocks):
        at = f"{where}.{j}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind not in BLOCK_TYPES or (where == "system" and kind != "text"):
            raise EmuError(400, f"{at}.type: Input tag {kind!r} found using 'type' does not match the expected tags")
        if kind == "text":
            if not isinstance(b.get("text"), str) or not b["text"]:
                raise EmuError(400, f"{at}.text: text content blocks must be non-empty")
            if version == "2026-10-21" and role == "user" and b.get("citations"):
                raise EmuError(400, f"{at}.citations: citations are not accepted on user text blocks")
        elif kind in ("image", "document"):
            src = b.get("source") if isinstance(b.get("source"), dict) else {}
            ok = ((src.get("type") == "base64" and src.get("media_type") and src.get("data"))
                  or (src.get("type") == "url" and src.get("url"))
                  or (kind == "document" and src.get("type") in ("text", "file", "content")))
            if not ok:
                raise EmuError(400, f"{at}.source: expected {{type: base64, media_type, data}} or {{type: url, url}}")
            if kind == "image" and src.get("type") == "base64":
                _check_image_source(src, at)
            if kind == "document" and role == "assistant" and version == "2026-10-21":
                raise EmuError(400, f"{at}: document blocks are not accepted in assistant messages")
        elif kind == "tool_use" and not (isinstance(b.get("id"), str) and isinstance(b.get("name"), str)
                                         and isinstance(b.get("input"), dict)):
            raise EmuError(400, f"{at}: tool_use blocks need id, name and an input object")
        elif kind == "tool_use" and not TOOL_ID.fullmatch(b["id"]):
            raise EmuError(400, f"{at}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        elif kind == "tool_result" and not isinstance(b.get("tool_use_id"), str):
            raise EmuError(400, f"{at}.tool_use_id: Field required")
        elif kind == "tool_result" and not isinstance(b.get("content", ""), (str, list)):
            raise EmuError(400, f"{at}.content: Input should be a valid string or list of content blocks")
        elif kind == "tool_result" and isinstance(b.get("content"), list):
            _check_blocks(b["content"], f"{at}.content", role, version)
        elif kind == "thinking" and not (isinstance(b.get("thinking"), str) and isinstance(b.get("signature"), str)):
            raise EmuError(400, f"{at}: thinking blocks need thinking and signature")
        elif kind == "redacted_thinking" and not isinstance(b.get("data"), str):
            raise EmuError(400, f"{at}.data: Field required")
        _check_cache_control(b, at)


def _check_cache_control(block: dict[str, Any], at: str) -> None:
    """CacheControlEphemeral: exactly {type: ephemeral, ttl?: 5m|1h}; extra keys are refused like any extra input."""
    cc = block.get("cache_control")
    valid = (isinstance(cc, dict) and cc.get("type") == "ephemeral" and set(cc) <= {"type", "ttl"}
             and cc.get("ttl", "5m") in ("5m", "1h"))
    if cc is not None and not valid:
        raise EmuError(400, f"{at}.cache_control: expected {{type: ephemeral, ttl?: 5m|1h}}, got {compact(cc)}")


def _check_image_source(src: dict[str, Any], at: str) -> None:
    if src["media_type"] not in IMAGE_MEDIA_TYPES:
        raise EmuError(400, f"{at}.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
                       "'image/webp'")
    size = len(src["data"]) if isinstance(src["data"], str) else 0
    if size > MAX_IMAGE_BASE64:
        raise EmuError(400, f"{at}.source.base64: image exceeds 5 MB maximum: {size} bytes > {MAX_IMAGE_BASE64} bytes")


def _closed_objects(schema: Any) -> bool:
    """Structured output takes an object schema only with additionalProperties: false, at every depth."""
    if isinstance(schema, list):
        return all(_closed_objects(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    kind = schema.get("type")
    is_object = (kind == "object" or (isinstance(kind, list) and "object" in kind)
                 or ("properties" in schema and not kind))
    if is_object and schema.get("additionalProperties") is not False:
        return False
    subschemas = [schema.get(k) for k in ("items", "anyOf", "oneOf", "allOf", "prefixItems")]
    subschemas += [list(schema[k].values()) for k in ("properties", "$defs", "definitions")
                   if isinstance(schema.get(k), dict)]
    return all(_closed_objects(s) for s in subschemas)


def _check_breakpoints(body: dict[str, Any]) -> None:
    """At most 4 cache_control blocks; ttls may only shrink in reading order (tools, system, messages)."""
    marked: list[tuple[str, str]] = []  # (where, ttl)

    def visit(blocks: Any, where: str) -> None:
        for j, b in enumerate(blocks if isinstance(blocks, list) else []):
            if isinstance(b, dict) and isinstance(b.get("cache_control"), dict):
                marked.append((f"{where}.{j}", b["cache_control"].get("ttl", "5m")))
            if isinstance(b, dict) and isinstance(b.get("content"), list):
                visit(b["content"], f"{where}.{j}.content")

    visit(body.get("tools"), "tools")
    visit(body.get("system"), "system")
    for i, msg in enumerate(body["messages"]):
        visit(msg.get("content"), f"messages.{i}.content")
    if len(marked) > MAX_BREAKPOINTS:
        raise EmuError(400, f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                       f"Found {len(marked)}.")
    seen_short = False
    for where, ttl in marked:
        if ttl == "1h" and seen_short:
            raise EmuError(400, f"{where}.cache_control.ttl: a ttl='1h' cache_control block must not come after a "
                           "ttl='5m' cache_control block. Note that blocks are processed in the following order: "
                           "`tools`, `system`, `messages`.")
        seen_short = seen_short or ttl == "5m"


def _check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """Every tool_use needs a tool_result in the next message, and every tool_result a tool_use before it."""
    def ids(msg: dict[str, Any] | None, kind: str, key: str) -> list[str]:
        content = (msg or {}).get("content")
        return [b[key] for b in content if b.get("type") == kind] if isinstance(content, list) else []

    for i, msg in enumerate(messages):
        prev = messages[i - 1] if i else None
        if msg["role"] == "user":
            wanted = set(ids(prev, "tool_use", "id")) if prev and prev["role"] == "assistant" else set()
            stray = [t for t in ids(msg, "tool_result", "tool_use_id") if t not in wanted]
            if stray:
                raise EmuError(400, f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                               f"{stray[0]}. Each `tool_result` block must have a corresponding `tool_use` block "
                               "in the previous message.")
        elif msg["role"] == "assistant" and i + 1 < len(messages):
            answered = set(ids(messages[i + 1], "tool_result", "tool_use_id"))
            missing = [t for t in ids(msg, "tool_use", "id") if t not in answered]
            if missing:
                raise EmuError(400, f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                               f"immediately after: {missing[0]}. Each `tool_use` block must have a corresponding "
                               "`tool_result` block in the next message.")


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise EmuError(400, "tools: Input should be a valid list")
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise EmuError(400, f"tools.{k}.name: Field required")
        _check_cache_control(tool, f"tools.{k}")
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
            raise EmuError(400, f"tools.{k}.input_schema: Field required")
        kind = (tool.get("input_schema") or {}).get("type")
        if tool.get("type") in (None, "custom") and kind != "object":
            problem = "Field required" if kind is None else "Input should be 'object'"
            raise EmuError(400, f"tools.{k}.custom.input_schema.type: {problem}")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise EmuError(400, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if choice["type"] == "tool" and not any(t["name"] == choice.get("name") for t in tools):
            raise EmuError(400, f"tool_choice.name: no tool named {choice.get('name')!r} in tools")
