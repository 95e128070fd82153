"""Calling a provider for one request: key and auth, in-flight caps, shared rate limits, retries.

Everything between a translated request (`Prepared`) and the provider's parsed answer (`Parsed`)
lives here, so the request path (request.py) reads as resolve -> translate -> call -> price ->
commit. One `Upstream` serves a whole chunk run: its HTTP client, retry policy, rate-limit buckets
and per-model caps are shared by every request of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from . import http, metrics, tokens
from .errors import MissingApiKey, Parked, ProtocolError, RequestFailed, UpstreamError
from .flex import flex_then_standard
from .providers import Provider
from .providers.base import Parsed, Prepared, UpstreamCall
from .ratelimit import Limiter, RateLimits, Scope
from .registry import ModelSpec
from .retry import RetryPolicy
from .routes import FLEX, Route
from .schemas import EmbeddingRequest
from .settings import Settings
from .writes import Writes

log = logging.getLogger("otb.worker")


@dataclass
class Attempts:
    """HTTP attempts made for one request (every call of it, retries included): its result's `attempts`."""

    count: int = 0


@dataclass
class Target:
    """Where one request's calls go and what they count against."""

    adapter: Provider
    base: str
    auth: dict[str, str]
    scope: Scope | None  # None: outside the shared rate limits (countTokens)
    attempts: Attempts


