"""One HTTP call through the workers: `POST /v1/chat/completions` and `/v1/embeddings` as a one-request batch.

The call takes the same road as every batch (the same validation, queue workers, shared rate
limits, retries, once-only commit and cost aggregates), so nothing about money or limits differs
between a call and a batch line. Its batch goes on the interactive queue (`{queue}:interactive`),
which workers and running chunks take before batch work, and is tagged `key=<tenant>` so
`otb report --by tag:key` bills each tenant. Its pool is the tenant: its commit adds its cost to the
key's spend, and under the key's --max-cost it holds its worst case beside the key's running batches
(a call that can never fit answers 429 `insufficient_quota`, unsent). The server waits on the batch's event stream with
redis.asyncio (a blocked read holds a connection, not a thread), then answers the result line's
OpenAI body with its exact cost (`x-otb-cost`, and a `cost` object in the JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from producer.control import cancel
from producer.options import SubmitOptions
from producer.submit import SubmissionRejected, new_batch_id, refused, submit_one
from worker import clock
from worker.errors import BudgetExceeded, InvalidRequest
from worker.keys import Keys
from worker.pricing import to_pico
from worker.queues import interactive_name, queue_for
from worker.registry import current_registry
from worker.settings import Settings
from worker.store import Store

from .aredis import AsyncRedis
from .batchends import BatchEnds, Ended
from .errors import ApiError, Forwarded, Unanswered
from .tenants import Tenant

CALL_ID = "call"  # the custom_id of a call's one request
TENANT_TAG = "key"  # results carry key=<tenant name>: `otb report --by tag:key` is the bill per tenant
DEFAULT_TIMEOUT = 600.0  # seconds a call waits for a worker (the OpenAI SDK's own default timeout)
BLOCK_S = 5.0  # the longest wait for a batch's end before the result is looked up anyway


@dataclass
class Call:
    """A parsed call: the body the workers get, and how the caller wants the answer."""

    url: str
    body: dict[str, Any]
    stream: bool = False
    include_usage: bool = False


class Calls:
    """Submits calls on the interactive queue and waits for their results (one per server process)."""

    def __init__(self, conn: redis.Redis, settings: Settings, redis_: AsyncRedis,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.conn, self.settings, self.redis, self.timeout = conn, settings, redis_, timeout
        self.call_settings = settings.with_(queue_name=interactive_name(settings))
        self.names = Keys(settings.key_prefix)
        self.ends = BatchEnds(redis_, self.names.all_events, lambda bid: (self.names.results(bid), CALL_ID))
        self.store = Store.of(conn, self.call_settings)
        self.clock = RedisClock(self.store)

    async def answer(self, tenant: Tenant, call: Call) -> "Answer":
        """The call's result line, or an OpenAI-shaped error (4xx from validation, 429 over budget,
        503/504 when no worker answers in time)."""
        self.check_budget(tenant)
        bid = new_batch_id()
        async with self.ends.watch(bid) as ended:  # before the submit: its end cannot pass unseen
            await self.submit(tenant, call, bid)
            line = await self.wait(bid, ended)
        if line is None:
            raise await run_in_threadpool(self.give_up, bid)
        return Answer(bid, line)

    async def submit(self, tenant: Tenant, call: Call, bid: str) -> None:
        """The call as a one-request batch `bid`, validated and stored as `otb submit` does (errors identical),
        in one transaction sent from the event loop."""
        raw = json.dumps({"custom_id": CALL_ID, "method": "POST", "url": call.url, "body": call.body}).encode()
        options = SubmitOptions(metadata={TENANT_TAG: tenant.name}, completion_window=self.timeout,
                                mode="realtime",  # a caller waits: never a slower route (a line's own service_tier may ask)
                                pool=tenant.name, pool_max_cost=tenant.max_cost)
        registry = current_registry(self.settings.registry_path)
        try:
            async with self.redis.client.pipeline(transaction=True) as pipe:
                submit_one(self.store, self.call_settings, registry, raw, options, bid, self.clock.now(), pipe)
                await pipe.execute()
        except SubmissionRejected as exc:
            raise exc.errors[0].error from None
        except redis.ResponseError as exc:  # full (OOM), read-only: Redis answered, and said no
            raise refused(exc) from None

    async def wait(self, bid: str, ended: Ended) -> dict[str, Any] | None:
        """The result line once the worker commits it (the reader of batch ends brings it), or None after
        the timeout. Every BLOCK_S the result is looked up anyway, in case the end was not seen."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if ended.done():  # ended without a result line (gone meanwhile): look now and then until the deadline
                await asyncio.sleep(min(left, BLOCK_S))
            else:
                with contextlib.suppress(TimeoutError):
                    brought = await asyncio.wait_for(asyncio.shield(ended), min(left, BLOCK_S))
                    if brought is not None:
                        return dict(json.loads(brought))
            line = await self.redis.client.hget(self.names.results(bid), CALL_ID)
            if line is not None:
                return dict(json.loads(line))

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
        """429 `insufficient_quota` once the key's committed spend (as its record said a moment ago, when
        the key was looked up) has reached its --max-cost (one that has not is checked by the worker, with
        the calls in flight: `budget_exceeded`)."""
        if tenant.max_cost is None:
            return
        if tenant.spent_pico >= to_pico(tenant.max_cost):
            raise ApiError(429, f"You exceeded the budget of key {tenant.name!r} ({tenant.max_cost} USD; spent "
                                f"{Decimal(tenant.spent_pico).scaleb(-12).normalize():f} USD).",
                           code="insufficient_quota", type="insufficient_quota")


class RedisClock:
    """Redis's clock (TIME), the one batch windows and index ages are on, as this process knows it: read at
    most once a second and advanced by the monotonic clock in between (not one more round trip per call)."""

    EVERY_S = 1.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self._reading: tuple[float, float] | None = None  # (Redis's clock, monotonic) at the last TIME; one
        # reference, swapped whole, so the threads that submit never see half of a new reading

    def now(self) -> float:
        mono, reading = time.monotonic(), self._reading
        if reading is None or mono - reading[1] >= self.EVERY_S:
            reading = self._reading = (self.store.redis_now(), mono)
        return reading[0] + (mono - reading[1])


async def read_body(request: Request, limit: int, what: str = "OTB_MAX_LINE_BYTES, the limit of one request") -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (a huge body is never held whole); `what`
    names the limit in the error."""
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"The request body is larger than {limit} bytes ({what}).", code="request_too_large")
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
    error = line.get("error") or {}
    if response is None and error.get("code") == BudgetExceeded.code:  # the key's budget (a call has no other)
        raise ApiError(429, str(error.get("message") or "over the key's budget"), code="insufficient_quota",
                       type="insufficient_quota")
    if response is None:  # no HTTP answer at all (connection failures after retries)
        raise Unanswered(str(error.get("message") or "the provider did not answer"), code=error.get("code"),
                         headers=headers)
    if response["status_code"] >= 300:
        raise Forwarded(response["status_code"], response["body"], headers)
    body = dict(response["body"])
    if body.get("object") == "chat.completion":  # (an embeddings list has neither, as at OpenAI)
        body.setdefault("id", f"chatcmpl-{uuid.uuid4().hex}")
        body.setdefault("created", int(clock.now()))
    body["cost"] = line["cost"]
    return body

