"""The one place HTTP is sent. One pooled aiohttp session per chunk run; low-level errors mapped once.

The client is aiohttp itself. httpx's default async transport collapses past a few dozen calls in
flight (reference/performance.md); httpx over aiohttp (`httpx-aiohttp`) holds up but costs 2-3x
the CPU of aiohttp alone, about 0.25 ms a call, which at the defaults was a quarter of the worker's
CPU per request (bench/README.md, "At the defaults"). No cookies are kept: a provider's answer
never depends on them, and parsing them was 5% of a work horse's CPU.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from .errors import InvalidRequest, ProtocolError, TransportError
from .providers.base import UpstreamCall

Client = aiohttp.ClientSession


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    content: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(
                f"provider answered {self.status} with a body that is not valid JSON ({len(self.content)} bytes)"
            ) from exc


def make_client(*, concurrency: int, timeout: float) -> Client:
    """A pooled session: `concurrency` connections at most; `timeout` seconds per call, connecting
    (and waiting for a free connection) within 10 of them. Call it inside the event loop it serves."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0)),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def send(client: Client, base_url: str, call: UpstreamCall, auth: dict[str, str]) -> Answer:
    """POST one call; TransportError for anything that is not an HTTP answer.

    The body is encoded here, before anything is sent, so that our own encoder failing (a number too
    large for JSON, a body nested too deeply) ends the request as invalid instead of being retried and
    reported as the network failing.
    """
    content = encode(call.json)
    try:
        timeout = aiohttp.ClientTimeout(total=call.timeout, connect=10.0) if call.timeout else client.timeout
        async with client.request(call.method, base_url + call.path, data=content, timeout=timeout,
                                  headers={**JSON_TYPE, **call.headers, **auth}) as response:
            content = await response.read()
            return Answer(response.status, response.headers, content)
    except (asyncio.TimeoutError, TimeoutError) as exc:  # the call's own time ran out (aiohttp's included)
        raise TransportError(f"timed out calling {base_url}{_path_only(call.path)}", code="upstream_timeout") from exc
    except (aiohttp.ClientConnectionError, OSError) as exc:  # refused, reset, closed before the answer
        raise TransportError(f"connection to {base_url} failed: {type(exc).__name__}") from exc
    except Exception as exc:  # the answer broke off or cannot be read (aiohttp's payload errors mid-body)
        raise TransportError(f"connection to {base_url} broke: {type(exc).__name__}") from exc


JSON_TYPE = {"content-type": "application/json"}


def encode(body: Any) -> bytes:
    """The JSON bytes of a call (compact, UTF-8); InvalidRequest if impossible.

    orjson first (a tenth of json's time, on every call): it writes NaN and Infinity as null where
    json refuses them, so its bytes are taken only when they hold no null at all; anything else
    (a null, an integer past 64 bits, a lone surrogate, deep nesting) goes through json as before.
    """
    try:
        fast = orjson.dumps(body)
    except TypeError:
        fast = b"null"
    if b"null" not in fast:
        return fast
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except RecursionError:
        raise InvalidRequest("the request cannot be sent: it is nested too deeply to encode as JSON") from None
    except (ValueError, TypeError) as exc:  # NaN/Infinity (1e400 read as a float), or a value JSON has no form for
        raise InvalidRequest(f"the request cannot be sent as JSON: {exc}") from None


def _path_only(path: str) -> str:
    return path.split("?", 1)[0]
