"""`POST /v1/chat/completions`: the seed's call, answered by the workers (calls.py), plain or streamed.

The workers never stream from the providers: with `stream: true` the whole answer comes in one
content chunk, then the chunk with `finish_reason`, a usage chunk when `stream_options.include_usage`,
and `data: [DONE]`, so SDK code that iterates a stream works unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from worker.schemas import CHAT_URL

from .auth import Tenant, current_tenant
from .calls import handle
from .callschemas import chat_schema, openapi_body

router = APIRouter(prefix="/v1", tags=["calls"])


@router.post("/chat/completions", summary="Create a chat completion (any registry model: google/gemini-3-flash, ...)",
             openapi_extra=openapi_body(chat_schema()))
async def create_chat_completion(request: Request, tenant: Tenant = Depends(current_tenant)) -> Any:
    call, answer = await handle(request, tenant, CHAT_URL)
    body = answer.body()
    if call.stream:
        return StreamingResponse(sse(chunks(body, call.include_usage)), media_type="text/event-stream",
                                 headers=answer.headers)
    return JSONResponse(body, headers=answer.headers)


def chunks(body: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """A finished chat.completion as OpenAI's chat.completion.chunk sequence: per choice its whole
    message as one delta, then its finish_reason; the usage chunk (with our `cost`) last."""
    head = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}
    for choice in body.get("choices", []):
        yield {**head, "choices": [{"index": choice.get("index", 0), "delta": delta(choice.get("message") or {}),
                                    "logprobs": None, "finish_reason": None}]}
        yield {**head, "choices": [{"index": choice.get("index", 0), "delta": {}, "logprobs": None,
                                    "finish_reason": choice.get("finish_reason") or "stop"}]}
    if include_usage:
        yield {**head, "choices": [], "usage": body.get("usage"), "cost": body.get("cost")}


def delta(message: dict[str, Any]) -> dict[str, Any]:
    """A message as a stream delta: tool calls carry their position (`index`), as streamed ones do."""
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    out.setdefault("role", "assistant")
    if message.get("tool_calls"):
        out["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    return out


def sse(events: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for event in events:
        yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
    yield b"data: [DONE]\n\n"
