"""Anthropic Messages adapter: OpenAI chat body -> `POST /v1/messages`, and the answer back. Pure, no I/O.

What a model accepts comes from `spec.rules`; the `anthropic-version` sent decides whether sampling fields exist
at all (2026-10-21 removed them). A parameter the model would reject is refused up front (UnsupportedParameter)
so a request fails fast and names the fix, or is dropped and recorded when the submission allows it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import clock
from ..errors import InvalidRequest, ProtocolError, RequestFailed, UnsupportedParameter, upstream_error
from ..registry import ModelSpec
from ..retry import ratelimit_reset_after, retry_after_from_headers
from ..schemas import ChatRequest, Message, Usage
from .base import Parsed, Prepared, UpstreamCall, checked_base64

API_KEY_ENV = "ANTHROPIC_API_KEY"
MESSAGES_PATH = "/v1/messages"
DEFAULT_MAX_TOKENS = 4096
SAMPLING_REMOVED_IN = "2026-10-21"  # first anthropic-version without temperature/top_p/top_k
SAMPLING = ("temperature", "top_p", "top_k")
SYSTEM_ROLES = ("system", "developer")
USER_PARTS = ("text", "image_url")
THINKING_TYPES = ("thinking", "redacted_thinking")
# reasoning_effort -> budget_tokens on "budget" models (1024 is the API minimum).
BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768}
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
# OpenAI-only request fields that arrive as pydantic extras, with why Anthropic can't honour them.
OPENAI_ONLY = {"logit_bias": "Anthropic has no logit bias", "logprobs": "Anthropic returns no logprobs",
               "top_logprobs": "Anthropic returns no logprobs"}
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")  # all Base64ImageSource takes
MEDIA_TYPE_ALIASES = {"image/jpg": "image/jpeg"}  # a common misspelling of the same format
MAX_IMAGE_BASE64 = 5 * 1024 * 1024  # "image exceeds 5 MB maximum", counted on the base64 text
CACHE_TTLS = ("5m", "1h")
MAX_BREAKPOINTS = 4  # "A maximum of 4 blocks with cache_control may be provided"
_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")  # what tool_use.id and tool_result.tool_use_id must match
_DATA_URI = re.compile(r"data:(image/[\w.+-]+);base64,(.+)", re.S | re.I)
_PLAIN_TEXT_KEYS = {"type", "text"}

Block = dict[str, Any]
Turn = tuple[str, list[Block]]


def auth_headers(api_key: str) -> dict[str, str]:
    """Exactly one auth header: with both x-api-key and Bearer present the API may refuse."""
    return {"x-api-key": api_key}


@dataclass
class _Ctx:
    """One translation: the model, and what was dropped or changed on the way."""

    spec: ModelSpec
    api_version: str
    drop: bool
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def unsupported(self, param: str, why: str) -> None:
        """Drop `param` (recorded) when the submission allows it, else refuse the request."""
        if not self.drop:
            raise UnsupportedParameter(f"{param} is not supported by {self.spec.id} ({why}); "
                                       "remove it or submit with --drop-unsupported-params", param=param)
        if param not in self.dropped:
            self.dropped.append(param)


# -- request ------------------------------------------------------------------------------------
def prepare_chat(request: ChatRequest, spec: ModelSpec, *, api_version: str, drop_unsupported: bool) -> Prepared:
    """Translate one OpenAI chat body into a single Messages call (never streamed)."""
    ctx = _Ctx(spec, api_version, drop_unsupported)
    _refuse_openai_only(request, ctx)
    system, messages = _convert_messages(request.messages, ctx)
    body: dict[str, Any] = {"model": spec.upstream, "max_tokens": _max_tokens(request, spec)}
    if system:
        body["system"] = system
    body["messages"] = messages
    stops = _stop_sequences(request, ctx)
    if stops:
        body["stop_sequences"] = stops
    thinking_on = _apply_reasoning(body, request, ctx)
    _apply_sampling(body, request, ctx, thinking_on)
    _apply_tools(body, request, ctx, thinking_on)
    _apply_response_format(body, request, ctx)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    _check_breakpoints(body)
    headers = {"anthropic-version": api_version, "content-type": "application/json"}
    call = UpstreamCall("POST", MESSAGES_PATH, json=body, headers=headers)
    return Prepared(calls=[call], dropped_params=ctx.dropped, notes=ctx.notes)


def _refuse_openai_only(request: ChatRequest, ctx: _Ctx) -> None:
    """OpenAI parameters with no Anthropic meaning; a penalty of 0 is OpenAI's default and changes nothing."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name) not in (None, 0):
            ctx.unsupported(name, "Anthropic has no sampling penalties")
    if request.seed is not None:
        ctx.unsupported("seed", "Anthropic has no seed")
    if request.n not in (None, 1):
        ctx.unsupported("n", "Anthropic returns one choice per request")
    for name, value in (request.model_extra or {}).items():
        if value is None or value is False or (isinstance(value, (dict, list)) and not value):
            continue  # explicitly unset
        ctx.unsupported(name, OPENAI_ONLY.get(name, "not a parameter the Anthropic adapter knows"))


