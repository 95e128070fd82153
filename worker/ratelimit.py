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
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import metrics
from .errors import ConfigError
from .keys import Keys
from .scripts import Scripts

log = logging.getLogger("otb.ratelimit")

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

    @property
    def provider(self) -> str:
        return self.name.split(":", 1)[0]


class Limiter:
    """The shared buckets and cool-downs (lua/bucket_take.lua, bucket_adjust.lua, cool_down.lua)."""

    def __init__(self, conn: redis.Redis, prefix: str = "otb", burst: float = 0.05) -> None:
        self.conn, self.keys, self.burst = conn, Keys(prefix), burst
        self.scripts = Scripts(conn)
        self._cool_seen: dict[str, tuple[float, float]] = {}  # scope -> (checked at, cool until), monotonic
        self._reading: dict[str, asyncio.Future[None]] = {}  # scope -> the reading under way

    def try_acquire(self, scope: Scope, input_tokens: int, output_tokens: int) -> float:
        """0 if the call may go now (and is counted), else seconds to wait before asking again."""
        lim = scope.limits
        ms = self.scripts.bucket_take(
            bucket=self.keys.bucket(scope.name), cooldown=self.keys.cooldown(scope.name),
            rpm=lim.rpm, itpm=lim.input_tpm, otpm=lim.output_tpm, need_r=1, need_i=input_tokens,
            need_o=output_tokens, burst=self.burst)
        return int(ms) / 1000.0

    def cooldown_left(self, scope: Scope) -> float:
        return max(int(self.conn.pttl(self.keys.cooldown(scope.name))), 0) / 1000.0

    async def acquire(self, scope: Scope, input_tokens: int, output_tokens: int, *, max_wait: float) -> float:
        """Wait for capacity; returns 0, or the wait still ahead when it is longer than `max_wait`.

        A model with no limits only has to respect a shared cool-down, which is read at most every
        100 ms per process instead of once per call.
        """
        while True:
            wait = await self._cooldown_cached(scope) if not scope.limits.active else self.try_acquire(
                scope, input_tokens, output_tokens)
            if wait <= 0:
                return 0.0
            if wait > max_wait:
                return wait
            pause = wait * (1 + 0.1 * random.random())  # spread the wake-ups
            metrics.rate_limit_waited(scope.provider, pause)
            await asyncio.sleep(pause)

    async def _cooldown_cached(self, scope: Scope) -> float:
        """The shared cool-down left, as read at most 100 ms ago. The first call of a scope waits for
        the reading; later ones go on with the last reading while the next is made in a thread (a
        round trip on the event loop stalls every call of the run, by milliseconds under load)."""
        now = time.monotonic()
        seen = self._cool_seen.get(scope.name)
        if seen is None or now - seen[0] >= 0.1:
            reading = self._reading.get(scope.name)
            if reading is None:
                reading = self._reading[scope.name] = asyncio.ensure_future(self._read_cooldown(scope))
            if seen is None:
                await asyncio.shield(reading)
                seen = self._cool_seen[scope.name]
        return max(seen[1] - now, 0.0)

    async def _read_cooldown(self, scope: Scope) -> None:
        try:
            left = await asyncio.to_thread(self.cooldown_left, scope)
            now = time.monotonic()
            self._cool_seen[scope.name] = (now, now + left)
        except redis.RedisError as exc:
            if scope.name not in self._cool_seen:
                raise  # the first reading: its callers see the error, as they always did
            log.warning("cool-down of %s not read: %s", scope.name, exc)
        finally:
            self._reading.pop(scope.name, None)

    def correct(self, scope: Scope, estimated_in: int, actual_in: int, estimated_out: int, actual_out: int) -> None:
        lim = scope.limits
        if lim.input_tpm or lim.output_tpm:
            self.scripts.bucket_adjust(
                bucket=self.keys.bucket(scope.name), itpm=lim.input_tpm, otpm=lim.output_tpm,
                extra_i=actual_in - estimated_in, extra_o=actual_out - estimated_out, burst=self.burst)

    def cool_down(self, scope: Scope, seconds: float, reason: str) -> None:
        self.scripts.cool_down(cooldown=self.keys.cooldown(scope.name), ms=max(int(seconds * 1000), 1),
                               reason=reason[:200])
        self._cool_seen.pop(scope.name, None)  # this process sees its own cool-down at once
