"""Gemini API adapter (generateContent, batchEmbedContents, countTokens). Pure translation, no I/O.

OpenAI-shaped requests go in and `UpstreamCall`s come out. Gemini JSON comes back and becomes
OpenAI-shaped bodies with normalised `Usage`. The provider's facts live here; the translation in
`messages.py` (messages -> contents, thought signatures), `request.py` (`prepare_chat`: the parameters),
`response.py` (`parse_chat`, `parse_error`) and `embeddings.py`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from ..endpoints import ENDPOINTS
from ..base import UpstreamCall
from .embeddings import estimate_tokens, parse_count_tokens, parse_embeddings, prepare_count_tokens, prepare_embeddings
from .request import prepare_chat
from .response import parse_chat, parse_error

NAME: Final = "google"
API_KEY_ENV: Final = ENDPOINTS[NAME].api_key_env
BASE_URL_ENV: Final = ENDPOINTS[NAME].base_url_env
DEFAULT_BASE_URL: Final = ENDPOINTS[NAME].default_base_url


# GenerateContentRequest.serviceTier: unspecified | standard | flex | priority (python-genai 2026-03 maps
# GenerateContentConfig.service_tier to this top-level field; ai.google.dev flex-inference). The answer
# says the tier it ran at in usageMetadata.serviceTier (and the x-gemini-service-tier header).
SERVICE_TIER_FIELD: Final = "serviceTier"


def auth_headers(api_key: str) -> dict[str, str]:
    return {"x-goog-api-key": api_key}


def flex_call(call: UpstreamCall, timeout: float) -> UpstreamCall | None:
    """The same generateContent call on the flex tier (50%), with a client timeout of `timeout` s."""
    return replace(call, json={**call.json, SERVICE_TIER_FIELD: "flex"}, timeout=timeout)


__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_BASE_URL", "NAME", "auth_headers", "estimate_tokens", "flex_call",
           "parse_chat", "parse_count_tokens", "parse_embeddings", "parse_error", "prepare_chat",
           "prepare_count_tokens", "prepare_embeddings"]