def _stop_sequences(request: ChatRequest, ctx: _Ctx) -> list[str]:
    """Anthropic 400s on a stop sequence that is empty or only whitespace ("\\n" is a common OpenAI one)."""
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    blank = [s for s in stops if not s.strip()]
    if blank:
        ctx.unsupported("stop", "Anthropic refuses stop sequences that are empty or only whitespace")
        ctx.notes.append(f"stop sequences {json.dumps(blank)} not sent: Anthropic refuses blank ones")
    return [s for s in stops if s.strip()]


def _max_tokens(request: ChatRequest, spec: ModelSpec) -> int:
    """Anthropic requires max_tokens: the request's, else the model default, never above the model limit."""
    limit = spec.rules.max_output_tokens
    requested = request.output_limit()
    if requested is None:
        default = spec.rules.default_max_tokens or DEFAULT_MAX_TOKENS
        return min(default, limit) if limit else default
    if limit is not None and requested > limit:
        name = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise InvalidRequest(f"{name} {requested} is above the output limit of {spec.id} ({limit} tokens)", param=name)
    return requested


# -- messages -----------------------------------------------------------------------------------
def _convert_messages(messages: list[Message], ctx: _Ctx) -> tuple[str | list[Block] | None, list[dict[str, Any]]]:
    """Leading system messages -> top-level system; the rest -> alternating turns (same roles merged)."""
    system: list[Block] = []
    start = 0
    while start < len(messages) and messages[start].role in SYSTEM_ROLES:
        system += _blocks(messages[start], start, ctx, ("text",))
        start += 1
    turns: list[Turn] = []
    for i in range(start, len(messages)):
        role, blocks = _turn(messages[i], i, ctx)
        if blocks:  # a system message of empty text says nothing, and an empty turn is refused
            _append(turns, role, blocks)
    turns = _place_system(turns, system, ctx)
    if not turns:
        raise InvalidRequest("messages holds only system/developer messages; add a user message", param="messages")
    if turns[-1][0] == "assistant" and not ctx.spec.rules.assistant_prefill:
        raise InvalidRequest(f"messages ends with an assistant message (prefill), which {ctx.spec.id} rejects; "
                             "end with a user message", param="messages")
    out = [{"role": role, "content": _collapse(blocks, join=role == "system")} for role, blocks in turns]
    return (_collapse(system, join=True) if system else None), out


def _append(turns: list[Turn], role: str, blocks: list[Block]) -> None:
    """Merge consecutive same-role turns (tool results and a following user message share one turn)."""
    if turns and turns[-1][0] == role:
        turns[-1][1].extend(blocks)
    else:
        turns.append((role, list(blocks)))


def _place_system(turns: list[Turn], system: list[Block], ctx: _Ctx) -> list[Turn]:
    """Keep a later system turn where Anthropic allows one; fold the others into the top-level system."""
    allowed = ctx.spec.rules.mid_conversation_system
    kept: list[Turn] = []
    for k, (role, blocks) in enumerate(turns):
        if role != "system":
            _append(kept, role, blocks)
            continue
        legal = k > 0 and turns[k - 1][0] == "user" and (k == len(turns) - 1 or turns[k + 1][0] == "assistant")
        if allowed and legal:
            _append(kept, role, blocks)
            continue
        system.extend(blocks)
        why = ("it must follow a user turn and be last or precede an assistant turn" if allowed
               else f"{ctx.spec.id} takes no mid-conversation system messages")
        ctx.notes.append(f"a system message after the start was folded into the top-level system prompt ({why})")
    return kept


