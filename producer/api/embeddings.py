"""`POST /v1/embeddings`: an embedding call answered by the workers (calls.py), as OpenAI's SDKs expect it
(the Python SDK asks for `encoding_format: base64` by default and decodes it itself)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from worker.schemas import EMBEDDINGS_URL

from .auth import Tenant, current_tenant
from .calls import handle
from .callschemas import embeddings_schema, openapi_body

router = APIRouter(prefix="/v1", tags=["calls"])


@router.post("/embeddings", summary="Create embeddings (google/gemini-embedding-001, ...)",
             openapi_extra=openapi_body(embeddings_schema()))
async def create_embeddings(request: Request, tenant: Tenant = Depends(current_tenant)) -> Any:
    _, answer = await handle(request, tenant, EMBEDDINGS_URL)
    return JSONResponse(answer.body(), headers=answer.headers)
