"""The documented call bodies: drawn from the models that validate, self-contained, and true to what passes."""

from __future__ import annotations

import json

import pytest

from producer.api.callschemas import chat_schema, embeddings_schema
from worker.schemas import chat_request, embedding_request


def test_the_chat_schema_names_what_a_call_takes():
    schema = chat_schema()
    assert schema["required"] == ["model", "messages"] and schema["additionalProperties"] is True
    props = schema["properties"]
    assert props["messages"]["type"] == "array" and props["messages"]["minItems"] == 1
    assert props["temperature"]["anyOf"][0] == {"maximum": 2, "minimum": 0, "type": "number"}
    assert props["stream"]["type"] == ["boolean", "null"] and "include_usage" in props["stream_options"]["properties"]
    parts = props["messages"]["items"]["properties"]["content"]["anyOf"][0]["anyOf"][1]["items"]["anyOf"]
    assert [p["title"] for p in parts] == ["TextPart", "RefusalPart", "ImagePart", "OtherPart"]
    assert "$ref" not in json.dumps(schema) and "oneOf" not in json.dumps(schema)


def test_the_embeddings_schema_names_what_a_call_takes():
    schema = embeddings_schema()
    assert schema["required"] == ["model", "input"]
    assert schema["properties"]["encoding_format"]["anyOf"][0]["enum"] == ["float", "base64"]


@pytest.mark.parametrize("schema, parse", [(chat_schema, chat_request), (embeddings_schema, embedding_request)])
def test_the_examples_pass_the_real_validation(schema, parse):
    parse(schema()["example"])