def _turn(msg: Message, i: int, ctx: _Ctx) -> Turn:
    """One message as a turn; empty text never becomes a block (Anthropic refuses empty text blocks)."""
    if msg.role in SYSTEM_ROLES:
        return "system", _blocks(msg, i, ctx, ("text",))
    if msg.role == "user":
        blocks = _blocks(msg, i, ctx, USER_PARTS)
        if not blocks:
            raise InvalidRequest(f"messages[{i}] has no content (Anthropic refuses empty messages)",
                                 param=f"messages[{i}].content")
        return "user", blocks
    if msg.role == "tool":
        return "user", [_tool_result(msg, i, ctx)]
    blocks = _thinking_blocks(msg, i) + _blocks(msg, i, ctx, ("text", "refusal"))
    blocks += [_tool_use(call, i, k, ctx) for k, call in enumerate(msg.tool_calls or [])]
    if not blocks:
        raise InvalidRequest(f"messages[{i}] is an empty assistant message", param=f"messages[{i}]")
    return "assistant", blocks


def _tool_result(msg: Message, i: int, ctx: _Ctx) -> Block:
    """A tool message -> tool_result; empty output leaves `content` out (it is optional) rather than send ""."""
    block: Block = {"type": "tool_result", "tool_use_id": _tool_id(msg.tool_call_id or "", ctx)}
    content: Any = msg.content if isinstance(msg.content, str) else _blocks(msg, i, ctx, USER_PARTS)
    if content:
        block["content"] = content
    return block


def _blocks(msg: Message, i: int, ctx: _Ctx, kinds: tuple[str, ...]) -> list[Block]:
    """OpenAI content (string or parts) -> Anthropic blocks; `kinds` are the part types this role may carry.

    Empty text is skipped, as the Gemini adapter does: Anthropic answers 400 "text content blocks must be
    non-empty", and joining it would leave stray blank lines in a system prompt.
    """
    parts = [{"type": "text", "text": msg.content}] if isinstance(msg.content, str) else msg.content or []
    blocks = []
    for j, part in enumerate(parts):
        where, kind = f"messages[{i}].content[{j}]", part["type"]
        if kind not in kinds:
            raise InvalidRequest(f"{where}: '{kind}' parts are not accepted in a {msg.role} message for Anthropic",
                                 param=where)
        if kind == "image_url":
            blocks.append(_image_block(part, where, ctx))
            continue
        text = part.get(kind)  # "text" or "refusal" (an assistant refusal goes back as plain text)
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}: a {kind} part needs a string '{kind}'", param=where)
        if text:
            blocks.append(_keep_cache({"type": "text", "text": text}, part, where))
        elif part.get("cache_control") is not None:
            ctx.notes.append(f"{where}: empty text with cache_control not sent (Anthropic refuses empty text "
                             "blocks), so that cache breakpoint is gone")
    return blocks


def _image_block(part: dict[str, Any], where: str, ctx: _Ctx) -> Block:
    """data: URIs become base64 sources; http(s) URLs are fetched by Anthropic."""
    if not ctx.spec.rules.images:
        raise InvalidRequest(f"{where}: {ctx.spec.id} does not accept images", param=where)
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    match = _DATA_URI.fullmatch(url) if isinstance(url, str) else None
    if match:
        source = {"type": "base64", "media_type": _media_type(match.group(1).lower(), where, ctx),
                  "data": _image_data(match.group(2), where)}
    elif isinstance(url, str) and url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequest(f"{where}: image_url.url must be http(s) or a base64 data: URI of an image", param=where)
    return _keep_cache({"type": "image", "source": source}, part, where)


def _media_type(media: str, where: str, ctx: _Ctx) -> str:
    """Only the four types Anthropic decodes; refused here rather than by a 400 after the batch was queued."""
    if media in MEDIA_TYPE_ALIASES:
        ctx.notes.append(f"{where}: media type {media} sent as {MEDIA_TYPE_ALIASES[media]}")
        return MEDIA_TYPE_ALIASES[media]
    if media not in IMAGE_MEDIA_TYPES:
        raise InvalidRequest(f"{where}: Anthropic does not accept {media} images (it takes "
                             f"{', '.join(IMAGE_MEDIA_TYPES)}); convert the image first", param=where)
    return media


