"""One line of a native batch: the body it is sent with, and its answer committed as its result.

The body is the one a real-time call sends (the adapter's own request builder), so a line answered in
a provider batch reads like one answered in real time; only `meta.route` (`native`), its tier
(`batch`, from Anthropic's `usage.service_tier`, else from the route) and its price differ. Each
answer is committed once through Store.commit, so counters, costs, events and reports take it as
they take any other result, and a line already committed is never committed or sent again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .. import clock, routes
from ..errors import InvalidRequest, RequestFailed
from ..providers import ADAPTERS
from ..providers.anthropic import batches as anthropic_batches
from ..providers.google import batches as google_batches
from ..providers.base import UpstreamCall
from ..registry import ModelSpec, Registry
from ..request import billed_spec
from ..results import error_line, success_line
from ..schemas import KIND_BY_URL, chat_request, embedding_request
from ..store import Store


@dataclass
class Line:
    """A stored request made ready for a provider batch: its spec, the call it would be in real time,
    and the `meta` its result will carry."""

    custom_id: str
    spec: ModelSpec
    call: UpstreamCall
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchInfo:
    """What a line's result needs of its batch: its id, its tags, whether unsupported params are dropped,
    and the pool (tenant) its spend is added to."""

    id: str
    tags: dict[str, str]
    drop_unsupported: bool
    pool: str = ""


def batch_info(store: Store, bid: str) -> BatchInfo:
    raw = store.batch(bid) or {}
    options = json.loads(raw.get("options") or "{}")
    return BatchInfo(bid, json.loads(raw.get("metadata") or "{}"), bool(options.get("drop_unsupported_params")),
                     str(options.get("pool") or ""))


def prepare(registry: Registry, batch: BatchInfo, cid: str, record: dict[str, Any] | None) -> Line:
    """The line as its provider batch sends it; InvalidRequest (with what meta is known) if it cannot go."""
    if record is None:
        raise InvalidRequest(f"request {cid!r} is missing from the batch (expired or deleted)")
    body: dict[str, Any] = record["body"]
    meta: dict[str, Any] = {"model": body.get("model"), "tags": {**batch.tags, **(record.get("tags") or {})}}
    kind = KIND_BY_URL[record["url"]]
    spec = registry.resolve_for(str(body.get("model")), kind)
    adapter = ADAPTERS[spec.provider]
    if kind != "chat":  # Gemini embeddings: the inputs of its batchEmbedContents calls, one request each
        embedded = adapter.prepare_embeddings(embedding_request(body), spec,
                                              api_version=registry.api_version(spec.provider))
        requests = google_batches.embed_requests([c.json for c in embedded.calls])
        meta["dropped_params"] = list(embedded.dropped_params)
        if embedded.notes:
            meta["notes"] = embedded.notes
        return Line(cid, spec, UpstreamCall("POST", embedded.calls[0].path, {"requests": requests}), meta)
    prepared = adapter.prepare_chat(chat_request(body), spec, api_version=registry.api_version(spec.provider),
                                    drop_unsupported=batch.drop_unsupported)
    call, dropped = prepared.calls[0], list(prepared.dropped_params)
    if spec.provider == "anthropic":
        params, also = anthropic_batches.batch_params(call.json, drop_unsupported=batch.drop_unsupported)
        call, dropped = UpstreamCall(call.method, call.path, params, call.headers), dropped + also
    meta["dropped_params"] = dropped
    if prepared.notes:
        meta["notes"] = prepared.notes
    return Line(cid, spec, call, meta)


EXTRAS = ("dropped_params", "notes")  # what a translation adds to `meta` (kept at planning, when any)


def extras_of(line: Line) -> dict[str, Any] | None:
    """What the translation dropped or noted, if anything (most lines: nothing)."""
    extras = {k: line.meta[k] for k in EXTRAS if line.meta.get(k)}
    return extras or None


def answering(registry: Registry, batch: BatchInfo, cid: str, record: dict[str, Any],
              extras: dict[str, Any] | None) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec and `meta` of a line whose answer came back, without translating its body again: what
    the translation added at planning comes from `extras`."""
    body: dict[str, Any] = record["body"]
    spec = registry.resolve_for(str(body.get("model")), KIND_BY_URL[record["url"]])
    meta: dict[str, Any] = {"model": body.get("model"), "tags": {**batch.tags, **(record.get("tags") or {})},
                            "dropped_params": list((extras or {}).get("dropped_params") or [])}
    if extras and extras.get("notes"):
        meta["notes"] = extras["notes"]
    return spec, meta


def meta_of(batch: BatchInfo, record: dict[str, Any] | None) -> dict[str, Any]:
    """The meta of a line that could not be prepared (for its error result)."""
    body = (record or {}).get("body") or {}
    return {"model": body.get("model"), "tags": {**batch.tags, **((record or {}).get("tags") or {})}, "attempts": 0}


Result = tuple[str, dict[str, Any], str]  # (custom_id, result line, outcome): what Store.commit_many takes


def answer_result(registry: Registry, batch: BatchInfo, cid: str, spec: ModelSpec, meta: dict[str, Any],
                  data: dict[str, Any], provider_batch: str, record: dict[str, Any]) -> Result:
    """A succeeded answer, translated by the adapter and priced at the tier it was billed (an embeddings
    answer is parsed against its stored request: its input count and encoding_format)."""
    adapter = ADAPTERS[spec.provider]
    if KIND_BY_URL[record["url"]] == "chat":
        parsed = adapter.parse_chat(data, spec)
    else:
        parsed = adapter.parse_embeddings([data], embedding_request(record["body"]), spec, token_count=None)
    billed = billed_spec(registry, spec, parsed)
    route = routes.Route(routes.NATIVE, {**meta, "billed_model": billed.id, "attempts": 1,
                                         "native_batch": provider_batch})
    charge = routes.bill(parsed, billed, route, clock.today())
    result = success_line(batch.id, cid, parsed.body, request_id=parsed.request_id, usage=parsed.usage,
                          cost=charge, meta=route.meta)
    return cid, result, "succeeded"


def error_result(batch: BatchInfo, cid: str, error: RequestFailed, meta: dict[str, Any],
                 provider_batch: str | None = None) -> Result:
    """An errored line (its HTTP status and error body kept), or one that could not go."""
    full = {**meta, "attempts": meta.get("attempts", 1 if provider_batch else 0)}
    if provider_batch:
        full.update(route=routes.NATIVE, native_batch=provider_batch)
    line = error_line(batch.id, cid, error, full)
    return cid, line, line["meta"]["outcome"]


def commit_error(store: Store, batch: BatchInfo, cid: str, error: RequestFailed, meta: dict[str, Any]) -> bool:
    """A line that cannot go, committed once with its reason."""
    _, line, outcome = error_result(batch, cid, error, meta)
    return store.commit(batch.id, cid, line, outcome, pool=batch.pool)
