"""What every provider adapter is, produces and consumes. Adapters are pure translation: no I/O.

`Provider` is the one contract: each adapter module (anthropic/, google/) satisfies it, and
`providers.ADAPTERS` is the one list of them, so a third provider is one new package plus its line
there. `upstream.py` sends the `UpstreamCall`s over HTTP (the only place that does), then hands the decoded
JSON back to the adapter's parser. Auth headers are added by the sender (keys come from `Settings`),
so keys never pass through the translation, results or logs.
"""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import InvalidRequest, RequestFailed
from ..registry import ModelSpec
from ..schemas import ChatRequest, EmbeddingRequest, Usage


@dataclass(frozen=True)
class UpstreamCall:
    """One HTTP request to the provider, minus auth and base URL."""

    method: str
    path: str  # e.g. "/v1/messages" or "/v1beta/models/gemini-3-flash-preview:generateContent"
    json: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # seconds for this call, when not the client's (a flex call may take 15 min)


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
    `modelVersion`); pricing follows it when it names another registry entry. `service_tier` is the
    tier the provider says it billed (standard, flex, batch, priority), when it says one.
    """

    body: dict[str, Any]
    usage: Usage
    upstream_model: str | None = None
    request_id: str | None = None
    service_tier: str | None = None


def completion_id(upstream_id: object) -> str:
    """OpenAI's `chatcmpl-` id for a chat answer: the provider's own id after the prefix (Anthropic's
    `msg_...`, Gemini's responseId), so a line can still be traced at the provider; random without one."""
    if isinstance(upstream_id, str) and upstream_id:
        return upstream_id if upstream_id.startswith("chatcmpl-") else f"chatcmpl-{upstream_id}"
    return f"chatcmpl-{uuid.uuid4().hex}"


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


def snippet(body: bytes, size: int = 200) -> str:
    """The start of an unreadable error body, whitespace collapsed, for a one-line message."""
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= size else text[:size] + "…"


class Provider(Protocol):
    """One provider: its facts (name, key and base-URL variables, auth) and its pure translation.

    Adapter *modules* implement it (module constants and functions), so mypy checks each module against
    it where `ADAPTERS` lists it. The facts are read-only properties here because modules hold them as
    `Final` constants. A provider without embeddings refuses them in `prepare_embeddings`.
    """

    @property
    def NAME(self) -> str:  # noqa: N802 - module constant
        """The provider part of model ids (`anthropic/...`) and of registry rows."""

    @property
    def API_KEY_ENV(self) -> str:  # noqa: N802
        """The environment variable holding the API key (named in the missing-key error)."""

    @property
    def BASE_URL_ENV(self) -> str:  # noqa: N802
        """The environment variable that points the provider elsewhere (a proxy, the emulator)."""

    @property
    def DEFAULT_BASE_URL(self) -> str:  # noqa: N802
        """Where the provider's API lives when nothing says otherwise."""

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry the key, added by the sender only."""

    def prepare_chat(self, request: ChatRequest, spec: ModelSpec, *, api_version: str,
                     drop_unsupported: bool) -> Prepared:
        """An OpenAI chat body -> the provider's call(s); refuses or drops what the model would reject."""

    def parse_chat(self, data: dict[str, Any], spec: ModelSpec, *, request_id: str | None = None) -> Parsed:
        """The provider's answer -> an OpenAI chat.completion and normalised usage."""

    def prepare_embeddings(self, request: EmbeddingRequest, spec: ModelSpec, *, api_version: str) -> Prepared:
        """An OpenAI embeddings body -> the provider's call(s)."""

    def prepare_count_tokens(self, request: EmbeddingRequest, spec: ModelSpec, *, api_version: str) -> UpstreamCall:
        """The call that counts an embeddings request's input tokens exactly."""

    def parse_count_tokens(self, data: dict[str, Any]) -> int:
        """The token count out of that call's answer."""

    def parse_embeddings(self, responses: list[dict[str, Any]], request: EmbeddingRequest, spec: ModelSpec, *,
                         token_count: int | None) -> Parsed:
        """The answers to the embeddings calls -> one OpenAI embeddings list and its usage."""

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> RequestFailed:
        """An error answer -> the error tree (retryable or not, Retry-After)."""

    def flex_call(self, call: UpstreamCall, timeout: float) -> UpstreamCall | None:
        """A chat call as the provider's flex tier takes it, with the longer client timeout flex needs;
        None when the provider has no flex tier."""