def _image_data(data: str, where: str) -> str:
    checked_base64(data, where)
    if len(data) > MAX_IMAGE_BASE64:
        raise InvalidRequest(f"{where}: the image is {len(data)} bytes of base64; Anthropic takes at most 5 MB "
                             f"({MAX_IMAGE_BASE64} bytes) per image; send it smaller", param=where)
    return data


def _keep_cache(block: Block, part: dict[str, Any], where: str) -> Block:
    """`cache_control` on an OpenAI part (or tool) is our pass-through extension for prompt caching.

    Only what Anthropic's CacheControlEphemeral takes passes: {"type": "ephemeral"} and an optional ttl
    of "5m" or "1h"; anything else would be a 400 after the batch was queued.
    """
    cc = part.get("cache_control")
    if cc is None:
        return block
    valid = (isinstance(cc, dict) and cc.get("type") == "ephemeral" and set(cc) <= {"type", "ttl"}
             and cc.get("ttl", "5m") in CACHE_TTLS)
    if not valid:
        raise InvalidRequest(f"{where}.cache_control must be {{'type': 'ephemeral'}} with an optional 'ttl' of "
                             f"'5m' or '1h', got {json.dumps(cc)}", param=f"{where}.cache_control")
    block["cache_control"] = dict(cc)
    return block


def _check_breakpoints(body: dict[str, Any]) -> None:
    """At most 4 breakpoints, and no 1h one after a 5m one, in the order Anthropic reads: tools, system, messages."""
    ttls = [cc.get("ttl", "5m") for cc in _cache_controls(body)]
    if len(ttls) > MAX_BREAKPOINTS:
        raise InvalidRequest(f"the request has {len(ttls)} cache_control breakpoints; Anthropic takes at most "
                             f"{MAX_BREAKPOINTS}", param="cache_control")
    if "5m" in ttls and "1h" in ttls[ttls.index("5m"):]:
        raise InvalidRequest("a cache_control with ttl '1h' comes after one with ttl '5m'; Anthropic reads tools, "
                             "then system, then messages, and refuses a longer ttl after a shorter one",
                             param="cache_control")