@dataclass
class Upstream:
    """The run's way to the providers, shared by every request of the run."""

    settings: Settings
    client: http.Client
    writes: Writes  # no call while its answer could not be stored
    limiter: Limiter | None = None
    limits: dict[str, RateLimits] = field(default_factory=dict)
    gates: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _targets: dict[str, tuple[str, dict[str, str], Scope]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policy = RetryPolicy(self.settings.max_attempts, max_wait=self.settings.retry_max_wait)

    def target(self, adapter: Provider, spec: ModelSpec, attempts: Attempts) -> Target:
        """The provider's base URL, the key's auth headers and the rate-limit scope of (model, key),
        worked out once per model per run (one registry and one set of keys for the whole run)."""
        found = self._targets.get(spec.id)
        if found is None:
            key = self.settings.api_key(spec.provider)
            if not key:
                var = adapter.API_KEY_ENV
                raise MissingApiKey(f"{var} is not set for the worker; export {var} to call {spec.provider} models")
            limits = self.limits.get(spec.id) or spec.limits or RateLimits()
            found = (self.settings.base_url(spec.provider), adapter.auth_headers(key),
                     Scope.of(spec.provider, spec.upstream, key, limits))
            self._targets[spec.id] = found
        return Target(adapter, *found, attempts)

    def caps(self, spec: ModelSpec) -> list[asyncio.Semaphore]:
        """The in-flight caps a call to `spec` must pass besides the process-wide one."""
        if not (self.settings.concurrency_per_model or self.settings.concurrency_per_provider):
            return []
        wanted = [(f"model:{spec.id}", self.settings.concurrency_per_model),
                  (f"provider:{spec.provider}", self.settings.concurrency_per_provider)]
        return [self.gates.setdefault(name, asyncio.Semaphore(limit)) for name, limit in wanted if limit > 0]

    async def chat(self, to: Target, spec: ModelSpec, body: dict[str, Any], prepared: Prepared,
                   route: Route | None = None) -> Parsed:
        """One chat call on its route: the standard tier, or flex first (flex.py)."""
        need = (tokens.chat_input_tokens(body), tokens.output_guess(body))
        gates = self.caps(spec)
        if not gates:  # the usual case: no cap of its own
            data, request_id = await self._on_route(to, prepared.calls[0], need, route)
        else:
            async with contextlib.AsyncExitStack() as caps:
                for gate in gates:
                    await caps.enter_async_context(gate)
                data, request_id = await self._on_route(to, prepared.calls[0], need, route)
        parsed = to.adapter.parse_chat(data, spec, request_id=request_id)
        self._correct(to, spec, need, parsed)
        return parsed

    async def _on_route(self, to: Target, call: UpstreamCall, need: tuple[int, int],
                        route: Route | None) -> tuple[dict[str, Any], str | None]:
        if route is not None and route.name == FLEX:
            return await flex_then_standard(self, to, call, need, route)
        return await self.call(to, call, need)

    async def embeddings(self, to: Target, spec: ModelSpec, request: EmbeddingRequest, body: dict[str, Any],
                         prepared: Prepared, api_version: str) -> Parsed:
        per_call = max(tokens.embedding_input_tokens(body) // len(prepared.calls), 1)
        answers = [(await self.call(to, call, (per_call, 0)))[0] for call in prepared.calls]
        token_count = await self._count_tokens(to, spec, request, api_version)
        parsed = to.adapter.parse_embeddings(answers, request, spec, token_count=token_count)
        self._correct(to, spec, (per_call * len(prepared.calls), 0), parsed)
        return parsed

    def _correct(self, to: Target, spec: ModelSpec, need: tuple[int, int], parsed: Parsed) -> None:
        """The estimate becomes the real count for the shared buckets."""
        if self.limiter is None or to.scope is None:
            return
        try:
            self.limiter.correct(to.scope, need[0], parsed.usage.prompt_tokens, need[1], parsed.usage.output_tokens)
        except redis.RedisError as exc:  # paid already: the request must not start over for an estimate
            log.warning("rate-limit buckets of %s not corrected: %s", spec.id, exc)

    async def _count_tokens(self, to: Target, spec: ModelSpec, request: EmbeddingRequest, api_version: str) -> int | None:
        """Exact input tokens from countTokens; None (the adapter then estimates, and says so) if it fails."""
        call = to.adapter.prepare_count_tokens(request, spec, api_version=api_version)
        try:
            data, _ = await self.call(Target(to.adapter, to.base, to.auth, None, Attempts()), call, (0, 0))
            return to.adapter.parse_count_tokens(data)
        except RequestFailed as exc:
            log.warning("countTokens failed for %s (%s); estimating", spec.id, exc.code)
            return None

    async def call(self, to: Target, call: UpstreamCall, need: tuple[int, int]) -> tuple[dict[str, Any], str | None]:
        """Send one call within the shared rate limits, retrying what is retryable.

        Returns the decoded JSON of the 2xx answer and its request id. A 429/529 cools the model down
        for every worker; a wait longer than `retry_max_wait` parks the request instead of sleeping.
        """
        tries = 0
        while True:
            tries += 1
            try:
                return await self.attempt(to, call, need)
            except RequestFailed as error:
                if error.status_code in (429, 529) and error.retryable:
                    self._cool_down(to.scope, error)
                    if error.retry_after is not None and error.retry_after > self.policy.max_wait:
                        raise Parked(error.retry_after,
                                     f"provider asked to wait {error.retry_after:.0f} s: {error.message}") from error
                if not self.policy.should_retry(error, tries):
                    raise
                metrics.retried(to.adapter.NAME, failure_code(error))
                if to.scope is not None and self.limiter is not None and error.status_code in (429, 529):
                    continue  # the shared cool-down is the wait; acquire() sleeps it out
                await self.policy.pause(tries, error.retry_after)

    async def attempt(self, to: Target, call: UpstreamCall, need: tuple[int, int]) -> tuple[dict[str, Any], str | None]:
        """One try of a call, counted in the request's attempts: once Redis takes writes (no call whose
        answer could not be stored) and the shared buckets have room."""
        await self.writes.ready()
        await self.acquire(to.scope, need)
        to.attempts.count += 1
        return await self.send(to, call)

    async def acquire(self, scope: Scope | None, need: tuple[int, int]) -> None:
        """Wait for the shared buckets; a wait past `retry_max_wait` parks the request."""
        if scope is None or self.limiter is None:
            return
        ahead = await self.limiter.acquire(scope, need[0], need[1], max_wait=self.policy.max_wait)
        if ahead:
            raise Parked(ahead, f"{scope.name.rsplit(':', 1)[0]} is cooling down or at its rate limit")

    async def send(self, to: Target, call: UpstreamCall) -> tuple[dict[str, Any], str | None]:
        """One HTTP attempt: the decoded 2xx JSON object and its request id, else the provider's error."""
        provider, code = to.adapter.NAME, "cancelled"
        metrics.call_started(provider)
        started = time.monotonic()
        try:
            answer = await http.send(self.client, to.base, call, to.auth)
            code = str(answer.status)
        except RequestFailed as error:
            code = error.code
            raise
        finally:
            metrics.call_ended(provider, code, time.monotonic() - started)
        if not 200 <= answer.status < 300:
            raise to.adapter.parse_error(answer.status, answer.headers, answer.content)
        data = answer.json()
        if not isinstance(data, dict):
            raise ProtocolError("provider answered with JSON that is not an object")
        return data, answer.headers.get("request-id") or answer.headers.get("x-request-id")

    def _cool_down(self, scope: Scope | None, error: RequestFailed) -> None:
        """Slow the model for every worker at once: the provider's wait, else a short backoff."""
        if scope is None or self.limiter is None:
            return
        seconds = error.retry_after if error.retry_after is not None else (2.0 if error.status_code == 529 else 1.0)
        self.limiter.cool_down(scope, seconds, f"{error.status_code} {error.code}")


def failure_code(error: RequestFailed) -> str:
    """A failed call as a metric label: the HTTP status of a provider's answer (a bounded set, unlike the
    provider's own error names), else our code for no usable answer (timeout, unreachable, protocol)."""
    return str(error.status_code) if isinstance(error, UpstreamError) else error.code
