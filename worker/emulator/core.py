"""What every part of the emulator shares: its config, the error an answer raises, and the token rule.

Token counts follow one rule, `tokens(text) = max(1, ceil(len(text) / 4))`, so tests can assert exact
usage figures and costs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from aiohttp import web

THINKING_TOKENS = {"minimal": 20, "low": 40, "medium": 80, "high": 160, "xhigh": 240, "max": 320}
# The emulator stands for the providers, so it keeps its own figures rather than sharing worker.tokens'
# estimates: the same numbers today (exact costs in tests), but an estimate change must not move the "provider".
IMAGE_TOKENS = 1000


@dataclass
class EmulatorConfig:
    latency_ms: float = 0
    jitter_ms: float = 0
    error_rate: float = 0  # fraction answered 500/503/529 (Gemini: 500/503)
    rate_429: float = 0  # fraction answered 429
    retry_after: float = 1.0  # seconds sent on 429/529
    seed: int | None = None
    require_key: bool = True
    rpm_limit: int = 0  # per model: requests in any 60 s window above this get 429 (0 = no limit)
    tpm_limit: int = 0  # per model: input tokens in any 60 s window (0 = no limit)
    flex_shed_rate: float = 0  # fraction of Gemini flex calls shed (503), as the flex tier does under load
    batch_delay_s: float = 0.5  # how long a native batch job takes to process (`#emu:batch-delay` overrides)
    batch_cancel_s: float = 0.0  # how long a cancelled Anthropic batch stays `canceling`
    anthropic_batch_max_requests: int = 100_000
    anthropic_batch_max_bytes: int = 256 * 1024**2  # 413 request_too_large above it
    gemini_inline_max_bytes: int = 20 * 1024**2  # inline batchGenerateContent bodies above it are refused
    files_max_bytes: int = 2 * 1024**3  # one uploaded file


class EmuError(Exception):
    """An answer with a non-200 status; `kind` overrides the provider's error type/status name."""

    def __init__(self, status: int, message: str | None = None, kind: str | None = None,
                 details: list[dict[str, Any]] | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.details = status, message, kind, details or []
        self.retry_after = retry_after


class Disconnect(Exception):
    """Raised by the `#emu:reset` marker: the connection is dropped without an answer."""


def tokens(text: str) -> int:
    """The emulator's only token rule: about four characters per token, never zero."""
    return max(1, math.ceil(len(text) / 4))


def compact(obj: Any) -> str:
    """JSON as counted: compact separators, keys in the order sent, non-ASCII kept."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def hex_id(n: int = 12) -> str:
    """A random id, as providers give each message and request."""
    return os.urandom(n).hex()


def is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def expect(obj: dict[str, Any], where: str, **kinds: type | tuple[type, ...]) -> None:
    """Type-check optional fields, so junk gets the provider's 400 instead of crashing the emulator."""
    for name, kind in kinds.items():
        value = obj.get(name)
        if value is not None and not isinstance(value, kind):
            raise EmuError(400, f"{where}{name}: Input has the wrong type ({type(value).__name__})")


def shape_text(text: str, budget: int, stops: list[str]) -> tuple[str, str, str | None]:
    """Cut `text` at the earliest stop sequence or at `budget` tokens: (text, reason, sequence)."""
    limit = max(0, budget) * 4
    cut, seq = None, None
    for s in stops:
        i = text.find(s) if isinstance(s, str) and s else -1
        if i >= 0 and (cut is None or i < cut):
            cut, seq = i, s
    if cut is not None and cut <= limit:
        return text[:cut], "stop_sequence", seq
    if len(text) > limit:
        return text[:limit], "max_tokens", None
    return text, "end_turn", None


def thinking_text(n: int) -> str:
    """Filler thinking of about `n` tokens."""
    return ("Considering the request step by step. " * (n // 9 + 1))[: n * 4]


def retry_text(seconds: float) -> str:
    """Seconds as a header or Duration value: "2", or "0.5" when not whole."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def json_response(status: int, payload: Any, headers: dict[str, str], truncate: bool = False) -> web.Response:
    """A JSON answer; `truncate` cuts the body in half (the `#emu:malformed` marker)."""
    data = json.dumps(payload).encode()
    if truncate:
        data = data[: max(1, len(data) // 2)]
    return web.Response(status=status, body=data, headers=headers, content_type="application/json")


class Dialect(Protocol):
    """What differs between the providers around an answer (the pipeline's only provider knowledge)."""

    server_errors: tuple[int, ...]  # what a random server fault answers

    def headers(self) -> dict[str, str]:
        """Headers every answer carries (Anthropic: a request-id)."""

    def check(self, request: web.Request, config: EmulatorConfig) -> None:
        """Auth and version headers; raises EmuError as the provider would answer."""

    def model(self, body: dict[str, Any], routed: str) -> str:
        """The model the call is for: named in the body (Anthropic) or in the URL (`routed`)."""

    def prompt_tokens(self, kind: str, body: dict[str, Any]) -> int:
        """Input tokens as the usage will report them, for the emulated TPM limit."""

    def error(self, err: EmuError, retry_after: float, headers: dict[str, str]) -> web.Response:
        """The provider's error body and headers for `err`."""
