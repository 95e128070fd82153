"""Token estimates for requests before they are sent (rate limiting, `otb estimate`).

A documented heuristic, not a tokenizer: ceil(characters / 4) per text, 1,000 per image (the
emulator uses the same rule, real providers differ by model and language). Calls are corrected with
the real usage once the provider answers.
"""

from __future__ import annotations

import json
import math
from typing import Any

IMAGE_TOKENS = 1000
DEFAULT_OUTPUT_GUESS = 512


def text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    total = 0
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            total += text_tokens(str(part.get("text", "")))
        elif part.get("type") in ("image_url", "input_image", "image"):
            total += IMAGE_TOKENS
    return total


def chat_input_tokens(body: dict[str, Any]) -> int:
    """Every prompt token of an OpenAI chat body: messages, tool calls and results, tool definitions."""
    total = 0
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += content_tokens(message.get("content"))
        for call in message.get("tool_calls") or []:
            total += text_tokens(json.dumps(call.get("function", {}), separators=(",", ":")))
    if body.get("tools"):
        total += text_tokens(json.dumps(body["tools"], separators=(",", ":")))
    return max(total, 1)


def embedding_input_tokens(body: dict[str, Any]) -> int:
    inputs = body.get("input")
    items = [inputs] if isinstance(inputs, str) else list(inputs or [])
    return max(sum(text_tokens(str(s)) for s in items), 1)


def output_guess(body: dict[str, Any]) -> int:
    """What to reserve for the answer before it exists: the cap if it is small, else a typical answer."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    return min(int(cap), DEFAULT_OUTPUT_GUESS) if cap else DEFAULT_OUTPUT_GUESS
