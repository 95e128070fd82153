"""`/v1/models`: the callable models and their prices (USD per 1M tokens), as `otb models --json` shows them.

An id holds a slash (`google/gemini-3-flash`): the route takes the rest of the path, so both
`/v1/models/google/gemini-3-flash` and the SDK's `/v1/models/google%2Fgemini-3-flash` find it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Request

from worker import clock
from worker.errors import ModelNotFound, RequestFailed
from worker.registry import Lifecycle, Registry, current_registry

from .auth import Tenant, current_tenant

router = APIRouter(prefix="/v1/models", tags=["models"])
MAX_ID = 200  # characters of an unknown id worth echoing


def _registry(request: Request) -> Registry:
    """The registry file as it is now (read again when it changes), like the workers see it."""
    return current_registry(request.app.state.settings.registry_path)


def catalog(registry: Registry) -> dict[str, Any]:
    """GET /v1/models: the models callable today, prices as JSON numbers (`otb models --json`'s shape,
    plus the dates below).

    The registry's prices are short decimals, which a float prints back exactly (0.075 stays 0.075).
    """
    today = clock.today()
    listing = registry.catalog(today)
    for entry in listing["data"]:
        entry["pricing"] = {k: float(v) for k, v in entry["pricing"].items()}
        entry.update(_dates(registry.models[entry["id"]].lifecycle))
    return listing


def _dates(lifecycle: Lifecycle) -> dict[str, Any]:
    """`created` (required by the SDKs' Model: the release day, 0 when unknown) and OpenAI's
    `shutdown_date` when a retirement is scheduled."""
    released = lifecycle.released_on
    dates: dict[str, Any] = {"created": int(dt.datetime(released.year, released.month, released.day,
                                                        tzinfo=dt.timezone.utc).timestamp()) if released else 0}
    if lifecycle.retires_on:
        dates["shutdown_date"] = lifecycle.retires_on.isoformat()
    return dates


@router.get("", summary="List the models you can call, with prices per 1M tokens")
def list_models(request: Request, tenant: Tenant = Depends(current_tenant)) -> dict[str, Any]:
    return catalog(_registry(request))


@router.get("/{model_id:path}", summary="Retrieve one model (ids hold a slash: google/gemini-3-flash)")
def retrieve_model(request: Request, model_id: str, tenant: Tenant = Depends(current_tenant)) -> dict[str, Any]:
    """One entry of the list; 404 (OpenAI's status for an unknown model) with the seed's exact body,
    or `model_retired` naming the replacement for a model that was callable once."""
    registry = _registry(request)
    for entry in catalog(registry)["data"]:
        if entry["id"] == model_id:
            return entry
    error: RequestFailed = ModelNotFound(model_id[:MAX_ID])
    if len(model_id) <= MAX_ID:
        try:
            registry.resolve(model_id, today=clock.today())
        except RequestFailed as exc:  # unknown, or retired (its message names the replacement)
            error = exc
    error.status_code = 404  # a registered id without a price is not callable either
    raise error
