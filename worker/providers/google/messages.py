"""OpenAI messages -> Gemini `systemInstruction` and `contents`, thought signatures put back where Gemini put them.

Thought signatures travel the OpenAI-compat way, as `extra_content.google.thought_signature` on tool calls
and on the assistant message. They are returned to Gemini unchanged, because Gemini 3+ rejects a replayed
function call without its signature.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from ...errors import InvalidRequest
from ...registry import ModelSpec
from ...schemas import ImagePart, Message, TextPart, ToolCall
from ..base import checked_base64

Part = dict[str, Any]

SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's documented "history not from this model" value
MIME_BY_EXTENSION = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif", ".pdf": "application/pdf",
}


def check_prefill(messages: list[Message], spec: ModelSpec) -> None:
    """A last assistant turn with text is a prefill; models that refuse it cannot be helped by dropping."""
    last = messages[-1]
    if last.role == "assistant" and not spec.rules.assistant_prefill and _texts(last, len(messages) - 1):
        raise InvalidRequest(
            f"{spec.id} does not accept a final assistant message with content (prefill); "
            "end the conversation with a user or tool message",
            param="messages",
        )


def convert_messages(messages: list[Message], spec: ModelSpec, notes: list[str]) -> tuple[list[Part], list[Part]]:
    """systemInstruction parts and `contents` turns; same-role neighbours merge (Gemini alternates)."""
    system: list[Part] = []
    contents: list[Part] = []
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
        if not isinstance(part, TextPart):
            where = f"messages[{i}].content[{j}]"
            raise InvalidRequest(f"{where}: a {msg.role} message may only hold text parts", param=where)
        if part.text:
            texts.append(part.text)
    return texts


def _user_parts(msg: Message, i: int, spec: ModelSpec) -> list[Part]:
    if isinstance(msg.content, str):
        return [{"text": msg.content}] if msg.content else []
    parts: list[Part] = []
    for j, part in enumerate(msg.content or []):
        where = f"messages[{i}].content[{j}]"
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            if not spec.rules.images:
                raise InvalidRequest(f"{spec.id} does not accept images ({where})", param=where)
            parts.append(_image_part(part.image_url.url, where))
        else:
            raise InvalidRequest(f"{where}: content part type '{part.type}' is not supported for Gemini",
                                 param=where)
    return parts


def _image_part(url: str, where: str) -> Part:
    """data: URIs go inline; http(s) URLs go as fileData (Gemini fetches them)."""
    if not url:
        raise InvalidRequest(f"{where}: image_url needs a 'url'", param=where)
    if url.startswith("data:"):
        return {"inlineData": _data_uri(url, where)}
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise InvalidRequest(f"{where}: image URL must be data:, http: or https:", param=where)
    mime = MIME_BY_EXTENSION.get(posixpath.splitext(parsed.path)[1].lower(), "image/jpeg")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _data_uri(uri: str, where: str) -> dict[str, str]:
    header, sep, data = uri.partition(",")
    mime = header[5:].split(";")[0] if header.startswith("data:") else ""
    if not sep or not mime or not header.endswith(";base64"):
        raise InvalidRequest(f"{where}: expected a 'data:<mime>;base64,<data>' URI", param=where)
    return {"mimeType": mime, "data": checked_base64(data, where)}


def _model_parts(msg: Message, i: int, spec: ModelSpec, names: dict[str, str], notes: list[str]) -> list[Part]:
    """Assistant text and functionCall parts, with thought signatures back where Gemini put them."""
    parts: list[Part] = [{"text": t} for t in _texts(msg, i)]
    signature = _signature(msg.extra_content, f"messages[{i}].extra_content")
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


def _signature(extra: Mapping[str, Any] | None, where: str) -> str | None:
    """`extra_content.google.thought_signature`, exactly as received."""
    google = extra.get("google") if extra is not None else None
    if not isinstance(google, dict) or google.get("thought_signature") is None:
        return None
    signature = google["thought_signature"]
    if not isinstance(signature, str) or not signature:
        raise InvalidRequest(f"{where}.google.thought_signature must be a non-empty string", param=where)
    return signature


def _function_call(call: ToolCall, i: int, j: int, names: dict[str, str]) -> Part:
    """A tool call -> functionCall (its arguments were checked to be an object when the body was parsed)."""
    if call.id is not None:
        names[call.id] = call.function.name
    part: dict[str, Any] = {"functionCall": {"name": call.function.name, "args": call.function.parsed_arguments()}}
    signature = _signature(call.extra_content, f"messages[{i}].tool_calls[{j}].extra_content")
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _function_response(msg: Message, i: int, names: dict[str, str]) -> Part:
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
