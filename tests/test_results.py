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


def test_a_success_line_s_usage_is_the_usage_s_model_dump() -> None:
    """_meta copies the fields directly (a fifth of model_dump's cost): a field model_dump would
    shape differently (a computed field, a serializer, an alias) must show up here."""
    from decimal import Decimal

    from worker.results import success_line
    from worker.schemas import Cost, Usage

    usage = Usage(input_tokens=1, cache_read_tokens=2, cache_write_5m_tokens=3, cache_write_1h_tokens=4,
                  output_tokens=5, reasoning_tokens=1, estimated=True)
    line = success_line("b1", "x", {}, request_id=None, usage=usage, cost=Cost(total=Decimal("0.5")), meta={})
    assert line["meta"]["usage"] == usage.model_dump() and line["cost"]["total"] == "0.5"
