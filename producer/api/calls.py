"""One HTTP call through the workers: `POST /v1/chat/completions` and `/v1/embeddings` as a one-request batch.

The call takes the same road as every batch (the same validation, queue workers, shared rate
limits, retries, once-only commit and cost aggregates), so nothing about money or limits differs
between a call and a batch line. Its batch goes on the interactive queue (`{queue}:interactive`),
which workers and running chunks take before batch work, and is tagged `key=<tenant>` so
`otb report --by tag:key` bills each tenant. The server waits on the batch's event stream with
redis.asyncio (a blocked read holds a connection, not a thread), then answers the result line's
OpenAI body with its exact cost (`x-otb-cost`, and a `cost` object in the JSON).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from producer.control import cancel
from producer.options import SubmitOptions
from producer.submit import SubmissionRejected, submit
from worker import clock
from worker.errors import InvalidRequest
from worker.connection import SENTINEL_TIMEOUT, SentinelURL, is_sentinel
from worker.keys import Keys
from worker.pricing import to_pico
from worker.queues import interactive_name, queue_for
from worker.registry import current_registry
from worker.settings import Settings

from .codec import text
from .errors import ApiError, Forwarded
from .tenants import KeyStore, Tenant

CALL_ID = "call"  # the custom_id of a call's one request
TENANT_TAG = "key"  # results carry key=<tenant name>: `otb report --by tag:key` is the bill per tenant
DEFAULT_TIMEOUT = 600.0  # seconds a call waits for a worker (the OpenAI SDK's own default timeout)
WAITERS = 2048  # Redis connections for waiting calls, per server process (Redis allows 10,000 clients)
BLOCK_S = 5.0  # the longest blocked read of a call's events (then the result is looked up anyway)


@dataclass
class Call:
    """A parsed call: the body the workers get, and how the caller wants the answer."""

    url: str
    body: dict[str, Any]
    stream: bool = False
    include_usage: bool = False


class Calls:
    """Submits calls on the interactive queue and waits for their results (one per server process)."""

    def __init__(self, conn: redis.Redis, settings: Settings, keys: KeyStore, timeout: float = DEFAULT_TIMEOUT,
                 async_redis: Callable[[], aioredis.Redis] | None = None) -> None:
        self.conn, self.settings, self.keys, self.timeout = conn, settings, keys, timeout
        self.async_redis = async_redis or (lambda: async_client(settings.redis_url or ""))  # embedded: its own
        self.call_settings = settings.with_(queue_name=interactive_name(settings))
        self.names = Keys(settings.key_prefix)
        self._aconn: aioredis.Redis | None = None

    @property
    def aconn(self) -> aioredis.Redis:
        """The async client the waits block on, made in the server's event loop on first use."""
        if self._aconn is None:
            # A waiting call holds a connection for its blocked XREAD: more of them than redis-py's default
            # pool (100, then MaxConnectionsError) may wait, and past WAITERS a call waits for a connection
            # instead of failing. The read must end before the socket's timeout (redis-py's default is 5 s).
            self._aconn = self.async_redis()
        return self._aconn

    async def answer(self, tenant: Tenant, call: Call) -> "Answer":
        """The call's result line, or an OpenAI-shaped error (4xx from validation, 429 over budget,
        503/504 when no worker answers in time)."""
        self.check_budget(tenant)
        bid = await run_in_threadpool(self.submit, tenant, call)
        line = await self.wait(bid)
        if line is None:
            raise await run_in_threadpool(self.give_up, bid)
        self.count_spend(tenant, line)
        return Answer(bid, line)

    def submit(self, tenant: Tenant, call: Call) -> str:
        """The call as a one-request batch, through the one submit path (errors identical to `otb submit`)."""
        raw = json.dumps({"custom_id": CALL_ID, "method": "POST", "url": call.url, "body": call.body}).encode()
        options = SubmitOptions(metadata={TENANT_TAG: tenant.name}, completion_window=self.timeout,
                                mode="realtime")  # a caller waits: never a slower route (a line's own service_tier may ask)
        registry = current_registry(self.settings.registry_path)
        try:
            return submit(self.conn, self.call_settings, registry, [raw], options).batch_id
        except SubmissionRejected as exc:
            raise exc.errors[0].error from None

    async def wait(self, bid: str) -> dict[str, Any] | None:
        """The result line once the worker commits it (woken by the batch's events), or None after the timeout."""
        events, results = self.names.events(bid), self.names.results(bid)
        deadline, last = time.monotonic() + self.timeout, "0"
        while True:
            line = await self.aconn.hget(results, CALL_ID)
            if line is not None:
                return dict(json.loads(line))
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            read = cast(list[tuple[bytes, list[tuple[bytes, Any]]]], await self.aconn.xread(
                {events: last}, block=max(1, int(min(left, BLOCK_S) * 1000))))
            for _, entries in read or []:
                last = text(entries[-1][0])

    def give_up(self, bid: str) -> ApiError:
        """No answer in time: cancel the call (nothing runs and bills later) and say why, naming a missing worker."""
        from rq import Worker

        try:
            cancel(self.conn, self.settings, bid)
        except redis.RedisError:
            pass  # its completion window ends it anyway
        queue = queue_for(self.conn, self.settings, interactive=True)
        if not Worker.count(queue=queue):
            return ApiError(503, f"no worker is listening on queue {queue.name!r}: start one with `otb worker` "
                                 "(same REDIS_URL)", code="no_worker", type="server_error")
        return ApiError(504, f"no worker answered within {self.timeout:g} s; the call was cancelled",
                        code="timeout", type="server_error")

    # -- a key's budget (--max-cost) ----------------------------------------------------------------
    def check_budget(self, tenant: Tenant) -> None:
        """429 `insufficient_quota` once the key's committed spend has reached its --max-cost."""
        if tenant.max_cost is None:
            return
        spent = self.keys.spent_pico(tenant.name)
        if spent >= to_pico(tenant.max_cost):
            raise ApiError(429, f"You exceeded the budget of key {tenant.name!r} ({tenant.max_cost} USD; spent "
                                f"{Decimal(spent).scaleb(-12).normalize():f} USD).", code="insufficient_quota",
                           type="insufficient_quota")

    def count_spend(self, tenant: Tenant, line: dict[str, Any]) -> None:
        self.keys.add_spend(tenant.name, to_pico(Decimal(line["cost"]["total"])))