def _cache_controls(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cache_control in reading order: tools, system blocks, message blocks and the blocks in tool results."""
    system = body.get("system")
    blocks = list(body.get("tools") or []) + (system if isinstance(system, list) else [])
    for message in body["messages"]:
        content = message["content"]
        for block in content if isinstance(content, list) else []:
            blocks.append(block)
            inner = block.get("content")
            blocks += inner if isinstance(inner, list) else []
    return [b["cache_control"] for b in blocks if isinstance(b, dict) and isinstance(b.get("cache_control"), dict)]


def _thinking_blocks(msg: Message, i: int) -> list[Block]:
    raw = (msg.model_extra or {}).get("thinking_blocks")
    if raw is None:
        return []
    if not isinstance(raw, list) or any(not isinstance(b, dict) or b.get("type") not in THINKING_TYPES for b in raw):
        raise InvalidRequest(f"messages[{i}].thinking_blocks must list Anthropic thinking/redacted_thinking blocks",
                             param=f"messages[{i}].thinking_blocks")
    return list(raw)


def _tool_use(call: dict[str, Any], i: int, k: int, ctx: _Ctx) -> Block:
    """An OpenAI tool call -> tool_use; "" arguments (a no-argument call some clients send) read as {}."""
    fn, where = call.get("function"), f"messages[{i}]"
    if not isinstance(call.get("id"), str) or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where}: tool_calls[{k}] needs 'id' and 'function.name'", param=where)
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except (TypeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{where}: tool_calls[{k}].function.arguments is not valid JSON ({exc})",
                             param=where) from exc
    if not isinstance(args, dict):
        raise InvalidRequest(f"{where}: tool_calls[{k}].function.arguments must be a JSON object", param=where)
    return {"type": "tool_use", "id": _tool_id(call["id"], ctx), "name": fn["name"], "input": args}


def _tool_id(raw: str, ctx: _Ctx) -> str:
    """Anthropic refuses tool ids outside ^[a-zA-Z0-9_-]+$, which histories from other providers carry
    ("functions.f:0"). Such an id is rewritten the same way in its tool_use and its tool_result, with a
    hash of the original so two ids never collide."""
    if _TOOL_ID.fullmatch(raw):
        return raw
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", raw) + "_" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    note = f"tool call id {raw!r} sent as {safe!r} (Anthropic takes only letters, digits, '_' and '-' in ids)"
    if note not in ctx.notes:
        ctx.notes.append(note)
    return safe


def _collapse(blocks: list[Block], *, join: bool) -> str | list[Block]:
    """Plain text goes as a string (joined when `join`); blocks stay when any carries more than text."""
    plain = all(b["type"] == "text" and set(b) <= _PLAIN_TEXT_KEYS for b in blocks)
    return "\n\n".join(b["text"] for b in blocks) if plain and (join or len(blocks) == 1) else blocks


# -- parameters ---------------------------------------------------------------------------------
def _apply_reasoning(body: dict[str, Any], request: ChatRequest, ctx: _Ctx) -> bool:
    """reasoning_effort -> thinking (+ effort); returns whether thinking will be on."""
    effort, rules = request.reasoning_effort, ctx.spec.rules
    if effort is not None and rules.thinking not in ("adaptive", "budget"):
        ctx.unsupported("reasoning_effort", "the model has no thinking control")
        effort = None
    elif effort is not None and effort not in rules.reasoning_efforts:
        allowed = ", ".join(rules.reasoning_efforts)
        ctx.unsupported("reasoning_effort", f"reasoning_effort '{effort}' is not accepted; allowed values: {allowed}")
        effort = None
    if effort is None:  # the model's default; an adaptive model that cannot switch thinking off always thinks
        return rules.thinking == "adaptive" and "none" not in rules.reasoning_efforts
    if effort == "none":
        if rules.thinking == "adaptive":
            body["thinking"] = {"type": "disabled"}
        return False
    if rules.thinking == "adaptive":
        body["thinking"] = {"type": "adaptive"}
        body.setdefault("output_config", {})["effort"] = "low" if effort == "minimal" else effort
        return True
    _apply_budget(body, BUDGETS[effort], ctx, explicit=request.output_limit() is not None)
    return True


MIN_BUDGET = 1024  # Anthropic's smallest budget_tokens


def _apply_budget(body: dict[str, Any], budget: int, ctx: _Ctx, *, explicit: bool) -> None:
    """budget_tokens must stay below max_tokens.

    A max_tokens the caller gave is a hard cap on thinking + answer (OpenAI semantics, and the
    caller's cost bound): the budget shrinks to half of it. Without one, the default max_tokens is
    the visible part and the budget comes on top.
    """
    if explicit:
        cap = body["max_tokens"]
        if cap <= MIN_BUDGET:
            raise InvalidRequest(
                f"max_tokens {cap} leaves no room for thinking on {ctx.spec.id} (it thinks with a token budget of at "
                f"least {MIN_BUDGET}); raise max_tokens above {MIN_BUDGET} or remove reasoning_effort",
                param="max_tokens")
        shrunk = max(MIN_BUDGET, min(budget, cap // 2))
        if shrunk != budget:
            ctx.notes.append(f"thinking budget {budget} reduced to {shrunk} to fit max_tokens {cap}")
        body["thinking"] = {"type": "enabled", "budget_tokens": shrunk}
        return
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    limit = ctx.spec.rules.max_output_tokens
    visible = body["max_tokens"]
    raised = min(budget + visible, limit) if limit else budget + visible
    if raised <= budget:
        raise InvalidRequest(f"reasoning_effort needs a thinking budget of {budget} tokens, which does not fit the "
                             f"output limit of {ctx.spec.id} ({limit} tokens)", param="reasoning_effort")
    ctx.notes.append(f"max_tokens raised from {visible} to {raised} to hold a thinking budget of {budget}")
    body["max_tokens"] = raised


def _apply_sampling(body: dict[str, Any], request: ChatRequest, ctx: _Ctx, thinking_on: bool) -> None:
    given = {name: getattr(request, name) for name in SAMPLING if getattr(request, name) is not None}
    sampling, removed = ctx.spec.rules.sampling, ctx.api_version >= SAMPLING_REMOVED_IN
    if given and (removed or sampling == "rejected"):
        why = (f"anthropic-version {ctx.api_version} rejects sampling parameters" if removed
               else "the model rejects non-default sampling parameters")
        for name in given:
            ctx.unsupported(name, why)
        return
    if given and sampling == "ignored":  # dropped whatever the submission says: the model would not use them
        ctx.dropped += [n for n in given if n not in ctx.dropped]
        ctx.notes.append(f"{', '.join(given)} dropped: {ctx.spec.id} ignores sampling parameters")
        return
    if given.get("temperature", 0) > 1:
        raise InvalidRequest(f"temperature {given['temperature']} is above 1, the Anthropic maximum (range 0-1)",
                             param="temperature")
    for name in list(given):  # what Anthropic 400s on: temperature/top_k with thinking, top_p < 0.95 with thinking
        if thinking_on and (name != "top_p" or given[name] < 0.95):
            ctx.unsupported(name, "not with thinking on" if name != "top_p" else "only 0.95-1 with thinking on")
            del given[name]
    if "temperature" in given and "top_p" in given:
        ctx.unsupported("top_p", "temperature and top_p cannot both be specified")
        del given["top_p"]
    body.update(given)


def _apply_tools(body: dict[str, Any], request: ChatRequest, ctx: _Ctx, thinking_on: bool) -> None:
    """tools, then tool_choice (+ parallel_tool_calls); a refused forced choice drops to auto."""
    if request.tools:
        body["tools"] = [_tool(t, f"tools[{k}]", ctx) for k, t in enumerate(request.tools)]
    choice = _map_tool_choice(request)
    if choice is None and request.parallel_tool_calls is False and request.tools:
        choice = {"type": "auto"}
    if choice is None:
        return
    if choice["type"] in ("any", "tool"):
        why = _forced_refusal(body, ctx, thinking_on)
        if why:
            ctx.unsupported("tool_choice", why)
            choice = {"type": "auto"}
    if request.parallel_tool_calls is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    body["tool_choice"] = choice


def _tool(tool: dict[str, Any], where: str, ctx: _Ctx) -> Block:
    """An OpenAI function -> an Anthropic tool, whose input_schema must be an object schema with its `type`."""
    fn = tool["function"]
    out: Block = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    schema = fn.get("parameters") or {"type": "object", "properties": {}}
    if isinstance(schema, dict) and "type" not in schema:  # OpenAI tolerates it; Anthropic: "type: Field required"
        schema = {"type": "object", **schema}
        ctx.notes.append(f"{where}: parameters sent with type 'object' (Anthropic requires it)")
    if not isinstance(schema, dict) or schema["type"] != "object":
        raise InvalidRequest(f"{where}.function.parameters must be an object schema (type 'object'): Anthropic "
                             "passes tool input only as an object", param=f"{where}.function.parameters")
    out["input_schema"] = schema
    return _keep_cache(out, tool, where)


def _forced_refusal(body: dict[str, Any], ctx: _Ctx, thinking_on: bool) -> str | None:
    """Why a forced choice would 400. Default thinking (newer models think unasked) is switched off if it can be."""
    rules = ctx.spec.rules
    if not rules.forced_tool_choice:
        return "forced tool use ('required' or a named function) is refused; only 'auto' and 'none' work"
    if rules.forced_tool_choice_with_thinking:
        return None
    if "thinking" not in body and rules.thinking == "adaptive" and "none" in rules.reasoning_efforts:
        body["thinking"] = {"type": "disabled"}
        ctx.notes.append("thinking disabled explicitly: the model refuses a forced tool_choice while thinking")
    elif thinking_on:
        return "forced tool use is refused while thinking is on; use 'auto' or reasoning_effort 'none'"
    return None


def _map_tool_choice(request: ChatRequest) -> Block | None:
    tc = request.tool_choice
    if tc is None:
        return None
    names = {t["function"]["name"] for t in request.tools or []}
    if isinstance(tc, str):
        mapped = {"auto": "auto", "none": "none", "required": "any"}.get(tc)
        if mapped is None:
            raise InvalidRequest(f"tool_choice '{tc}' must be 'auto', 'none' or 'required'", param="tool_choice")
        if mapped == "any" and not names:
            raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")
        return {"type": mapped} if names else None
    fn = tc.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if tc.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest("tool_choice must be a string or {'type': 'function', 'function': {'name': ...}}",
                             param="tool_choice")
    if name not in names:
        raise InvalidRequest(f"tool_choice names '{name}', which is not in tools", param="tool_choice")
    return {"type": "tool", "name": name}


def _apply_response_format(body: dict[str, Any], request: ChatRequest, ctx: _Ctx) -> None:
    """json_schema -> output_config.format (structured output); text is the default.

    json_object is not sent: Anthropic has no JSON mode, and the only schema for "any object" it would take,
    {"type": "object", "additionalProperties": false}, admits nothing but {}.
    """
    rf = request.response_format or {}
    kind, inner = rf.get("type"), rf.get("json_schema")
    if kind in (None, "text"):
        return
    if kind == "json_object":
        ctx.dropped += [] if "response_format" in ctx.dropped else ["response_format"]
        ctx.notes.append("response_format json_object not sent: Anthropic has no JSON mode (structured output "
                         "needs a schema); ask for JSON in the prompt, or send a json_schema")
        return
    schema = inner.get("schema") if isinstance(inner, dict) else None
    if kind != "json_schema" or not isinstance(schema, dict):
        raise InvalidRequest("response_format must be {'type': 'text'}, {'type': 'json_object'} or "
                             "{'type': 'json_schema', 'json_schema': {'schema': {...}}}", param="response_format")
    if not ctx.spec.rules.json_schema:
        ctx.unsupported("response_format", "the model has no structured output")
        return
    closed: list[str] = []
    schema = _closed(schema, "schema", closed)
    if closed:
        ctx.notes.append(f"response_format: additionalProperties: false set on {len(closed)} object schemas "
                         f"({', '.join(closed)}): Anthropic's structured output requires it; answers still fit "
                         "your schema")
    body.setdefault("output_config", {})["format"] = {"type": "json_schema", "schema": schema}


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _closed(schema: Any, where: str, closed: list[str]) -> Any:
    """A copy of `schema` with additionalProperties: false on every object schema, which Anthropic's structured
    output requires (a 400 otherwise, whatever OpenAI's `strict` says). Closing only narrows what the model may
    answer, so its answers still validate against the caller's schema; `closed` collects where it was added."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    kind = out.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or ("properties" in out and not kind):
        _close(out, where, closed)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed(sub, f"{where}.{key}.{name}", closed) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_closed(sub, f"{where}.{key}[{k}]", closed) for k, sub in enumerate(out[key])]
    if isinstance(out.get("items"), dict):
        out["items"] = _closed(out["items"], f"{where}.items", closed)
    return out


def _close(obj: dict[str, Any], where: str, closed: list[str]) -> None:
    extra = obj.get("additionalProperties")
    if isinstance(extra, dict) and extra:
        raise InvalidRequest(f"response_format {where}: an object whose additionalProperties is a schema (a map of "
                             "arbitrary keys) cannot be sent to Anthropic, whose structured output requires "
                             "additionalProperties: false on every object; list the keys as properties",
                             param="response_format")
    if extra is not False:
        obj["additionalProperties"] = False
        closed.append(where)


# -- response -----------------------------------------------------------------------------------
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
    body = {"id": msg_id, "object": "chat.completion", "created": int(clock.now()), "model": spec.id,
            "choices": [choice], "usage": usage.openai_chat_usage()}
    model = data.get("model")
    return Parsed(body=body, usage=usage, upstream_model=model if isinstance(model, str) else None,
                  request_id=request_id)


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
    input_tokens = _count(u, "input_tokens", required=True)
    output_tokens = _count(u, "output_tokens", required=True)
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


def _count(obj: dict[str, Any], name: str, prefix: str = "usage.", *, required: bool = False) -> int | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _bad(prefix + name, "a non-negative integer")
    return value


def _field(obj: dict[str, Any], name: str, typ: type, where: str = "") -> Any:
    value = obj.get(name)
    if not isinstance(value, typ):
        _bad(f"{where}.{name}" if where else name, {str: "a string", list: "a list", dict: "an object"}[typ])
    return value


def _bad(where: str, expected: str) -> Any:
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
        payload, error = {}, {"message": f"unreadable error body: {_snippet(body)}"}
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
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


def _snippet(body: bytes, size: int = 200) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    if not text:
        return "(empty body)"
    return text if len(text) <= size else text[:size] + "…"
