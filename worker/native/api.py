"""What the poller asks of a provider's batch API, whichever provider: the shared shapes and errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import httpx

from ..errors import MissingApiKey, RequestFailed
from ..providers import ADAPTERS
from ..settings import Settings
from .records import Line
from .state import Part

SUCCEEDED, ERRORED, CANCELED, EXPIRED = "succeeded", "errored", "canceled", "expired"


class CallFailed(Exception):
    """A control call (create, retrieve, cancel, results) was not answered as hoped; `status` 0: no answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status or 'no answer'}: {message}")
        self.status = status


@dataclass
class Poll:
    """Where a provider batch is: still running, ended with results, or ended with none at all."""

    status: str  # the provider's own word
    ended: bool
    has_results: bool = True
    progress: dict[str, int] = field(default_factory=dict)


@dataclass
class Answer:
    """One request's outcome in a provider batch, by its position in the part."""

    position: int
    kind: str  # succeeded | errored | canceled | expired
    data: dict[str, Any] | None = None  # the provider's answer (succeeded)
    error: RequestFailed | None = None  # errored


class BatchApi(Protocol):
    def write(self, part: Part, lines: Iterator[Line | None], spool: IO[bytes]) -> int:
        """The create's input written to `spool` as it is built (None: a line that no longer goes,
        skipped); how many requests it holds."""

    def create(self, part: Part, spool: IO[bytes], size: int) -> str:
        """Send the create (its input read from `spool`); the provider batch's id."""

    def find(self, part: Part) -> list[str]:
        """Provider batches an earlier create of this intent may have made, likeliest first."""

    def poll(self, part: Part) -> Poll: ...

    def cancel(self, part: Part) -> None: ...

    def results(self, part: Part) -> Iterator[Answer]:
        """Every answer of an ended batch (positions not answered are simply absent)."""

    def cleanup(self, part: Part) -> None:
        """After the import: delete what the provider keeps for us that counts against a quota."""


def chunks(spool: IO[bytes], size: int = 1024**2) -> Iterator[bytes]:
    """A spooled body, sent a slice at a time (never whole in memory)."""
    spool.seek(0)
    while piece := spool.read(size):
        yield piece


def checked(response: httpx.Response) -> httpx.Response:
    """A 2xx answer, else CallFailed with the provider's message (never the key)."""
    if response.is_success:
        return response
    try:
        error = response.json().get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        message = response.text[:200]
    raise CallFailed(response.status_code, str(message or response.reason_phrase))


def auth(settings: Settings, provider: str) -> dict[str, str]:
    adapter = ADAPTERS[provider]
    key = settings.api_key(provider)
    if not key:
        raise MissingApiKey(f"{adapter.API_KEY_ENV} is not set for the worker; export it to call {provider} models")
    return adapter.auth_headers(key)
