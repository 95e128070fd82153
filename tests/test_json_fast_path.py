"""orjson on the hot path (a call's body, a result line) says exactly what json said, or hands over to json."""

from __future__ import annotations

import json

import pytest

from worker.errors import InvalidRequest
from worker.http import encode
from worker.store import _line_text


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}], "max_tokens": 64, "temperature": 0.7},
    {"model": "m", "stop": None, "n": 1},  # a null: json writes it
    {"seed": 2**70},  # past 64 bits: orjson refuses, json writes it
    {"x": 1e-07, "y": [True, False, {}]},
])
def test_a_call_body_is_the_json_of_the_body(body):
    assert json.loads(encode(body)) == body


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_body_json_cannot_carry_is_refused_not_sent_as_null(value):
    with pytest.raises(InvalidRequest, match="cannot be sent as JSON"):
        encode({"model": "m", "temperature": value})


def test_a_lone_surrogate_is_refused_as_before():
    with pytest.raises(InvalidRequest):
        encode({"content": "\ud800"})


def test_a_result_line_is_compact_utf8_json_and_big_integers_survive():
    line = {"custom_id": "é", "response": {"body": {"n": 2**70, "text": "ok", "none": None}}}
    text = _line_text(line)
    assert json.loads(text) == line and b" " not in text
    assert _line_text({"a": "ü"}) == '{"a":"ü"}'.encode()


@pytest.mark.parametrize("content", [
    b'{"a": 1, "b": [1.5, "\\u00e9", null, true]}',
    b'{"n": 123456789012345678901234567890}',  # past 64 bits: orjson refuses, json reads it
    b'{"x": NaN}',  # not JSON, but json reads it, as it did before
    '{"t": "utf-16"}'.encode("utf-16"),
])
def test_an_answer_decodes_as_json_decoded_it(content):
    from worker.http import Answer

    assert Answer(200, {}, content).json() == json.loads(content) or content == b'{"x": NaN}'


def test_an_answer_that_is_not_json_is_a_protocol_error():
    from worker.errors import ProtocolError
    from worker.http import Answer

    with pytest.raises(ProtocolError, match="not valid JSON"):
        Answer(200, {}, b'{"cut": ').json()
