"""What every native-batch and Files endpoint goes through: latency, auth, random faults, counting.

These are control calls (create, poll, list, cancel, upload, download), not model calls: they skip the
`#emu:` request markers (a batch's markers belong to its requests) and the per-model RPM/TPM window,
which native batches do not draw from. Every call is counted in /_emulator/stats `by_path` under its
endpoint's name, so a benchmark can show how few upstream HTTP calls a native batch makes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from .core import Dialect, Disconnect, EmuError
from .faults import delay, random_fault
from .pipeline import crashed, dropped
from .state import STATE, State

Handler = Callable[[State, web.Request, dict[str, str]], Awaitable[web.StreamResponse]]
STREAM_CHUNK = 64 * 1024


async def serve_control(request: web.Request, dialect: Dialect, kind: str, handler: Handler,
                        model: str | None = None, auth: bool = True) -> web.StreamResponse:
    """Latency, the key check (unless `auth` is off: an upload URL is its own credential), a random
    fault, then the handler; an EmuError becomes the provider's error body."""
    state = request.app[STATE]
    cfg = state.config
    headers = dialect.headers()
    status = "500"
    try:
        await delay(state, None)
        if auth:
            dialect.check(request, cfg)
        random_fault(state, dialect)
        response = await handler(state, request, headers)
        status = str(response.status)
        return response
    except EmuError as err:
        status = str(err.status)
        return dialect.error(err, cfg.retry_after if err.retry_after is None else err.retry_after, headers)
    except Disconnect:
        status = "reset"
        return dropped(request)
    except Exception as exc:
        return crashed(request, dialect, exc, cfg.retry_after, headers)
    finally:
        state.record(kind, status, model)


def control_route(dialect: Dialect, kind: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler serving `handler` through `serve_control`, counted as `kind`."""
    async def serve(request: web.Request) -> web.StreamResponse:
        return await serve_control(request, dialect, kind, handler)
    return serve


async def read_body(request: web.Request, limit: int, too_large: EmuError) -> bytes:
    """The body, read in chunks up to `limit` bytes (past the app's client_max_size): `too_large` above it."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_object(raw: bytes) -> dict[str, Any]:
    """A JSON object body, or the provider's 400."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise EmuError(400, "There was an error parsing the body (invalid JSON)") from None
    if not isinstance(body, dict):
        raise EmuError(400, "The request body must be a JSON object")
    return body


async def stream_lines(request: web.Request, lines: Iterable[bytes], headers: dict[str, str],
                       content_type: str) -> web.StreamResponse:
    """Lines sent chunked as they are produced, so a large result file is never one buffer."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = content_type
    response.enable_chunked_encoding()
    await response.prepare(request)
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= STREAM_CHUNK:
            await response.write(b"".join(buffer))
            buffer, size = [], 0
    if buffer:
        await response.write(b"".join(buffer))
    await response.write_eof()
    return response


def base_url(request: web.Request) -> str:
    """The emulator's own address as the client reached it, for URLs it hands out (results, uploads)."""
    return f"{request.scheme}://{request.host}"


def jsonl(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