def async_client(url: str) -> aioredis.Redis:
    """An asyncio client for REDIS_URL, Sentinel URLs included (the master, asked of the Sentinels)."""
    if not is_sentinel(url):
        return aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=WAITERS, timeout=None, socket_timeout=BLOCK_S + 10))
    parsed = SentinelURL.parse(url)
    tls = {k: v for k, v in parsed.master_kwargs.items() if k.startswith("ssl")} | ({"ssl": True} if parsed.tls else {})
    sentinels = AsyncSentinel(list(parsed.sentinels), sentinel_kwargs={**parsed.sentinel_login, **tls,
                                                                       "socket_timeout": SENTINEL_TIMEOUT})
    master: aioredis.Redis = sentinels.master_for(parsed.service, max_connections=WAITERS,
                                                  socket_timeout=BLOCK_S + 10, **parsed.master_kwargs)
    return master


def openapi_body(required: list[str], example: dict[str, Any]) -> dict[str, Any]:
    """The JSON body as /docs shows it (the route reads the raw body itself, so validation stays that of
    `otb submit`, with its errors)."""
    schema = {"type": "object", "required": required, "additionalProperties": True, "example": example}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (a huge body is never held whole)."""
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"The request body is larger than {limit} bytes (OTB_MAX_LINE_BYTES, the limit of "
                                "one request).", code="request_too_large")
        parts.append(part)
    return b"".join(parts)


def parse_call(raw: bytes, url: str) -> Call:
    """The JSON body of a call; `stream` and `stream_options` are taken off (the workers never stream)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                             "using your HTTP library correctly. The OpenAI API expects a JSON payload.)") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    options = body.pop("stream_options", None)
    stream = body.pop("stream", None)
    if stream not in (None, True, False):
        raise InvalidRequest("Invalid value for 'stream': expected a boolean.", param="stream")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("Invalid value for 'stream_options': expected an object.", param="stream_options")
    return Call(url, body, bool(stream), bool((options or {}).get("include_usage")))


async def handle(request: Request, tenant: Tenant, url: str) -> tuple[Call, "Answer"]:
    """A route's whole work: read the body, have the workers answer it (errors raise in OpenAI's shape)."""
    settings: Settings = request.app.state.settings
    call = parse_call(await read_body(request, settings.max_line_bytes), url)
    calls: Calls = request.app.state.calls
    return call, await calls.answer(tenant, call)


@dataclass(frozen=True)
class Answer:
    """A call's batch and its result line."""

    batch_id: str
    line: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        """The exact cost (decimal string, USD) and the batch holding the result (`otb results BATCH`)."""
        return {"x-otb-cost": str(self.line["cost"]["total"]), "x-otb-batch": self.batch_id}

    def body(self) -> dict[str, Any]:
        """The 2xx body with its `cost`; a refusal or a failure raises its OpenAI error instead."""
        return completed_body(self.line, self.headers)


def completed_body(line: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    response = line.get("response")
    if response is None:  # no HTTP answer at all (connection failures after retries)
        error = line.get("error") or {}
        raise ApiError(502, str(error.get("message") or "the provider did not answer"), code=error.get("code"),
                       type="api_error")
    if response["status_code"] >= 300:
        raise Forwarded(response["status_code"], response["body"], headers)
    body = dict(response["body"])
    body.setdefault("id", f"chatcmpl-{uuid.uuid4().hex}")
    body.setdefault("created", int(clock.now()))
    body["cost"] = line["cost"]
    return body

