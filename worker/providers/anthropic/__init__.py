"""Anthropic Messages adapter: OpenAI chat body -> `POST /v1/messages`, and the answer back. Pure, no I/O.

The provider's facts live here; the translation in `messages.py` (OpenAI messages -> system and turns),
`request.py` (`prepare_chat`: the parameters) and `response.py` (`parse_chat`, `parse_error`). Anthropic
has no embeddings API, so the embedding half of `Provider` refuses.
"""

from __future__ import annotations

from typing import Any, Final

from ...errors import InvalidRequest
from ...registry import ModelSpec
from ...schemas import EmbeddingRequest
from ..endpoints import ENDPOINTS
from ..base import Parsed, Prepared, UpstreamCall
from .messages import MAX_IMAGE_BASE64
from .request import prepare_chat
from .response import parse_chat, parse_error

NAME: Final = "anthropic"
API_KEY_ENV: Final = ENDPOINTS[NAME].api_key_env
BASE_URL_ENV: Final = ENDPOINTS[NAME].base_url_env
DEFAULT_BASE_URL: Final = ENDPOINTS[NAME].default_base_url


def auth_headers(api_key: str) -> dict[str, str]:
    """Exactly one auth header: with both x-api-key and Bearer present the API may refuse."""
    return {"x-api-key": api_key}


def prepare_embeddings(request: EmbeddingRequest, spec: ModelSpec, *, api_version: str) -> Prepared:
    raise _no_embeddings(spec)


def prepare_count_tokens(request: EmbeddingRequest, spec: ModelSpec, *, api_version: str) -> UpstreamCall:
    raise _no_embeddings(spec)


def parse_embeddings(responses: list[dict[str, Any]], request: EmbeddingRequest, spec: ModelSpec, *,
                     token_count: int | None) -> Parsed:
    raise _no_embeddings(spec)


def parse_count_tokens(data: dict[str, Any]) -> int:
    raise InvalidRequest("Anthropic has no token-counting call for embeddings")


def flex_call(call: UpstreamCall, timeout: float) -> UpstreamCall | None:
    """Anthropic sells no flex tier: Claude at half price is the Message Batches API."""
    return None


def _no_embeddings(spec: ModelSpec) -> InvalidRequest:
    return InvalidRequest(f"{spec.id}: Anthropic has no embeddings API", param="model")


__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_BASE_URL", "MAX_IMAGE_BASE64", "NAME", "auth_headers",
           "flex_call", "parse_chat", "parse_count_tokens", "parse_embeddings", "parse_error", "prepare_chat",
           "prepare_count_tokens", "prepare_embeddings"]
