"""Result lines in OpenAI's batch line format, checked against the `openai` SDK's own types."""

from __future__ import annotations

import re

from openai.types import ErrorObject

from worker.errors import BatchClosed, InvalidRequest, upstream_error
from worker.results import error_line, line_id


def test_an_error_answer_carries_all_four_fields_param_null_when_none() -> None:
    error = upstream_error("anthropic", 400, "invalid_request_error", "bad")
    line = error_line("b1", "x", error, {"model": "m"})
    body = line["response"]["body"]
    assert list(body["error"]) == ["message", "type", "param", "code"] and body["error"]["param"] is None
    ErrorObject.model_validate(body["error"])
    assert line["error"] is None and line["response"]["status_code"] == 400


def test_an_error_naming_a_parameter_keeps_it() -> None:
    line = error_line("b1", "x", InvalidRequest("bad temperature", param="temperature"), {"model": "m"})
    assert line["response"]["body"]["error"]["param"] == "temperature"


def test_no_answer_is_the_error_object_with_the_response_null() -> None:
    line = error_line("b1", "x", BatchClosed("batch_expired"), {"model": "m"})
    assert line["response"] is None and set(line["error"]) == {"code", "message"}
    assert line["error"]["code"] == "batch_expired"


def test_a_line_id_is_openais_batch_req_and_stable() -> None:
    assert re.fullmatch(r"batch_req_[0-9a-f]{24}", line_id("b1", "x")) and line_id("b1", "x") == line_id("b1", "x")
    assert line_id("b1", "x") != line_id("b1", "y")
