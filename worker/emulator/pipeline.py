"""The request pipeline every endpoint shares: latency, auth, markers, faults, limits, then the answer.

What differs between providers around an answer (the key check, the error body, the request-id header,
where the model is named, how the prompt is counted for the TPM limit) is the endpoint's `Dialect`.
Handlers never block: the only waiting is `asyncio.sleep`, and state lives on the loop's thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .core import Dialect, Disconnect, EmuError, json_response
from .faults import Markers, apply_markers, delay, parse_markers, random_fault
from .state import STATE, State

log = logging.getLogger("worker.emulator")

Answer = Callable[[State, web.Request, dict[str, Any], str], dict[str, Any]]


async def serve_call(
    request: web.Request, dialect: Dialect, kind: str, model: str, answer: Answer
) -> web.StreamResponse:
    """Latency, auth, markers, random faults, then the endpoint's answer; every call is counted."""
    state = request.app[STATE]
    cfg = state.config
    headers = dialect.headers()
    status = "500"
    marks: Markers | None = None
    try:
        raw = await request.read()
        marks = parse_markers(raw)
        await delay(state, marks)
        dialect.check(request, cfg)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise EmuError(400, "There was an error parsing the body (invalid JSON)") from None
        if not isinstance(body, dict):
            raise EmuError(400, "The request body must be a JSON object")
        model = dialect.model(body, model)
        if marks is not None:
            apply_markers(state, request, raw, marks)
        random_fault(state, dialect)
        state.admit(model, _prompt_tokens(dialect, kind, body))
        payload = answer(state, request, body, model)
        status = "200"
        return json_response(200, payload, headers, truncate=bool(marks and marks.malformed))
    except EmuError as err:
        status = str(err.status)
        retry = marks.retry_after if marks and marks.retry_after is not None else cfg.retry_after
        if err.retry_after is not None:
            retry = err.retry_after
        return dialect.error(err, retry, headers)
    except Disconnect:
        status = "reset"
        return dropped(request)
    except Exception as exc:  # a bug here must still look like a provider 500, and be visible
        return crashed(request, dialect, exc, cfg.retry_after, headers)
    finally:
        state.record(kind, status, model)


def dropped(request: web.Request) -> web.Response:
    """Close the connection without an answer (the returned response never reaches the client)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def crashed(request: web.Request, dialect: Dialect, exc: Exception, retry_after: float,
            headers: dict[str, str]) -> web.Response:
    """An emulator bug, logged, answered as the provider's 500."""
    log.exception("emulator failed on %s", request.path)
    return dialect.error(EmuError(500, f"emulator error: {exc!r}"), retry_after, headers)


def _prompt_tokens(dialect: Dialect, kind: str, body: dict[str, Any]) -> int:
    try:
        return dialect.prompt_tokens(kind, body)
    except Exception:  # a malformed body is refused later with the provider's own 400
        return 0
