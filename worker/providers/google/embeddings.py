"""Gemini embeddings: batchEmbedContents in slices of 100, countTokens for the exact input tokens.

batchEmbedContents reports no usage on most models, so the count comes from countTokens, and only when
that fails too from an estimate (which the usage then says it is).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from ...errors import InvalidRequest, ProtocolError
from ...registry import ModelSpec
from ...schemas import EmbeddingRequest, Usage
from ...tokens import text_tokens
from ..base import Parsed, Prepared, UpstreamCall

EMBED_BATCH_LIMIT = 100  # batchEmbedContents refuses more requests per call


def prepare_embeddings(request: EmbeddingRequest, spec: ModelSpec, *, api_version: str) -> Prepared:
    """batchEmbedContents calls of at most 100 inputs each, in input order."""
    inputs = request.inputs()
    rules = spec.rules
    if rules.max_inputs is not None and len(inputs) > rules.max_inputs:
        raise InvalidRequest(f"'input' has {len(inputs)} items; {spec.id} takes at most {rules.max_inputs}",
                             param="input")
    if request.dimensions is not None and rules.dimensions:
        low, high = min(rules.dimensions), max(rules.dimensions)
        if not low <= request.dimensions <= high:
            raise InvalidRequest(f"'dimensions' must be between {low} and {high} for {spec.id}", param="dimensions")
    extra = {"outputDimensionality": request.dimensions} if request.dimensions is not None else {}
    items = [{"model": f"models/{spec.upstream}", "content": {"parts": [{"text": s}]}, **extra} for s in inputs]
    path = f"/{api_version}/models/{spec.upstream}:batchEmbedContents"
    calls = [UpstreamCall("POST", path, json={"requests": items[k:k + EMBED_BATCH_LIMIT]})
             for k in range(0, len(items), EMBED_BATCH_LIMIT)]
    return Prepared(calls=calls)


def prepare_count_tokens(request: EmbeddingRequest, spec: ModelSpec, *, api_version: str) -> UpstreamCall:
    """batchEmbedContents reports no tokens; countTokens gives the exact billed count."""
    contents = [{"role": "user", "parts": [{"text": s}]} for s in request.inputs()]
    return UpstreamCall("POST", f"/{api_version}/models/{spec.upstream}:countTokens", json={"contents": contents})


def parse_count_tokens(data: dict[str, Any]) -> int:
    total = data.get("totalTokens") if isinstance(data, dict) else None
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise ProtocolError("Gemini countTokens answer has no 'totalTokens' count")
    return total


def estimate_tokens(texts: list[str]) -> int:
    """About 4 characters per token (Google's rule of thumb), at least 1 per text; flagged as estimated."""
    return sum(max(1, text_tokens(t)) for t in texts)  # text_tokens is 0 only for empty text


def parse_embeddings(
    responses: list[dict[str, Any]], request: EmbeddingRequest, spec: ModelSpec, *, token_count: int | None
) -> Parsed:
    """Join the batch answers into one OpenAI embeddings list, in input order."""
    vectors = [v for r, resp in enumerate(responses) for v in _vectors(resp, r)]
    inputs = request.inputs()
    if len(vectors) != len(inputs):
        raise ProtocolError(f"Gemini returned {len(vectors)} embeddings for {len(inputs)} inputs")
    usage = _embedding_usage(responses, inputs, token_count)
    as_base64 = request.encoding_format == "base64"
    data = [{"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v}
            for i, v in enumerate(vectors)]
    body = {"object": "list", "data": data, "model": spec.id, "usage": usage.openai_embedding_usage()}
    return Parsed(body=body, usage=usage)


def _vectors(response: Any, r: int) -> list[list[float]]:
    embeddings = response.get("embeddings") if isinstance(response, dict) else None
    if not isinstance(embeddings, list):
        raise ProtocolError(f"Gemini batchEmbedContents answer {r} has no 'embeddings' list")
    vectors = []
    for e, emb in enumerate(embeddings):
        values = emb.get("values") if isinstance(emb, dict) else None
        if not isinstance(values, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in values
        ):
            raise ProtocolError(f"Gemini answer {r} field 'embeddings[{e}].values' is not a list of numbers")
        vectors.append([float(x) for x in values])
    return vectors


def _embedding_usage(responses: list[dict[str, Any]], inputs: list[str], token_count: int | None) -> Usage:
    """Reported usage beats countTokens, which beats the estimate (the only case marked estimated)."""
    reported = [(resp.get("usageMetadata") or {}).get("promptTokenCount") for resp in responses]
    counts = [n for n in reported if isinstance(n, int) and not isinstance(n, bool)]
    if reported and len(counts) == len(reported):
        return Usage(input_tokens=sum(counts))
    if token_count is not None:
        return Usage(input_tokens=token_count)
    return Usage(input_tokens=estimate_tokens(inputs), estimated=True)


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
