"""A local stand-in for the Anthropic Messages API and the Gemini API, for tests and benchmarks.

It answers on loopback with the providers' own wire formats (bodies, error shapes, headers), so the
httpx adapters run end to end without a network. Answers are deterministic: token counts follow one
rule, `tokens(text) = max(1, ceil(len(text) / 4))`, so tests can assert exact usage figures and
costs. It emulates what our cost math depends on: Anthropic's cache tokens reported *beside*
`input_tokens`, Gemini's cached tokens *inside* `promptTokenCount`, thinking tokens, tool calls,
Gemini 3 thought signatures, the `2026-10-21` sampling ban, and faults (random or by marker).

Test markers, found anywhere in the raw request body:
    #emu:fail=<status>            always answer <status> with the provider's error body
    #emu:fail-first=<n>:<status>  the first n byte-identical bodies fail, later ones succeed
    #emu:reset                    drop the connection without an answer
    #emu:malformed                200 with a truncated JSON body
    #emu:slow=<ms>                extra latency
    #emu:retry-after=<s>          retry-after / RetryInfo sent on 429 and 529

Handlers never block: the only waiting is `asyncio.sleep`, and state lives on the loop's thread.
"""

from __future__ import annotations

import array
import asyncio
import collections
import base64
import hashlib
import json
import logging
import math
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from . import clock
from .registry import ModelSpec, Registry

log = logging.getLogger(__name__)

ANTHROPIC_VERSIONS = ("2023-06-01", "2026-10-21")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
ANTHROPIC_FIELDS = frozenset({
    "model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k", "stop_sequences",
    "stream", "tools", "tool_choice", "metadata", "thinking", "output_config", "service_tier",
    "cache_control", "inference_geo", "container", "context_management", "mcp_servers",
})
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_IMAGE_BASE64 = 5 * 1024 * 1024  # counted on the base64 text, as Anthropic does
MAX_BREAKPOINTS = 4
TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
BLOCK_TYPES = frozenset({"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"})
ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request (emulated)"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low (emulated)"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found (emulated)"),
    409: ("conflict_error", "Conflict (emulated)"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit (emulated)"),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable (emulated)"),
    504: ("timeout_error", "Request timed out (emulated)"),
    529: ("overloaded_error", "Overloaded"),
}
GOOGLE_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    413: ("INVALID_ARGUMENT", "Request payload size exceeds the limit."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                      "https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
    529: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}
SAMPLE_FORMATS = {"date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "email": "user@example.com",
                  "uri": "https://example.com", "uuid": "00000000-0000-4000-8000-000000000000"}
THINKING_TOKENS = {"minimal": 20, "low": 40, "medium": 80, "high": 160, "xhigh": 240, "max": 320}
EMBED_DIMS = 3072
IMAGE_TOKENS = 1000
IMPLICIT_CACHE_MIN = 256
LOOKBACK_BLOCKS = 20  # how far back Anthropic checks for an earlier cache hit
MEMORY_CAP = 200_000  # cache/fail-first entries kept before forgetting (long benchmarks)
MARKER_RE = re.compile(rb"#emu:(fail-first|fail|reset|malformed|slow|retry-after)(?:=([0-9.:]+))?")


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


