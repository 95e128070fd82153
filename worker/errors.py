"""The error tree: every way one request can fail, and whether trying again can help.

    OTBError
    ├── ConfigError                 bad settings or a malformed registry: stop at start
    └── RequestFailed               one request ends `errored` (or is retried if `retryable`)
        ├── ModelNotFound           id not in the registry          (fatal, model_not_found)
        ├── ModelRetired            id retired upstream             (fatal, model_retired)
        ├── InvalidRequest          bad body / wrong endpoint / rule (fatal, invalid_request)
        │   └── UnsupportedParameter  a parameter the model rejects (fatal, unsupported_parameter)
        ├── MissingApiKey           provider key env var not set    (fatal, missing_api_key)
        ├── UpstreamError           provider answered 4xx/5xx       (retryable per status)
        ├── TransportError          timeout, reset, refused         (retryable)
        ├── ProtocolError           provider JSON we cannot read    (retryable)
        ├── BatchClosed             batch cancelled or past its window before the call (batch_cancelled / batch_expired)
        └── BudgetExceeded          the call could take the batch past its --max-cost (budget_exceeded)

Each `RequestFailed` renders as the OpenAI error object
`{"error": {"message", "type", "param", "code"}}` so results read like an OpenAI batch.
"""

from __future__ import annotations

from typing import Any

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


class OTBError(Exception):
    """Base of everything this project raises on purpose."""


class ConfigError(OTBError):
    """Settings or registry are unusable; the process must not start."""


class Parked(OTBError):
    """Not now: the provider asked for a longer wait than a worker should sleep (e.g. a daily quota).

    Not a result: the request is rescheduled for `resume_in` seconds later, and status says so.
    """

    def __init__(self, resume_in: float, reason: str) -> None:
        super().__init__(reason)
        self.resume_in, self.reason = resume_in, reason


class RequestFailed(OTBError):
    """One request cannot succeed (now, or at all when not `retryable`)."""

    code: str = "request_failed"
    type: str = "invalid_request_error"
    status_code: int = 400
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        if status_code is not None:
            self.status_code = status_code
        if retryable is not None:
            self.retryable = retryable
        self.param = param
        self.retry_after = retry_after
        self.request_id = request_id
        self.body = body

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error envelope; `param` only when it names something."""
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.param is not None:
            error["param"] = self.param
        error["code"] = self.code
        return {"error": error}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ModelNotFound(RequestFailed):
    code = "model_not_found"

    def __init__(self, model_id: str) -> None:
        super().__init__(f'model "{model_id}" not found')
        self.model_id = model_id  # no param: the base envelope is the product's exact one (message, type, code)


class ModelRetired(RequestFailed):
    code = "model_retired"


class InvalidRequest(RequestFailed):
    code = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


# How a submitter lets unsupported parameters be dropped: the CLI's switch (the Python API's
# drop_unsupported_params=True). The HTTP API has no such switch and takes it out of its messages.
DROP_HINT = " or submit with --drop-unsupported-params"


class MissingApiKey(RequestFailed):
    code = "missing_api_key"
    type = "authentication_error"
    status_code = 401


class UpstreamError(RequestFailed):
    """The provider answered with an error status; retryable per `RETRYABLE_STATUS`."""

    type = "api_error"


class TransportError(RequestFailed):
    code = "upstream_unreachable"
    type = "api_error"
    status_code = 502
    retryable = True


class ProtocolError(RequestFailed):
    """The provider answered 2xx with JSON we cannot read (truncated, wrong shape)."""

    code = "upstream_protocol_error"
    type = "api_error"
    status_code = 502
    retryable = True


class BatchClosed(RequestFailed):
    """The batch was cancelled or its completion window ended before this request was sent."""

    type = "batch_error"

    def __init__(self, code: str) -> None:
        reason = "the batch was cancelled" if code == "batch_cancelled" else "the batch's completion window ended"
        super().__init__(f"not sent: {reason} before this request started", code=code)


class BudgetExceeded(RequestFailed):
    """Sending this request could take the batch past its --max-cost."""

    code = "budget_exceeded"
    type = "batch_error"


OUTCOME_BY_CODE = {"batch_cancelled": "canceled", "batch_expired": "expired"}
NO_ANSWER_CODES = {"batch_cancelled", "batch_expired", "budget_exceeded", "worker_crashed", "chunk_failed", "internal_error"}


def type_for_status(status: int) -> str:
    """OpenAI error `type` for an upstream HTTP status (the code keeps the provider's own name)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def upstream_error(
    provider: str,
    status: int,
    code: str,
    message: str,
    *,
    retry_after: float | None = None,
    request_id: str | None = None,
    retryable: bool | None = None,
) -> UpstreamError:
    """Build the error for a provider's error answer; retryable per status unless told."""
    return UpstreamError(
        f"{provider} answered {status}: {message}",
        code=code,
        type=type_for_status(status),
        status_code=status,
        retryable=(status in RETRYABLE_STATUS) if retryable is None else retryable,
        retry_after=retry_after,
        request_id=request_id,
    )
