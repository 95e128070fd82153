"""The one place HTTP is sent. One pooled async client per chunk; low-level errors mapped once.

The transport is aiohttp through `httpx-aiohttp`: it keeps the httpx API while httpx's default
async transport collapses past a few dozen calls in flight (reference/performance.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from .errors import InvalidRequest, ProtocolError, TransportError
from .providers.base import UpstreamCall


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(
                f"provider answered {self.status} with a body that is not valid JSON ({len(self.content)} bytes)"
            ) from exc


def make_client(*, concurrency: int, timeout: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
    )


async def send(client: httpx.AsyncClient, base_url: str, call: UpstreamCall, auth: dict[str, str]) -> Answer:
    """POST one call; TransportError for anything that is not an HTTP answer.

    The body is encoded here, before anything is sent, so that our own encoder failing (a number too
    large for JSON, a body nested too deeply) ends the request as invalid instead of being retried and
    reported as the network failing.
    """
    content = encode(call.json)
    try:
        response = await client.request(
            call.method, base_url + call.path, content=content, headers={**JSON_TYPE, **call.headers, **auth},
            timeout=httpx.Timeout(call.timeout, connect=10.0) if call.timeout else httpx.USE_CLIENT_DEFAULT,
        )
        content = await response.aread()
    except httpx.TimeoutException as exc:
        if _really_timed_out(exc):
            raise TransportError(f"timed out calling {base_url}{_path_only(call.path)}", code="upstream_timeout") from exc
        raise TransportError(f"connection to {base_url} failed: {type(exc.__cause__).__name__}") from exc
    except (httpx.TransportError, OSError) as exc:
        raise TransportError(f"connection to {base_url} failed: {type(exc).__name__}") from exc
    except Exception as exc:  # aiohttp errors the transport does not map (e.g. payload errors mid-body)
        raise TransportError(f"connection to {base_url} broke: {type(exc).__name__}") from exc
    return Answer(response.status_code, dict(response.headers), content)


JSON_TYPE = {"content-type": "application/json"}


def encode(body: Any) -> bytes:
    """The JSON bytes of a call (compact, UTF-8, as httpx would send them); InvalidRequest if impossible."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except RecursionError:
        raise InvalidRequest("the request cannot be sent: it is nested too deeply to encode as JSON") from None
    except (ValueError, TypeError) as exc:  # NaN/Infinity (1e400 read as a float), or a value JSON has no form for
        raise InvalidRequest(f"the request cannot be sent as JSON: {exc}") from None


def _really_timed_out(exc: httpx.TimeoutException) -> bool:
    """httpx-aiohttp reports every aiohttp connection error as ConnectTimeout; look at the cause."""
    cause = exc.__cause__
    return cause is None or isinstance(cause, TimeoutError)


def _path_only(path: str) -> str:
    return path.split("?", 1)[0]
