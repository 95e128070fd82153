"""Faults on demand: the `#emu:` markers in a request body, random faults by rate, and latency.

A seed reproduces the exact fault sequence (one draw per call). Flex sheds (`flex_shed`) touch only
calls asking for Gemini's flex tier: the same body sent standard is answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass

from aiohttp import web

from .core import Dialect, Disconnect, EmuError
from .state import MEMORY_CAP, State

MARKER_RE = re.compile(rb"#emu:(fail-first|fail|reset|malformed|slow|retry-after)(?:=([0-9.:]+))?")


@dataclass
class Markers:
    """The test markers of one request body (see the package docstring)."""

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


async def delay(state: State, marks: Markers | None) -> None:
    """The configured latency and jitter, plus any `#emu:slow`; never blocks the loop."""
    cfg = state.config
    ms = cfg.latency_ms + (state.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms) if cfg.jitter_ms else 0)
    ms = max(0.0, ms) + (marks.slow_ms if marks else 0)
    if ms > 0:
        await asyncio.sleep(ms / 1000)


def apply_markers(state: State, request: web.Request, raw: bytes, marks: Markers) -> None:
    """Drop, fail, or fail the first n byte-identical bodies, as the markers ask."""
    if marks.reset:
        raise Disconnect()
    if marks.fail is not None:
        raise EmuError(marks.fail)
    if marks.fail_first is not None:
        n, status = marks.fail_first
        if _among_first(state, hashlib.sha256(request.path.encode() + b"\0" + raw).digest(), n):
            raise EmuError(status)


def _among_first(state: State, key: bytes, n: int) -> bool:
    """Whether this is one of the first `n` calls with `key` (and count it)."""
    seen = state.fail_first.get(key, 0)
    if seen >= n:
        return False
    if len(state.fail_first) >= MEMORY_CAP:
        state.fail_first.clear()
    state.fail_first[key] = seen + 1
    return True


def random_fault(state: State, dialect: Dialect) -> None:
    """One draw per call so a seed reproduces the exact fault sequence."""
    cfg = state.config
    if not (cfg.rate_429 or cfg.error_rate):
        return
    r = state.rng.random()
    if r < cfg.rate_429:
        raise EmuError(429)
    if r < cfg.rate_429 + cfg.error_rate:
        raise EmuError(state.rng.choice(dialect.server_errors))


SHED_MESSAGE = "The flex tier is at capacity; retry later or use the standard tier."
SHED_RE = re.compile(r"#emu:shed(?:-first=([0-9]+))?(?::(429|503))?")


def flex_shed(state: State, body_text: str) -> None:
    """Shed a flex call as the flex tier does under load (503 UNAVAILABLE, or 429 RESOURCE_EXHAUSTED):
    `#emu:shed[:429]` sheds every flex call of the body, `#emu:shed-first=<n>[:429]` the first n
    (counted per body), and `flex_shed_rate` a share of all of them (one draw per flex call)."""
    found = SHED_RE.search(body_text)
    if found is not None:
        first, status = found.group(1), int(found.group(2) or 503)
        if first is None or _among_first(state, hashlib.sha256(b"flex\0" + body_text.encode()).digest(), int(first)):
            raise EmuError(status, SHED_MESSAGE)
    if state.config.flex_shed_rate and state.rng.random() < state.config.flex_shed_rate:
        raise EmuError(503, SHED_MESSAGE)