class EmuError(Exception):
    """An answer with a non-200 status; `kind` overrides the provider's error type/status name."""

    def __init__(self, status: int, message: str | None = None, kind: str | None = None,
                 details: list[dict[str, Any]] | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.details = status, message, kind, details or []
        self.retry_after = retry_after


class _Disconnect(Exception):
    """Raised by the `#emu:reset` marker: the connection is dropped without an answer."""


def tokens(text: str) -> int:
    """The emulator's only token rule: about four characters per token, never zero."""
    return max(1, math.ceil(len(text) / 4))


def _compact(obj: Any) -> str:
    """JSON as counted: compact separators, keys in the order sent, non-ASCII kept."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _hex(n: int = 12) -> str:
    return os.urandom(n).hex()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _expect(obj: dict[str, Any], where: str, **kinds: type | tuple[type, ...]) -> None:
    """Type-check optional fields, so junk gets the provider's 400 instead of crashing the emulator."""
    for name, kind in kinds.items():
        value = obj.get(name)
        if value is not None and not isinstance(value, kind):
            raise EmuError(400, f"{where}{name}: Input has the wrong type ({type(value).__name__})")


# -- sample values from a JSON schema (tool inputs, structured output) ------------------------------
def sample_from_schema(schema: Any, root: Any = None, required_only: bool = False, depth: int = 0) -> Any:
    """A value that validates against a (simple) JSON / OpenAPI schema: enum/const first, then by type.

    Tool inputs fill only `required` properties (what a terse model does); structured output fills
    them all, which also satisfies strict schemas (every property required, no extras).
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 8:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return sample_from_schema(target, root, required_only, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample_from_schema(schema[key][0], root, required_only, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower()
    if kind == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        names = [n for n in required if isinstance(n, str)] if required_only else list(props)
        return {n: sample_from_schema(props.get(n, {}), root, required_only, depth + 1) for n in names}
    if kind == "array":
        n = min(max(1, schema["minItems"]), 16) if _is_int(schema.get("minItems")) else 1
        return [sample_from_schema(schema.get("items", {}), root, required_only, depth + 1) for _ in range(n)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", 1)
        low = low if isinstance(low, (int, float)) and not isinstance(low, bool) else 1
        return int(low) if kind == "integer" else float(low) + 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = SAMPLE_FORMATS.get(schema.get("format"), "sample")
    if _is_int(schema.get("minLength")):
        text = text.ljust(min(schema["minLength"], 4096), "x")
    return text[: schema["maxLength"]] if _is_int(schema.get("maxLength")) else text


def _shape_text(text: str, budget: int, stops: list[str]) -> tuple[str, str, str | None]:
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


def _thinking_text(n: int) -> str:
    return ("Considering the request step by step. " * (n // 9 + 1))[: n * 4]


# -- markers and shared state -----------------------------------------------------------------------
@dataclass
class Markers:
    fail: int | None = None
    fail_first: tuple[int, int] | None = None
    reset: bool = False
    malformed: bool = False
    slow_ms: float = 0
    retry_after: float | None = None


def parse_markers(raw: bytes) -> Markers | None:
    """Markers in the raw body (JSON escaping leaves them intact); None for the common, unmarked case."""
    if b"#emu:" not in raw:
        return None
    m = Markers()
    for name, value in MARKER_RE.findall(raw):
        v = value.decode()
        try:
            if name == b"fail":
                m.fail = _error_status(v)
            elif name == b"fail-first":
                n, status = v.split(":")
                m.fail_first = (int(n), _error_status(status))
            elif name == b"slow":
                m.slow_ms = float(v)
            elif name == b"retry-after":
                m.retry_after = float(v)
            else:
                setattr(m, name.decode(), True)
        except ValueError:
            continue  # a malformed marker is ignored, like any other text
    return m


def _error_status(text: str) -> int:
    status = int(text)
    if not 400 <= status <= 599:
        raise ValueError(text)
    return status


class _State:
    """Everything the handlers share; touched only from the server's event loop."""

    def __init__(self, config: EmulatorConfig, registry: Registry | None) -> None:
        self.config, self.registry = config, registry
        self.rng = random.Random(config.seed)
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.by_path: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.fail_first: dict[bytes, int] = {}
        self.cache_seen: set[bytes] = set()
        self.system_seen: set[bytes] = set()
        self.windows: dict[str, collections.deque[tuple[float, int]]] = {}
        self.limited = 0

    def record(self, kind: str, status: str, model: str | None) -> None:
        self.calls += 1
        self.by_path[kind] += 1
        self.by_status[status] += 1
        self.by_model[model or "unknown"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"calls": self.calls, "by_path": dict(self.by_path), "by_status": dict(self.by_status),
                "by_model": dict(self.by_model), "rate_limited": self.limited}

    def admit(self, model: str, tokens_in: int) -> None:
        """The provider's per-model RPM/TPM limit over a sliding 60 s window: 429 above it."""
        cfg = self.config
        if not (cfg.rpm_limit or cfg.tpm_limit):
            return
        now = time.monotonic()
        window = self.windows.setdefault(model, collections.deque())
        while window and now - window[0][0] >= 60:
            window.popleft()
        used = sum(t for _, t in window)
        if (cfg.rpm_limit and len(window) + 1 > cfg.rpm_limit) or (cfg.tpm_limit and used + tokens_in > cfg.tpm_limit):
            self.limited += 1
            wait = 60 - (now - window[0][0]) if window else 1.0
            raise EmuError(429, f"rate limit exceeded for {model} (emulated {cfg.rpm_limit} RPM / {cfg.tpm_limit} TPM)",
                           retry_after=max(round(wait, 3), 0.001))
        window.append((now, tokens_in))

    def remember(self, memory: set[bytes], key: bytes) -> None:
        if len(memory) >= MEMORY_CAP:
            memory.clear()
        memory.add(key)

    def spec(self, provider: str, model: str) -> ModelSpec | None:
        return self.registry.by_upstream(provider, model) if self.registry else None

    def check_retired(self, provider: str, model: str, message: str) -> None:
        spec = self.spec(provider, model)
        if spec is not None and spec.is_retired(clock.today()):
            raise EmuError(404, message)


STATE = web.AppKey("emulator_state", _State)


# -- the provider dialects: auth and error bodies ---------------------------------------------------
def _retry_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class _Anthropic:
    """Anthropic's headers (one key header, anthropic-version) and error body."""

    @staticmethod
    def check(request: web.Request, config: EmulatorConfig) -> None:
        key, bearer = request.headers.get("x-api-key"), request.headers.get("authorization")
        if key and bearer:
            raise EmuError(400, "send exactly one of x-api-key and Authorization, not both")
        if config.require_key and not key and not (bearer or "").lower().startswith("bearer "):
            raise EmuError(401, "x-api-key header is required")
        version = request.headers.get("anthropic-version")
        if version is None:
            raise EmuError(400, "anthropic-version: header is required")
        if version not in ANTHROPIC_VERSIONS:
            raise EmuError(400, f"anthropic-version: invalid value {version!r}; use {' or '.join(ANTHROPIC_VERSIONS)}")

    @staticmethod
    def error(err: EmuError, retry_after: float, headers: dict[str, str]) -> web.Response:
        kind, default = ANTHROPIC_ERRORS.get(err.status, ("api_error", "Error (emulated)"))
        body = {"type": "error", "error": {"type": err.kind or kind, "message": err.message or default},
                "request_id": headers["request-id"]}
        if err.status in (429, 529):
            headers["retry-after"] = _retry_text(retry_after)
            headers["retry-after-ms"] = str(round(retry_after * 1000))
        return _json(err.status, body, headers)


class _Google:
    """Gemini's key check and google.rpc.Status error body (RetryInfo on 429)."""

    @staticmethod
    def check(request: web.Request, config: EmulatorConfig) -> None:
        if config.require_key and not (request.headers.get("x-goog-api-key") or request.query.get("key")):
            raise EmuError(400, "API key not valid. Please pass a valid API key.", details=[{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])

    @staticmethod
    def error(err: EmuError, retry_after: float, headers: dict[str, str]) -> web.Response:
        status, default = GOOGLE_ERRORS.get(err.status, ("UNKNOWN", "Unknown error (emulated)"))
        details = list(err.details)
        if err.status == 429:
            details += [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{_retry_text(retry_after)}s"},
            ]
        body = {"error": {"code": err.status, "message": err.message or default,
                          "status": err.kind or status, "details": details}}
        return _json(err.status, body, headers)


Dialect = type[_Anthropic] | type[_Google]
Answer = Callable[[_State, web.Request, dict[str, Any], str], dict[str, Any]]


def _json(status: int, payload: Any, headers: dict[str, str], truncate: bool = False) -> web.Response:
    data = json.dumps(payload).encode()
    if truncate:
        data = data[: max(1, len(data) // 2)]
    return web.Response(status=status, body=data, headers=headers, content_type="application/json")


# -- the request pipeline shared by every endpoint -------------------------------------------------
async def _serve_call(
    request: web.Request, dialect: Dialect, kind: str, model: str, answer: Answer
) -> web.StreamResponse:
    """Latency, auth, markers, random faults, then the endpoint's answer; every call is counted."""
    state = request.app[STATE]
    cfg = state.config
    headers = {"request-id": f"req_{_hex()}"} if dialect is _Anthropic else {}
    status = "500"
    marks: Markers | None = None
    try:
        raw = await request.read()
        marks = parse_markers(raw)
        await _delay(state, marks)
        dialect.check(request, cfg)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise EmuError(400, "There was an error parsing the body (invalid JSON)") from None
        if not isinstance(body, dict):
            raise EmuError(400, "The request body must be a JSON object")
        if dialect is _Anthropic and isinstance(body.get("model"), str):
            model = body["model"]
        if marks is not None:
            _apply_markers(state, request, raw, marks)
        _random_fault(state, dialect)
        state.admit(model, _prompt_tokens(dialect, kind, body))
        payload = answer(state, request, body, model)
        status = "200"
        return _json(200, payload, headers, truncate=bool(marks and marks.malformed))
    except EmuError as err:
        status = str(err.status)
        retry = marks.retry_after if marks and marks.retry_after is not None else cfg.retry_after
        if err.retry_after is not None:
            retry = err.retry_after
        return dialect.error(err, retry, headers)
    except _Disconnect:
        status = "reset"
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never reaches the client: the transport is closed
    except Exception as exc:  # a bug here must still look like a provider 500, and be visible
        log.exception("emulator failed on %s", request.path)
        return dialect.error(EmuError(500, f"emulator error: {exc!r}"), cfg.retry_after, headers)
    finally:
        state.record(kind, status, model)


async def _delay(state: _State, marks: Markers | None) -> None:
    cfg = state.config
    ms = cfg.latency_ms + (state.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms) if cfg.jitter_ms else 0)
    ms = max(0.0, ms) + (marks.slow_ms if marks else 0)
    if ms > 0:
        await asyncio.sleep(ms / 1000)


def _apply_markers(state: _State, request: web.Request, raw: bytes, marks: Markers) -> None:
    if marks.reset:
        raise _Disconnect()
    if marks.fail is not None:
        raise EmuError(marks.fail)
    if marks.fail_first is not None:
        n, status = marks.fail_first
        key = hashlib.sha256(request.path.encode() + b"\0" + raw).digest()
        seen = state.fail_first.get(key, 0)
        if seen < n:
            if len(state.fail_first) >= MEMORY_CAP:
                state.fail_first.clear()
            state.fail_first[key] = seen + 1
            raise EmuError(status)


def _prompt_tokens(dialect: Dialect, kind: str, body: dict[str, Any]) -> int:
    """Input tokens as the usage will report them, for the emulated TPM limit."""
    try:
        if dialect is _Anthropic:
            return sum(units for units, _, _ in _prompt_units(body))
        return _gemini_prompt(body) if kind == "generateContent" else 0
    except Exception:  # a malformed body is refused later with the provider's own 400
        return 0


def _random_fault(state: _State, dialect: Dialect) -> None:
    """One draw per call so a seed reproduces the exact fault sequence."""
    cfg = state.config
    if not (cfg.rate_429 or cfg.error_rate):
        return
    r = state.rng.random()
    if r < cfg.rate_429:
        raise EmuError(429)
    if r < cfg.rate_429 + cfg.error_rate:
        raise EmuError(state.rng.choice((500, 503, 529) if dialect is _Anthropic else (500, 503)))


# -- Anthropic Messages -----------------------------------------------------------------------------
def _validate_messages(body: dict[str, Any], version: str) -> None:
    """The checks an adapter is most likely to trip, with Anthropic's `path: problem` messages."""
    for field in body:
        if field not in ANTHROPIC_FIELDS:
            raise EmuError(400, f"{field}: Extra inputs are not permitted")
    if version == "2026-10-21":
        for field in SAMPLING_FIELDS:
            if field in body:
                raise EmuError(400, f"{field}: Extra inputs are not permitted")
    if body.get("stream"):
        raise EmuError(400, "stream: streaming is not supported by the emulator")
    _expect(body, "", system=(str, list), tools=list, tool_choice=dict, thinking=dict, output_config=dict,
            stop_sequences=list, metadata=dict, cache_control=dict)
    _expect(body.get("output_config") or {}, "output_config.", format=dict, effort=str)
    _expect((body.get("output_config") or {}).get("format") or {}, "output_config.format.", schema=dict)
    if not all(isinstance(x, str) for x in body.get("stop_sequences") or []):
        raise EmuError(400, "stop_sequences: Input should be a list of strings")
    for stop in body.get("stop_sequences") or []:
        if not stop:
            raise EmuError(400, "stop_sequences: each stop sequence must be non-empty")
        if not stop.strip():
            raise EmuError(400, "stop_sequences: each stop sequence must contain non-whitespace")
    fmt = (body.get("output_config") or {}).get("format") or {}
    if fmt.get("schema") is not None and not _closed_objects(fmt["schema"]):
        raise EmuError(400, "output_config.format.schema: For 'object' type, 'additionalProperties' must be "
                       "explicitly set to false")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise EmuError(400, "model: Field required")
    if not _is_int(body.get("max_tokens")) or body["max_tokens"] < 1:
        raise EmuError(400, "max_tokens: Field required (an integer >= 1)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EmuError(400, "messages: Field required (a non-empty list)")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _check_blocks(system, "system", "system", version)
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("user", "assistant", "system"):
            raise EmuError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if role == "system" and i == 0:
            raise EmuError(400, "messages.0.role: a system message may not come first; use the top-level system")
        content = msg.get("content")
        if isinstance(content, str):
            if not content and not (role == "assistant" and i == len(messages) - 1):
                raise EmuError(400, "messages: text content blocks must be non-empty")
        else:
            _check_blocks(content, f"messages.{i}.content", role, version)
    _check_tool_pairs(messages)
    _check_tools(body)
    _check_breakpoints(body)
    thinking = body.get("thinking") or {}
    if thinking and thinking.get("type") not in ("enabled", "disabled", "adaptive"):
        raise EmuError(400, "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not _is_int(budget) or budget < 1024 or budget >= body["max_tokens"]:
            raise EmuError(400, "thinking.budget_tokens: must be >= 1024 and less than max_tokens")
    forced = (body.get("tool_choice") or {}).get("type") in ("any", "tool")
    if forced and thinking.get("type") in ("enabled", "adaptive"):
        raise EmuError(400, "Thinking may not be enabled when tool_choice forces tool use.")


def _check_blocks(blocks: Any, where: str, role: str, version: str) -> None:
    if not isinstance(blocks, list):
        raise EmuError(400, f"{where}: Input should be a valid string or list of content blocks")
    for j, b in enumerate(blocks):
        at = f"{where}.{j}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind not in BLOCK_TYPES or (where == "system" and kind != "text"):
            raise EmuError(400, f"{at}.type: Input tag {kind!r} found using 'type' does not match the expected tags")
        if kind == "text":
            if not isinstance(b.get("text"), str) or not b["text"]:
                raise EmuError(400, f"{at}.text: text content blocks must be non-empty")
            if version == "2026-10-21" and role == "user" and b.get("citations"):
                raise EmuError(400, f"{at}.citations: citations are not accepted on user text blocks")
        elif kind in ("image", "document"):
            src = b.get("source") if isinstance(b.get("source"), dict) else {}
            ok = ((src.get("type") == "base64" and src.get("media_type") and src.get("data"))
                  or (src.get("type") == "url" and src.get("url"))
                  or (kind == "document" and src.get("type") in ("text", "file", "content")))
            if not ok:
                raise EmuError(400, f"{at}.source: expected {{type: base64, media_type, data}} or {{type: url, url}}")
            if kind == "image" and src.get("type") == "base64":
                _check_image_source(src, at)
            if kind == "document" and role == "assistant" and version == "2026-10-21":
                raise EmuError(400, f"{at}: document blocks are not accepted in assistant messages")
        elif kind == "tool_use" and not (isinstance(b.get("id"), str) and isinstance(b.get("name"), str)
                                         and isinstance(b.get("input"), dict)):
            raise EmuError(400, f"{at}: tool_use blocks need id, name and an input object")
        elif kind == "tool_use" and not TOOL_ID.fullmatch(b["id"]):
            raise EmuError(400, f"{at}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        elif kind == "tool_result" and not isinstance(b.get("tool_use_id"), str):
            raise EmuError(400, f"{at}.tool_use_id: Field required")
        elif kind == "tool_result" and not isinstance(b.get("content", ""), (str, list)):
            raise EmuError(400, f"{at}.content: Input should be a valid string or list of content blocks")
        elif kind == "tool_result" and isinstance(b.get("content"), list):
            _check_blocks(b["content"], f"{at}.content", role, version)
        elif kind == "thinking" and not (isinstance(b.get("thinking"), str) and isinstance(b.get("signature"), str)):
            raise EmuError(400, f"{at}: thinking blocks need thinking and signature")
        elif kind == "redacted_thinking" and not isinstance(b.get("data"), str):
            raise EmuError(400, f"{at}.data: Field required")
        _check_cache_control(b, at)


def _check_cache_control(block: dict[str, Any], at: str) -> None:
    """CacheControlEphemeral: exactly {type: ephemeral, ttl?: 5m|1h}; extra keys are refused like any extra input."""
    cc = block.get("cache_control")
    valid = (isinstance(cc, dict) and cc.get("type") == "ephemeral" and set(cc) <= {"type", "ttl"}
             and cc.get("ttl", "5m") in ("5m", "1h"))
    if cc is not None and not valid:
        raise EmuError(400, f"{at}.cache_control: expected {{type: ephemeral, ttl?: 5m|1h}}, got {_compact(cc)}")


def _check_image_source(src: dict[str, Any], at: str) -> None:
    if src["media_type"] not in IMAGE_MEDIA_TYPES:
        raise EmuError(400, f"{at}.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
                       "'image/webp'")
    size = len(src["data"]) if isinstance(src["data"], str) else 0
    if size > MAX_IMAGE_BASE64:
        raise EmuError(400, f"{at}.source.base64: image exceeds 5 MB maximum: {size} bytes > {MAX_IMAGE_BASE64} bytes")


def _closed_objects(schema: Any) -> bool:
    """Structured output takes an object schema only with additionalProperties: false, at every depth."""
    if isinstance(schema, list):
        return all(_closed_objects(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    kind = schema.get("type")
    is_object = (kind == "object" or (isinstance(kind, list) and "object" in kind)
                 or ("properties" in schema and not kind))
    if is_object and schema.get("additionalProperties") is not False:
        return False
    subschemas = [schema.get(k) for k in ("items", "anyOf", "oneOf", "allOf", "prefixItems")]
    subschemas += [list(schema[k].values()) for k in ("properties", "$defs", "definitions")
                   if isinstance(schema.get(k), dict)]
    return all(_closed_objects(s) for s in subschemas)


def _check_breakpoints(body: dict[str, Any]) -> None:
    """At most 4 cache_control blocks; ttls may only shrink in reading order (tools, system, messages)."""
    marked: list[tuple[str, str]] = []  # (where, ttl)

    def visit(blocks: Any, where: str) -> None:
        for j, b in enumerate(blocks if isinstance(blocks, list) else []):
            if isinstance(b, dict) and isinstance(b.get("cache_control"), dict):
                marked.append((f"{where}.{j}", b["cache_control"].get("ttl", "5m")))
            if isinstance(b, dict) and isinstance(b.get("content"), list):
                visit(b["content"], f"{where}.{j}.content")

    visit(body.get("tools"), "tools")
    visit(body.get("system"), "system")
    for i, msg in enumerate(body["messages"]):
        visit(msg.get("content"), f"messages.{i}.content")
    if len(marked) > MAX_BREAKPOINTS:
        raise EmuError(400, f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                       f"Found {len(marked)}.")
    seen_short = False
    for where, ttl in marked:
        if ttl == "1h" and seen_short:
            raise EmuError(400, f"{where}.cache_control.ttl: a ttl='1h' cache_control block must not come after a "
                           "ttl='5m' cache_control block. Note that blocks are processed in the following order: "
                           "`tools`, `system`, `messages`.")
        seen_short = seen_short or ttl == "5m"


def _check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """Every tool_use needs a tool_result in the next message, and every tool_result a tool_use before it."""
    def ids(msg: dict[str, Any] | None, kind: str, key: str) -> list[str]:
        content = (msg or {}).get("content")
        return [b[key] for b in content if b.get("type") == kind] if isinstance(content, list) else []

    for i, msg in enumerate(messages):
        prev = messages[i - 1] if i else None
        if msg["role"] == "user":
            wanted = set(ids(prev, "tool_use", "id")) if prev and prev["role"] == "assistant" else set()
            stray = [t for t in ids(msg, "tool_result", "tool_use_id") if t not in wanted]
            if stray:
                raise EmuError(400, f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                               f"{stray[0]}. Each `tool_result` block must have a corresponding `tool_use` block "
                               "in the previous message.")
        elif msg["role"] == "assistant" and i + 1 < len(messages):
            answered = set(ids(messages[i + 1], "tool_result", "tool_use_id"))
            missing = [t for t in ids(msg, "tool_use", "id") if t not in answered]
            if missing:
                raise EmuError(400, f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                               f"immediately after: {missing[0]}. Each `tool_use` block must have a corresponding "
                               "`tool_result` block in the next message.")


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise EmuError(400, "tools: Input should be a valid list")
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise EmuError(400, f"tools.{k}.name: Field required")
        _check_cache_control(tool, f"tools.{k}")
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
            raise EmuError(400, f"tools.{k}.input_schema: Field required")
        kind = (tool.get("input_schema") or {}).get("type")
        if tool.get("type") in (None, "custom") and kind != "object":
            problem = "Field required" if kind is None else "Input should be 'object'"
            raise EmuError(400, f"tools.{k}.custom.input_schema.type: {problem}")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise EmuError(400, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if choice["type"] == "tool" and not any(t["name"] == choice.get("name") for t in tools):
            raise EmuError(400, f"tool_choice.name: no tool named {choice.get('name')!r} in tools")


def _block_tokens(b: dict[str, Any]) -> int:
    kind = b.get("type")
    if kind == "text":
        return tokens(b["text"])
    if kind in ("image", "document"):
        return IMAGE_TOKENS
    if kind == "tool_use":
        return tokens(_compact(b["input"]))
    if kind == "tool_result":
        content = b.get("content")
        if isinstance(content, str):
            return tokens(content)
        return sum(_block_tokens(x) for x in content or [] if isinstance(x, dict))
    return 0  # earlier thinking is stripped from the context, as Anthropic does


def _ttl(block: Any) -> str | None:
    cc = block.get("cache_control") if isinstance(block, dict) else None
    return cc.get("ttl", "5m") if isinstance(cc, dict) else None


def _prompt_units(body: dict[str, Any]) -> list[tuple[int, str | None, Any]]:
    """The prompt in Anthropic's cache order (tools, system, messages): (tokens, ttl, identity)."""
    units: list[tuple[int, str | None, Any]] = []
    for tool in body.get("tools") or []:
        plain = {k: v for k, v in tool.items() if k != "cache_control"}
        units.append((tokens(_compact(plain)), _ttl(tool), plain))
    system = body.get("system")
    turns = [("system", system)] if system else []
    for role, content in turns + [(m["role"], m["content"]) for m in body["messages"]]:
        for b in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            units.append((_block_tokens(b), _ttl(b), [role, b]))  # a string hashes like its text block
    if isinstance(body.get("cache_control"), dict) and units:  # top-level automatic breakpoint
        n, _, ident = units[-1]
        units[-1] = (n, body["cache_control"].get("ttl", "5m"), ident)
    return units


def _cache_usage(state: _State, model: str, units: list[tuple[int, str | None, Any]]) -> tuple[int, int, int]:
    """(write_5m, write_1h, read), as Anthropic's prefix cache reports them.

    Each breakpoint looks back up to 20 blocks for the longest prefix cached before (so a multi-turn
    chat that moves its breakpoint forward reads the earlier turns); that prefix is read and the rest
    up to the last breakpoint is written, each segment with the ttl of the breakpoint that closes it.
    """
    h = hashlib.sha256(model.encode())
    digests: list[bytes] = []
    totals: list[int] = []
    for n, _, ident in units:
        if isinstance(ident, list) and isinstance(ident[1], dict):
            ident = [ident[0], {k: v for k, v in ident[1].items() if k != "cache_control"}]
        h.update(_compact(ident).encode())
        digests.append(h.copy().digest())
        totals.append(n + (totals[-1] if totals else 0))
    breakpoints = [i for i, u in enumerate(units) if u[1]]
    window = {p for b in breakpoints for p in range(max(0, b - LOOKBACK_BLOCKS), b + 1)}
    hit = max((p for p in window if digests[p] in state.cache_seen), default=-1)
    writes = {"5m": 0, "1h": 0}
    done = hit
    for b in breakpoints:
        if b > hit:
            writes[units[b][1] or "5m"] += totals[b] - (totals[done] if done >= 0 else 0)
            state.remember(state.cache_seen, digests[b])
            done = b
    return writes["5m"], writes["1h"], totals[hit] if hit >= 0 else 0


def _last_user_text(messages: list[dict[str, Any]]) -> tuple[str, bool]:
    """The last user turn's text and whether it carries tool results."""
    for msg in reversed(messages):
        if msg["role"] != "user":
            continue
        content = msg["content"]
        if isinstance(content, str):
            return content, False
        text = " ".join(b["text"] for b in content if b.get("type") == "text")
        return text, any(b.get("type") == "tool_result" for b in content)
    return "", False


def _anthropic_thinking(body: dict[str, Any]) -> int:
    thinking = body.get("thinking") or {}
    effort = (body.get("output_config") or {}).get("effort")
    if thinking.get("type") == "enabled":
        return min(thinking["budget_tokens"], 120)
    if thinking.get("type") == "adaptive" or effort:
        return THINKING_TOKENS.get(effort or "high", 160)
    return 0


def answer_messages(state: _State, request: web.Request, body: dict[str, Any], model: str) -> dict[str, Any]:
    _validate_messages(body, request.headers["anthropic-version"])
    state.check_retired("anthropic", model, f"model: {model}")
    units = _prompt_units(body)
    write_5m, write_1h, read = _cache_usage(state, model, units) if any(u[1] for u in units) else (0, 0, 0)
    prompt = sum(u[0] for u in units)
    max_tokens = body["max_tokens"]
    thinking = min(_anthropic_thinking(body), max_tokens)
    content: list[dict[str, Any]] = []
    if thinking:
        shown = "" if (body.get("thinking") or {}).get("display") == "omitted" else _thinking_text(thinking)
        content.append({"type": "thinking", "thinking": shown, "signature": f"sig_{_hex(16)}"})
    user_text, has_results = _last_user_text(body["messages"])
    tools = [t for t in body.get("tools") or [] if isinstance(t.get("input_schema"), dict)]
    choice = body.get("tool_choice") or {"type": "auto"}
    stop_sequence = None
    if tools and choice["type"] != "none" and not has_results:
        tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
        args = sample_from_schema(tool["input_schema"], required_only=True)
        content.append({"type": "tool_use", "id": f"toolu_{_hex()}", "name": tool["name"], "input": args})
        out, stop_reason = tokens(_compact(args)), "tool_use"
    else:
        fmt = (body.get("output_config") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            text = json.dumps(sample_from_schema(fmt.get("schema") or {}))
        else:
            about = f" to: {user_text[:60]}" if user_text else " after tool results" if has_results else "."
            text = f"Emulated reply from {model}{about}"
        text, stop_reason, stop_sequence = _shape_text(text, max_tokens - thinking, body.get("stop_sequences") or [])
        content.append({"type": "text", "text": text})
        out = tokens(text) if text else 0
    return {
        "id": f"msg_{_hex()}", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": prompt - write_5m - write_1h - read, "output_tokens": out + thinking,
            "cache_creation_input_tokens": write_5m + write_1h, "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
            "output_tokens_details": {"thinking_tokens": thinking}, "service_tier": "standard",
        },
    }


# -- Gemini -----------------------------------------------------------------------------------------
PART_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
               "codeExecutionResult")


def _signed_model(model: str) -> bool:
    """Gemini 3+ models issue and demand thought signatures (and refuse penalties)."""
    return model.startswith(("gemini-3", "gemini-4"))


def _text_parts(parts: Any, allow_empty: bool = False) -> bool:
    ok = isinstance(parts, list) and (allow_empty or bool(parts))
    return ok and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts)


def _check_contents(contents: Any, where: str = "GenerateContentRequest") -> None:
    if not isinstance(contents, list) or not contents:
        raise EmuError(400, f"* {where}.contents: contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
            raise EmuError(400, "Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise EmuError(400, f"* {where}.contents[{i}].parts: contents.parts must not be empty.")
        for j, part in enumerate(parts):
            present = [f for f in PART_FIELDS if f in part] if isinstance(part, dict) else []
            if len(present) != 1 or part[present[0]] is None:
                raise EmuError(400, f"* {where}.contents[{i}].parts[{j}].data: required oneof field 'data' "
                               "must have one initialized field")
            _expect(part, f"Invalid JSON payload received. contents[{i}].parts[{j}].", text=str, functionCall=dict,
                    functionResponse=dict, inlineData=dict, fileData=dict)
            call = part.get("functionCall") or part.get("functionResponse") or {}
            payload = call.get("args") or call.get("response") or {}
            if not isinstance(call.get("name", ""), str) or not isinstance(payload, dict):
                raise EmuError(400, f"* {where}.contents[{i}].parts[{j}]: function parts need a name and an object")


def _validate_generate(body: dict[str, Any], model: str) -> None:
    _check_contents(body.get("contents"))
    for name in ("systemInstruction", "toolConfig", "generationConfig"):
        if not isinstance(body.get(name) or {}, dict):
            raise EmuError(400, f"Invalid JSON payload received. Invalid value at '{name}': expected an object")
    system_parts = (body.get("systemInstruction") or {}).get("parts") or []
    if not _text_parts(system_parts, allow_empty=True):
        raise EmuError(400, "* GenerateContentRequest.system_instruction.parts: expected text parts")
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not isinstance(fcc, dict) or not isinstance(fcc.get("allowedFunctionNames") or [], list):
        raise EmuError(400, "Invalid JSON payload received. Invalid value at 'tool_config.function_calling_config'")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise EmuError(400, "Invalid JSON payload received. Invalid value at 'tools': expected a list of Tool")
    for t in tools:
        decls = t.get("functionDeclarations") or []
        named = isinstance(decls, list) and all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in decls)
        if not named:
            raise EmuError(400, "* GenerateContentRequest.tools.function_declarations: each needs a name")
    gc = body.get("generationConfig") or {}
    _expect(gc, "Invalid JSON payload received. generationConfig.", thinkingConfig=dict, stopSequences=list,
            responseMimeType=str, responseJsonSchema=dict, responseSchema=dict, maxOutputTokens=int)
    if not all(isinstance(x, str) for x in gc.get("stopSequences") or []):
        raise EmuError(400, "Invalid JSON payload received. generationConfig.stopSequences: expected strings")
    tc = gc.get("thinkingConfig") or {}
    if tc.get("thinkingLevel") is not None and tc.get("thinkingBudget") is not None:
        raise EmuError(400, "Unable to submit request because thinking_budget and thinking_level are not "
                       "supported together.")
    level = tc.get("thinkingLevel")
    if level is not None and str(level).lower() not in ("minimal", "low", "medium", "high"):
        raise EmuError(400, f"Invalid value at 'generation_config.thinking_config.thinking_level' ({level!r})")
    if not _signed_model(model):
        return
    for name in ("presencePenalty", "frequencyPenalty"):
        if name in gc:
            raise EmuError(400, f"{name} is not supported for models/{model}.")
    for i, content in enumerate(body["contents"]):
        if content.get("role") != "model":
            continue
        # Google signs only the first functionCall of a step (parallel calls carry one signature).
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if first is not None and not first.get("thoughtSignature"):
            name = first["functionCall"].get("name")
            raise EmuError(400, "Function call is missing a thought_signature in functionCall parts. This is "
                           "required for tools to work correctly. Additional data, function call "
                           f"`default_api:{name}`, position {i + 1}. Please refer to "
                           "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.")


def _part_tokens(part: dict[str, Any]) -> int:
    if "text" in part:
        return tokens(part["text"])
    if "inlineData" in part or "fileData" in part:
        return IMAGE_TOKENS
    if "functionCall" in part:
        return tokens(_compact(part["functionCall"].get("args") or {}))
    if "functionResponse" in part:
        return tokens(_compact(part["functionResponse"].get("response") or {}))
    return tokens(_compact(part))


def _system_text(body: dict[str, Any]) -> str:
    system = body.get("systemInstruction") or {}
    return "".join(p.get("text", "") for p in system.get("parts") or [] if isinstance(p, dict))


def _gemini_prompt(body: dict[str, Any]) -> int:
    system = body.get("systemInstruction") or {}
    n = sum(_part_tokens(p) for p in system.get("parts") or [])
    n += sum(_part_tokens(p) for c in body.get("contents") or [] for p in c["parts"])
    for tool in body.get("tools") or []:
        n += sum(tokens(_compact(d)) for d in tool.get("functionDeclarations") or [])
    return n


def _gemini_thinking(tc: dict[str, Any]) -> int:
    level, budget = tc.get("thinkingLevel"), tc.get("thinkingBudget")
    if level is not None:
        return THINKING_TOKENS[str(level).lower()]
    if not _is_int(budget) or budget == 0:
        return 0
    return 120 if budget < 0 else min(budget, 120)


def _gemini_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The declaration to call, or None when the model should answer in text."""
    decls = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not decls or fcc.get("mode") == "NONE":
        return None
    last_user = next((c for c in reversed(body["contents"]) if c.get("role", "user") == "user"), {})
    if any("functionResponse" in p for p in last_user.get("parts", [])):
        return None
    allowed = fcc.get("allowedFunctionNames") or []
    return next((d for d in decls if d.get("name") in allowed), decls[0])


def answer_generate(state: _State, request: web.Request, body: dict[str, Any], model: str) -> dict[str, Any]:
    version = request.match_info["version"]
    _validate_generate(body, model)
    state.check_retired("google", model, f"models/{model} is not found for API version {version}, or is not "
                        "supported for generateContent. Call ListModels to see the list of available models "
                        "and their supported methods.")
    spec = state.spec("google", model)
    served = spec.lifecycle.routed_to if spec and spec.lifecycle.routed_to else model
    gc = body.get("generationConfig") or {}
    prompt = _gemini_prompt(body)
    cached = _implicit_cache(state, model, _system_text(body))
    tc = gc.get("thinkingConfig") or {}
    budget = gc.get("maxOutputTokens") if _is_int(gc.get("maxOutputTokens")) else 65536
    thoughts = min(_gemini_thinking(tc), budget)
    parts: list[dict[str, Any]] = []
    if thoughts and tc.get("includeThoughts"):
        parts.append({"text": _thinking_text(thoughts), "thought": True})
    decl = _gemini_tool(body)
    finish = "STOP"
    if decl is not None:
        args = sample_from_schema(decl.get("parametersJsonSchema") or decl.get("parameters") or {}, required_only=True)
        part: dict[str, Any] = {"functionCall": {"name": decl["name"], "args": args}}
        if _signed_model(model):
            part["thoughtSignature"] = base64.b64encode(os.urandom(24)).decode()
        parts.append(part)
        out = tokens(_compact(args))
    else:
        text, reason, _ = _shape_text(_gemini_text(body, gc, model), budget - thoughts, gc.get("stopSequences") or [])
        finish = "MAX_TOKENS" if reason == "max_tokens" else "STOP"
        parts.append({"text": text})
        out = tokens(text) if text else 0
    usage = {"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out + thoughts}
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage, "modelVersion": served, "responseId": _hex()}


def _implicit_cache(state: _State, model: str, system: str) -> int:
    """A long systemInstruction seen before is a hit: its tokens come back as cachedContentTokenCount."""
    if not system or tokens(system) < IMPLICIT_CACHE_MIN:
        return 0
    key = hashlib.sha256(f"{model}\0{system}".encode()).digest()
    if key in state.system_seen:
        return tokens(system)
    state.remember(state.system_seen, key)
    return 0


def _gemini_text(body: dict[str, Any], gc: dict[str, Any], model: str) -> str:
    schema = gc.get("responseJsonSchema") or gc.get("responseSchema")
    if gc.get("responseMimeType") == "text/x.enum" and isinstance(schema, dict):
        return str(sample_from_schema(schema))
    last_user = next((c for c in reversed(body["contents"]) if c.get("role", "user") == "user"), {})
    user_text = " ".join(p["text"] for p in last_user.get("parts", []) if "text" in p)
    has_results = any("functionResponse" in p for p in last_user.get("parts", []))
    about = f" to: {user_text[:60]}" if user_text else " after tool results" if has_results else "."
    text = f"Emulated reply from {model}{about}"
    if gc.get("responseMimeType") == "application/json":
        return json.dumps(sample_from_schema(schema)) if isinstance(schema, dict) else json.dumps({"reply": text})
    return text


def answer_count_tokens(state: _State, request: web.Request, body: dict[str, Any], model: str) -> dict[str, Any]:
    state.check_retired("google", model, f"models/{model} is not found for API version {request.match_info['version']}")
    inner = body.get("generateContentRequest")
    if isinstance(inner, dict):
        _check_contents(inner.get("contents"))
        return {"totalTokens": _gemini_prompt(inner)}
    _check_contents(body.get("contents"), "CountTokensRequest")
    return {"totalTokens": _gemini_prompt({"contents": body["contents"]})}


def embedding(text: str, dims: int) -> list[float]:
    """A unit vector derived from the text alone, so equal texts embed equally across runs."""
    raw = array.array("h", hashlib.shake_256(text.encode()).digest(dims * 2))
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def _embed_one(req: dict[str, Any], where: str) -> dict[str, Any]:
    parts = req["content"].get("parts") if isinstance(req.get("content"), dict) else None
    if not _text_parts(parts):
        raise EmuError(400, f"* {where}.content.parts: content must contain text parts")
    dims = req.get("outputDimensionality", EMBED_DIMS)
    if not _is_int(dims) or not 1 <= dims <= EMBED_DIMS:
        raise EmuError(400, f"* {where}.output_dimensionality: must be between 1 and {EMBED_DIMS}")
    return {"values": embedding("".join(p["text"] for p in parts), dims)}


def answer_batch_embed(state: _State, request: web.Request, body: dict[str, Any], model: str) -> dict[str, Any]:
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise EmuError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    if len(requests) > 100:
        raise EmuError(400, "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch")
    for i, req in enumerate(requests):
        if not isinstance(req, dict) or req.get("model") != f"models/{model}":
            got = req.get("model") if isinstance(req, dict) else None
            raise EmuError(400, f"* BatchEmbedContentsRequest.requests[{i}].model: {got!r} differs from "
                           f"models/{model} in the URL")
    state.check_retired("google", model, f"models/{model} is not found for API version {request.match_info['version']}")
    return {"embeddings": [_embed_one(r, f"BatchEmbedContentsRequest.requests[{i}]") for i, r in enumerate(requests)]}


GOOGLE_ACTIONS: dict[str, Answer] = {
    "generateContent": answer_generate, "countTokens": answer_count_tokens,
    "batchEmbedContents": answer_batch_embed,
}


# -- the app and its runners -----------------------------------------------------------------------
async def _messages(request: web.Request) -> web.StreamResponse:
    return await _serve_call(request, _Anthropic, "messages", "unknown", answer_messages)


async def _google(request: web.Request) -> web.StreamResponse:
    model, _, action = request.match_info["target"].rpartition(":")
    answer = GOOGLE_ACTIONS.get(action)
    if request.match_info["version"] not in ("v1beta", "v1") or answer is None or not model:
        state = request.app[STATE]
        state.record(action or "unknown", "404", model or None)
        return _Google.error(EmuError(404, f"Method not found: {request.path}"), 0, {})
    return await _serve_call(request, _Google, action, model, answer)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


def build_app(config: EmulatorConfig, registry: Registry | None = None) -> web.Application:
    """The aiohttp app; `registry` (optional) supplies retired models and Gemini's routed_to."""
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE] = _State(config, registry)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/{version}/models/{target}", _google)
    app.router.add_get("/_emulator/stats", _stats)
    app.router.add_post("/_emulator/reset", _reset)
    return app


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"


class RunningEmulator:
    """An emulator served by its own event loop in a daemon thread (see `start_background`)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, args=(host, port), name="otb-emulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner, self.url = self._loop.run_until_complete(_start(self._app, host, port))
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._failure = exc
            self._loop.close()
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stats(self) -> dict[str, Any]:
        """The same dict as GET /_emulator/stats, read on the server's loop (no torn counters)."""
        async def snap() -> dict[str, Any]:
            return self._app[STATE].snapshot()
        if not self._thread.is_alive():
            return self._app[STATE].snapshot()
        return asyncio.run_coroutine_threadsafe(snap(), self._loop).result(timeout=5)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> "RunningEmulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(config: EmulatorConfig | None = None, registry: Registry | None = None,
                     host: str = "127.0.0.1", port: int = 0) -> RunningEmulator:
    """Start listening (port 0 = any free port) and return once connections are accepted."""
    return RunningEmulator(build_app(config or EmulatorConfig(), registry), host, port)


def serve(host: str, port: int, config: EmulatorConfig, registry: Registry | None = None) -> None:
    """Serve in the foreground (`otb emulator`) until SIGINT or SIGTERM."""
    async def main() -> None:
        runner, url = await _start(build_app(config, registry), host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"emulator listening on {url}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


__all__ = ["EmulatorConfig", "RunningEmulator", "build_app", "sample_from_schema", "serve", "start_background",
           "tokens"]
