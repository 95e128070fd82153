"""Rate limits shared by every worker on every machine, enforced in Redis with atomic scripts.

Per model and API key (a short hash of it, never the key): requests, input tokens and output
tokens per minute, as token buckets refilled continuously. A bucket holds `burst` of a minute's
limit and refills at `(1 - burst)` of it, so no 60-second window can pass the limit however the
provider counts (sliding window or bucket): the steady pace is 95% of the limit by default.
Input tokens are estimated before a call and corrected with the real usage after it.

A 429 or 529 sets a shared cool-down for the model (from retry-after or the rate-limit reset
headers), so every worker slows at once instead of each discovering the limit alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

# KEYS: bucket hash, cool-down key. ARGV: rpm, itpm, otpm, need_r, need_i, need_o, burst (fraction)
# Returns 0 when taken, else milliseconds to wait (cool-down or refill).
_ACQUIRE = """
local cool = redis.call('PTTL', KEYS[2])
if cool > 0 then return cool end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'l1', 'l2', 'l3', 't')
local last = tonumber(h[4]) or now
local burst = tonumber(ARGV[7])
local wait, levels, needs = 0, {}, {}
for k = 1, 3 do
  local limit = tonumber(ARGV[k])
  if limit > 0 then
    local cap = math.max(limit * burst, 1)
    local rate = limit * (1 - burst) / 60000
    local level = tonumber(h[k]) or cap
    level = math.min(cap, level + (now - last) * rate)
    local need = math.min(tonumber(ARGV[3 + k]), cap)
    if level < need then wait = math.max(wait, math.ceil((need - level) / rate)) end
    levels[k], needs[k] = level, need
  end
end
if wait > 0 then return wait end
for k = 1, 3 do
  if levels[k] then redis.call('HSET', KEYS[1], 'l' .. k, levels[k] - needs[k]) end
end
redis.call('HSET', KEYS[1], 't', now)
redis.call('PEXPIRE', KEYS[1], 120000)
return 0
"""

# KEYS: bucket hash. ARGV: itpm, otpm, extra input tokens, extra output tokens, burst. Negative = refund.
_ADJUST = """
local h = redis.call('HMGET', KEYS[1], 'l2', 'l3')
for k = 1, 2 do
  local limit = tonumber(ARGV[k])
  if limit > 0 and h[k] then
    local cap = math.max(limit * tonumber(ARGV[5]), 1)
    redis.call('HSET', KEYS[1], 'l' .. (k + 1), math.min(cap, tonumber(h[k]) - tonumber(ARGV[2 + k])))
  end
end
return 0
"""

# Lengthen (never shorten) a model's shared cool-down.
_COOL = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1]) end
return 0
"""


class RateLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int = Field(default=0, ge=0)
    input_tpm: int = Field(default=0, ge=0)
    output_tpm: int = Field(default=0, ge=0)

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.input_tpm or self.output_tpm)


def load_limits(path: Path | None) -> dict[str, RateLimits]:
    """`OTB_LIMITS`: {"<model id>": {"rpm": ..., "input_tpm": ..., "output_tpm": ...}}; missing = unlimited."""
    if path is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
        return {model: RateLimits.model_validate(v) for model, v in raw.items()}
    except (OSError, ValueError, AttributeError, ValidationError) as exc:
        raise ConfigError(f"rate-limit file {path}: {exc}") from exc


@dataclass
class Scope:
    """One model under one API key: the unit providers limit."""

    name: str
    limits: RateLimits

    @classmethod
    def of(cls, provider: str, upstream: str, api_key: str, limits: RateLimits) -> "Scope":
        key_tag = hashlib.sha256(api_key.encode()).hexdigest()[:8]  # tells keys apart; reveals nothing
        return cls(f"{provider}:{upstream}:{key_tag}", limits)


class Limiter:
    def __init__(self, conn: redis.Redis, prefix: str = "otb", burst: float = 0.05) -> None:
        self.conn, self.prefix, self.burst = conn, prefix, burst
        self._acquire = conn.register_script(_ACQUIRE)
        self._adjust = conn.register_script(_ADJUST)
        self._cool = conn.register_script(_COOL)
        self._cool_seen: dict[str, tuple[float, float]] = {}  # scope -> (checked at, cool until), monotonic

    def _keys(self, scope: Scope) -> list[str]:
        return [f"{self.prefix}:rl:{scope.name}", f"{self.prefix}:cool:{scope.name}"]

    def try_acquire(self, scope: Scope, input_tokens: int, output_tokens: int) -> float:
        """0 if the call may go now (and is counted), else seconds to wait before asking again."""
        lim = scope.limits
        ms = self._acquire(keys=self._keys(scope), args=[
            lim.rpm, lim.input_tpm, lim.output_tpm, 1, input_tokens, output_tokens, self.burst])
        return int(ms) / 1000.0

    def cooldown_left(self, scope: Scope) -> float:
        return max(int(self.conn.pttl(self._keys(scope)[1])), 0) / 1000.0

    async def acquire(self, scope: Scope, input_tokens: int, output_tokens: int, *, max_wait: float) -> float:
        """Wait for capacity; returns 0, or the wait still ahead when it is longer than `max_wait`.

        A model with no limits only has to respect a shared cool-down, which is read at most every
        100 ms per process instead of once per call.
        """
        while True:
            wait = self._cooldown_cached(scope) if not scope.limits.active else self.try_acquire(
                scope, input_tokens, output_tokens)
            if wait <= 0:
                return 0.0
            if wait > max_wait:
                return wait
            await asyncio.sleep(wait * (1 + 0.1 * random.random()))  # spread the wake-ups

    def _cooldown_cached(self, scope: Scope) -> float:
        now = time.monotonic()
        checked_at, until = self._cool_seen.get(scope.name, (-1.0, 0.0))
        if now - checked_at >= 0.1:
            until = now + self.cooldown_left(scope)
            self._cool_seen[scope.name] = (now, until)
        return max(until - now, 0.0)

    def correct(self, scope: Scope, estimated_in: int, actual_in: int, estimated_out: int, actual_out: int) -> None:
        lim = scope.limits
        if lim.input_tpm or lim.output_tpm:
            self._adjust(keys=self._keys(scope)[:1], args=[
                lim.input_tpm, lim.output_tpm, actual_in - estimated_in, actual_out - estimated_out, self.burst])

    def cool_down(self, scope: Scope, seconds: float, reason: str) -> None:
        self._cool(keys=self._keys(scope)[1:], args=[max(int(seconds * 1000), 1), reason[:200]])
        self._cool_seen.pop(scope.name, None)  # this process sees its own cool-down at once
