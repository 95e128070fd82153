"""What the Messages API would refuse is refused at submit, on the real registry, before anything is queued.

`otb submit` validates a line by running the same adapter translation the worker runs, so these lines
fail there with one clear reason instead of costing a queued request and an upstream 400.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from producer.batchfile import read_batch
from worker.registry import Registry

MODEL = "anthropic/claude-haiku-5-5"


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": "q", "model": MODEL, "messages": [{"role": "user", "content": list(parts)}]}


def image(media: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,iVBORw0KGgo="}}


@pytest.mark.parametrize("line, param, words", [
    (user(image("image/heic")), "messages[0].content[0]", "image/heic"),
    (user({"type": "text", "text": "Q", "cache_control": {"type": "ephemeral", "ttl": "24h"}}),
     "messages[0].content[0].cache_control", "'5m' or '1h'"),
    ({**user({"type": "text", "text": "Q"}), "response_format": {"type": "json_schema", "json_schema": {
        "name": "m", "schema": {"type": "object", "additionalProperties": {"type": "string"}}}}},
     "response_format", "additionalProperties"),
    ({**user({"type": "text", "text": "Q"}), "stop": "\n"}, "stop", "whitespace"),
])
def test_lines_anthropic_would_refuse_fail_at_submit(registry: Registry, line: dict[str, Any], param: str,
                                                     words: str) -> None:
    parsed = read_batch([json.dumps(line).encode()], registry)
    assert parsed.lines == [] and len(parsed.errors) == 1
    error = parsed.errors[0].error.to_openai()["error"]
    assert error["param"] == param and words in error["message"]


def test_what_can_be_sent_another_way_passes(registry: Registry) -> None:
    line = {**user({"type": "text", "text": ""}, image("image/jpg"), {"type": "text", "text": "What is it?"}),
            "response_format": {"type": "json_object"}}
    parsed = read_batch([json.dumps(line).encode()], registry)
    assert parsed.errors == [] and len(parsed.lines) == 1
