"""OpenAI messages -> Anthropic's top-level system and alternating turns of content blocks.

Also the translation context (`Ctx`: what was dropped or changed on the way) and the prompt-caching
checks, since `cache_control` rides on the blocks built here.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ...errors import DROP_HINT, InvalidRequest, UnsupportedParameter
from ...registry import ModelSpec
from ...schemas import ContentPart, ImagePart, Message, RefusalPart, TextPart, ToolCall
from ..base import checked_base64

SYSTEM_ROLES = ("system", "developer")
USER_PARTS = ("text", "image_url")
THINKING_TYPES = ("thinking", "redacted_thinking")
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


@dataclass
class Ctx:
    """One translation: the model, and what was dropped or changed on the way."""

    spec: ModelSpec
    api_version: str
    drop: bool
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def unsupported(self, param: str, why: str) -> None:
        """Drop `param` (recorded) when the submission allows it, else refuse the request."""
        if not self.drop:
            raise UnsupportedParameter(f"{param} is not supported by {self.spec.id} ({why}); remove it{DROP_HINT}",
                                       param=param)
        if param not in self.dropped:
            self.dropped.append(param)


def convert_messages(messages: list[Message], ctx: Ctx) -> tuple[str | list[Block] | None, list[dict[str, Any]]]:
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


def _place_system(turns: list[Turn], system: list[Block], ctx: Ctx) -> list[Turn]:
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


def _turn(msg: Message, i: int, ctx: Ctx) -> Turn:
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


def _tool_result(msg: Message, i: int, ctx: Ctx) -> Block:
    """A tool message -> tool_result; empty output leaves `content` out (it is optional) rather than send ""."""
    block: Block = {"type": "tool_result", "tool_use_id": _tool_id(msg.tool_call_id or "", ctx)}
    content: Any = msg.content if isinstance(msg.content, str) else _blocks(msg, i, ctx, USER_PARTS)
    if content:
        block["content"] = content
    return block


def _blocks(msg: Message, i: int, ctx: Ctx, kinds: tuple[str, ...]) -> list[Block]:
    """OpenAI content (string or parts) -> Anthropic blocks; `kinds` are the part types this role may carry.

    Empty text is skipped, as the Gemini adapter does: Anthropic answers 400 "text content blocks must be
    non-empty", and joining it would leave stray blank lines in a system prompt.
    """
    if isinstance(msg.content, str):
        return [{"type": "text", "text": msg.content}] if msg.content else []
    blocks = []
    for j, part in enumerate(msg.content or []):
        where = f"messages[{i}].content[{j}]"
        if part.type not in kinds:
            raise InvalidRequest(f"{where}: '{part.type}' parts are not accepted in a {msg.role} message for "
                                 "Anthropic", param=where)
        if isinstance(part, ImagePart):
            blocks.append(_image_block(part, where, ctx))
            continue
        text = _text_of(part)  # an assistant refusal goes back as plain text
        if text:
            blocks.append(keep_cache({"type": "text", "text": text}, part.cache_control, where))
        elif part.cache_control is not None:
            ctx.notes.append(f"{where}: empty text with cache_control not sent (Anthropic refuses empty text "
                             "blocks), so that cache breakpoint is gone")
    return blocks


def _text_of(part: ContentPart) -> str:
    """A text or refusal part's text (only those reach here: `kinds` let no other through)."""
    return part.text if isinstance(part, TextPart) else part.refusal if isinstance(part, RefusalPart) else ""


def _image_block(part: ImagePart, where: str, ctx: Ctx) -> Block:
    """data: URIs become base64 sources; http(s) URLs are fetched by Anthropic."""
    if not ctx.spec.rules.images:
        raise InvalidRequest(f"{where}: {ctx.spec.id} does not accept images", param=where)
    url = part.image_url.url
    match = _DATA_URI.fullmatch(url)
    if match:
        source = {"type": "base64", "media_type": _media_type(match.group(1).lower(), where, ctx),
                  "data": _image_data(match.group(2), where)}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequest(f"{where}: image_url.url must be http(s) or a base64 data: URI of an image", param=where)
    return keep_cache({"type": "image", "source": source}, part.cache_control, where)


def _media_type(media: str, where: str, ctx: Ctx) -> str:
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


def keep_cache(block: Block, cc: Any, where: str) -> Block:
    """`cache_control` on an OpenAI part (or tool) is our pass-through extension for prompt caching.

    Only what Anthropic's CacheControlEphemeral takes passes: {"type": "ephemeral"} and an optional ttl
    of "5m" or "1h"; anything else would be a 400 after the batch was queued.
    """
    if cc is None:
        return block
    valid = (isinstance(cc, dict) and cc.get("type") == "ephemeral" and set(cc) <= {"type", "ttl"}
             and cc.get("ttl", "5m") in CACHE_TTLS)
    if not valid:
        raise InvalidRequest(f"{where}.cache_control must be {{'type': 'ephemeral'}} with an optional 'ttl' of "
                             f"'5m' or '1h', got {json.dumps(cc)}", param=f"{where}.cache_control")
    block["cache_control"] = dict(cc)
    return block


def check_breakpoints(body: dict[str, Any]) -> None:
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
    raw = msg.thinking_blocks
    if raw is None:
        return []
    if any(b.get("type") not in THINKING_TYPES for b in raw):
        raise InvalidRequest(f"messages[{i}].thinking_blocks must list Anthropic thinking/redacted_thinking blocks",
                             param=f"messages[{i}].thinking_blocks")
    return list(raw)


def _tool_use(call: ToolCall, i: int, k: int, ctx: Ctx) -> Block:
    """An OpenAI tool call -> tool_use (its arguments were checked to be an object when the body was parsed)."""
    if call.id is None:
        where = f"messages[{i}].tool_calls[{k}].id"
        raise InvalidRequest(f"{where}: Anthropic needs an id on every tool call", param=where)
    return {"type": "tool_use", "id": _tool_id(call.id, ctx), "name": call.function.name,
            "input": call.function.parsed_arguments()}


def _tool_id(raw: str, ctx: Ctx) -> str:
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
