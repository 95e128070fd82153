"""What every provider adapter produces and consumes. Adapters are pure translation: no I/O.

`jobs.py` sends the `UpstreamCall`s over HTTP (the only place that does), then hands the decoded
JSON back to the adapter's parser. Auth headers are added by the sender from `Settings`, so keys
never pass through adapters, results or logs.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest
from ..schemas import Usage


@dataclass(frozen=True)
class UpstreamCall:
    """One HTTP request to the provider, minus auth and base URL."""

    method: str
    path: str  # e.g. "/v1/messages" or "/v1beta/models/gemini-3-flash-preview:generateContent"
    json: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Prepared:
    """A request translated for the provider, and what was dropped on the way."""

    calls: list[UpstreamCall]
    dropped_params: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Parsed:
    """A provider answer translated back: the OpenAI-shaped body and normalised usage.

    `upstream_model` is the model the provider says it ran (Anthropic `model`, Gemini
    `modelVersion`); pricing follows it when it names another registry entry.
    """

    body: dict[str, Any]
    usage: Usage
    upstream_model: str | None = None
    request_id: str | None = None


def checked_base64(data: str, where: str) -> str:
    """A data: URI payload must be base64, or the provider refuses the request after we paid the trip."""
    try:
        binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidRequest(f"{where}: the image data after 'base64,' is not valid base64", param=where) from None
    return data


def output_limit(prepared: Prepared, max_output_tokens: int | None) -> int:
    """The most output tokens the provider may bill for this call as it will be sent
    (Anthropic `max_tokens`, Gemini `generationConfig.maxOutputTokens`, else the model's maximum)."""
    body = prepared.calls[0].json
    limit = body.get("max_tokens") or (body.get("generationConfig") or {}).get("maxOutputTokens")
    return int(limit or max_output_tokens or 65536)
