"""Every error the HTTP API answers, in OpenAI's shape, with the status and headers clients act on.

`{"error": {"message", "type", "param", "code"}}` and a real HTTP status, whatever went wrong:
our own refusals (`ApiError`, and any `RequestFailed` from the library, e.g. a submit's validation),
an unknown route, FastAPI's own request validation (a 422 there, a 400 here: OpenAI's status), a
Redis that does not answer (503, one log line), and an unexpected exception (500, nothing of the
internals in the body; the traceback goes to the log).

`x-should-retry: false` tells the SDKs not to retry what cannot pass on a retry (they obey it before
their own status rules); a 429 that waiting fixes carries `retry-after` / `retry-after-ms`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from worker.errors import DROP_HINT, RETRYABLE_STATUS, InvalidRequest, ModelNotFound, RequestFailed

log = logging.getLogger("otb.api")

SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"  # OpenAI's words
UNAVAILABLE = "The server is temporarily unable to reach its data store. Please retry your request in a moment."
NO_RETRY_CODES = frozenset({"insufficient_quota", "no_worker", "timeout"})  # waiting again does not fix these
# (a call that found no worker, or none in time, has already waited --call-timeout: the SDK would wait twice more)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None  # (the seed's exact model_not_found body has no `param`)
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body: every failure of every route answers it, with a real HTTP status."""

    error: ErrorDetail


# The answers every route may give besides its 2xx, as /docs and /openapi.json list them.
OPENAPI_RESPONSES: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse, "description": what} for status, what in (
    (400, "Bad parameters (`invalid_request_error`)"), (401, "No key, or an unknown or revoked one (`invalid_api_key`)"),
    (404, "No such object (or another tenant's), or no such route"), (413, "Too large (a file or a body)"),
    (429, "Over the key's rate (`rate_limit_exceeded`, with `retry-after`) or budget (`insufficient_quota`)"),
    (500, "A server error (nothing of the internals; the log has them)"))}


class ApiError(RequestFailed):
    """A refusal of the HTTP layer: status, OpenAI type and code (None allowed, as OpenAI sends it)."""

    def __init__(self, status: int, message: str, *, code: str | None, type: str = "invalid_request_error",
                 param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, type=type, param=param, status_code=status, retry_after=retry_after)
        self.code = code  # type: ignore[assignment]  # OpenAI sends `"code": null` for many errors


class Forwarded(RequestFailed):
    """A provider's refusal or failure in a call's result line, answered with its own status and body
    (the four fields filled in). Never worth an SDK retry: the workers already retried what a retry
    could fix, OTB_MAX_ATTEMPTS times, so a retry by the SDK would only run all of that again."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        found = body.get("error") if isinstance(body, dict) else None
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        super().__init__(str(error.get("message") or "request failed"), status_code=status, body=body,
                         code=error.get("code"), type=error.get("type") or "invalid_request_error")
        self.headers = headers or {}


class Unanswered(ApiError):
    """A call the provider never answered (connection failures or unreadable answers after the workers'
    OTB_MAX_ATTEMPTS tries, a lost job): a 502 that, like `Forwarded`, is not worth an SDK retry (it would
    run all of those tries again, twice)."""

    def __init__(self, message: str, *, code: str | None, headers: dict[str, str] | None = None) -> None:
        super().__init__(502, message, code=code, type="api_error")
        self.headers = headers or {}  # the call's x-otb-batch, to look it up (`otb results BATCH`)


def not_found(kind: str, ident: str) -> ApiError:
    """OpenAI's 404 for an id that does not exist, or is not the caller's (the same answer)."""
    return ApiError(404, f"No such {kind} object: {ident[:100]}", code=None, param="id")


def body_of(exc: RequestFailed) -> dict[str, Any]:
    """The error body: all four fields, except the seed's exact body for an unknown model id."""
    if isinstance(exc, ModelNotFound):
        return exc.to_openai()
    if isinstance(exc, Forwarded):
        error = exc.body.get("error")
        if not isinstance(error, dict):
            return dict(exc.body)
        return {**exc.body, "error": {"message": exc.message, "type": exc.type, "param": error.get("param"),
                                      "code": exc.code, **error}}
    return {"error": {"message": for_http(exc.message), "type": exc.type, "param": exc.param, "code": exc.code}}


def for_http(message: str) -> str:
    """A message as an HTTP caller reads it: without the CLI's switch, which it has no way to pass."""
    return message.replace(DROP_HINT, "")


def headers_of(exc: RequestFailed) -> dict[str, str]:
    """`retry-after` where waiting helps; `x-should-retry: false` where nothing will."""
    headers: dict[str, str] = {}
    if exc.status_code not in RETRYABLE_STATUS or exc.code in NO_RETRY_CODES or isinstance(exc, (Forwarded, Unanswered)):
        headers["x-should-retry"] = "false"
    elif exc.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
        headers["retry-after-ms"] = str(max(1, math.ceil(exc.retry_after * 1000)))
    return headers


def respond(exc: RequestFailed) -> JSONResponse:
    extra = exc.headers if isinstance(exc, (Forwarded, Unanswered)) else {}
    return JSONResponse(body_of(exc), status_code=exc.status_code, headers={**headers_of(exc), **extra})


async def _on_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestFailed)
    return respond(exc)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404/405 (no such route or method): OpenAI's `Invalid URL (METHOD /path)`."""
    assert isinstance(exc, HTTPException)
    message = f"Invalid URL ({request.method} {request.url.path[:200]})" if exc.status_code in (404, 405) else str(exc.detail)
    response = respond(ApiError(exc.status_code, message, code=None))
    response.headers.update(exc.headers or {})  # a 405's `Allow` (RFC 9110)
    return response


async def _on_invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first bad parameter."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header")]
    param = ".".join(where) or None
    message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid request"))
    return respond(InvalidRequest(message, param=param))


async def _on_redis_down(request: Request, exc: Exception) -> JSONResponse:
    """Redis unreachable (after the connection's own retries): a 503 the SDKs retry, naming no host, and
    one log line per request instead of a traceback (an outage would fill the log with them)."""
    log.warning("%s %s: Redis unreachable (%s)", request.method, request.url.path[:200], str(exc)[:200])
    return respond(ApiError(503, UNAVAILABLE, code=None, type="server_error"))


async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    """500 with OpenAI's words and nothing of ours; the traceback goes to the server's log."""
    log.error("%s %s failed", request.method, request.url.path[:200], exc_info=exc)
    return respond(ApiError(500, SERVER_ERROR, code=None, type="server_error"))


def install(app: FastAPI) -> None:
    """Route every kind of failure through the one OpenAI-shaped answer."""
    app.add_exception_handler(RequestFailed, _on_failed)
    app.add_exception_handler(HTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.add_exception_handler(redis.ConnectionError, _on_redis_down)
    app.add_exception_handler(redis.TimeoutError, _on_redis_down)
    app.add_exception_handler(Exception, _on_crash)
