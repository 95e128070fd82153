"""The chat and embeddings request bodies as /docs and /openapi.json show them.

The routes read the raw body themselves, so what a call accepts, and its errors, stay those of
`otb submit`: the schemas here are only documentation, drawn from the very models that validate
(worker/schemas.py `ChatRequest`, `EmbeddingRequest`), plus what only the HTTP call takes (`stream`,
`stream_options`). They are inlined (no `$ref`), so each route's schema stands alone in the document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from worker.schemas import ChatRequest, EmbeddingRequest

CHAT_EXAMPLE = {"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "Hello"}]}
EMBEDDINGS_EXAMPLE = {"model": "google/gemini-embedding-001", "input": ["Hello"]}
STREAM = {"type": ["boolean", "null"], "default": None,
          "description": "Answer as `text/event-stream` chat.completion.chunk events and a final `data: [DONE]` "
                         "(the whole message arrives in one chunk: the workers do not stream from the providers)."}
STREAM_OPTIONS = {"type": ["object", "null"], "default": None, "additionalProperties": True,
                  "properties": {"include_usage": {"type": "boolean", "description":
                                                   "A last chunk carries `usage` (and our `cost`)."}}}


def chat_schema() -> dict[str, Any]:
    """A chat completion body: model, messages (role, content as text or parts, tool calls), limits,
    sampling, tools, response_format, stream. Unknown fields are passed to the model's adapter."""
    schema = inlined(ChatRequest)
    schema["properties"].update(stream=STREAM, stream_options=STREAM_OPTIONS)
    schema.update(title="ChatCompletionRequest", example=CHAT_EXAMPLE)
    return schema


def embeddings_schema() -> dict[str, Any]:
    """An embeddings body: model, input (a string or a list of strings), dimensions, encoding_format."""
    schema = inlined(EmbeddingRequest)
    schema.update(title="EmbeddingsRequest", example=EMBEDDINGS_EXAMPLE)
    return schema


def inlined(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every `$ref` replaced by its definition. The unions that pick their
    branch from the value are `anyOf` (the first branch that fits), not `oneOf`: a text part also fits the
    catch-all part."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**defs[node["$ref"].rsplit("/", 1)[-1]], **rest})
        return {("anyOf" if k == "oneOf" else k): walk(v) for k, v in node.items()}

    return dict(walk(schema))


def openapi_body(schema: dict[str, Any]) -> dict[str, Any]:
    """A route's `openapi_extra`: its JSON request body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
