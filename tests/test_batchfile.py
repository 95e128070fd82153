"""Submission validation: every bad line is reported with its number and a reason that says what to fix."""

from __future__ import annotations

import json

import fakeredis
import pytest

from producer.batchfile import read_batch
from producer.options import SubmitOptions
from producer.submit import SubmissionRejected, submit
from worker.settings import Settings

NOT_FOUND = {"error": {"message": 'model "openai/gpt-4o" not found', "type": "invalid_request_error",
                       "code": "model_not_found"}}


def lines(*objs: object) -> list[bytes]:
    return [o if isinstance(o, bytes) else json.dumps(o).encode() for o in objs]


def openai_line(cid: str, body: dict, url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


def hi(model: str = "google/gemini-3-flash", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def only_error(registry, *objs, **kw):  # type: ignore[no-untyped-def]
    parsed = read_batch(lines(*objs), registry, **kw)
    assert len(parsed.errors) == 1, parsed.errors
    return parsed.errors[0]


def test_both_line_formats_are_accepted(registry):
    parsed = read_batch(lines(openai_line("a", hi()), {"custom_id": "b", **hi()}, hi(),
                              {"model": "google/gemini-embedding-001", "input": "text"}), registry)
    assert parsed.errors == []
    assert [(ln.custom_id, ln.url) for ln in parsed.lines] == [
        ("a", "/v1/chat/completions"), ("b", "/v1/chat/completions"), ("request-3", "/v1/chat/completions"),
        ("request-4", "/v1/embeddings")]


def test_unknown_model_gives_the_exact_product_error(registry):
    err = only_error(registry, openai_line("x", hi("openai/gpt-4o")))
    assert err.number == 1 and err.custom_id == "x"
    assert err.error.to_openai() == NOT_FOUND
    assert str(err) == "line 1: " + json.dumps(NOT_FOUND)


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xc3\x28{}", "not valid UTF-8"),
        (b"\xff\xfe{}", "UTF-16-encoded"),
        ({"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": hi()}, "'method' must be"),
        ({"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": hi()}, "'url' must be"),
        ({"method": "POST", "url": "/v1/chat/completions", "body": hi()}, "'custom_id' must be a non-empty string"),
        ({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": "x"}, "'body' must be a JSON object"),
        ({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": hi(), "extra": 1}, "unknown field 'extra'"),
        ({"model": "google/gemini-3-flash"}, "exactly one of 'messages'"),
        ({"model": "google/gemini-3-flash", "messages": [], "input": "x"}, "(it has both)"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "'model' is required"),
        ({"model": "google/gemini-3-flash", "messages": []}, "body.messages"),
        ({"model": "google/gemini-3-flash", "messages": [{"role": "robot", "content": "x"}]}, "body.messages[0].role"),
        ({"model": "google/gemini-3-flash", "messages": [{"role": "user"}]}, "needs 'content'"),
        ({"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, "body.max_tokens"),
        ({"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "x"}], "stream": True}, "'stream' is not supported"),
        ({"model": "google/gemini-embedding-001", "messages": [{"role": "user", "content": "x"}]}, "is an embedding model; send it to /v1/embeddings"),
        ({"model": "google/gemini-3-flash", "input": "x"}, "is a chat model; send it to /v1/chat/completions"),
        ({"model": "anthropic/claude-haiku-5-5", "input": "x"}, "Anthropic offers no embeddings"),
        ({"model": "google/gemini-embedding-001", "input": []}, "must not be an empty list"),
    ],
)
def test_bad_lines_say_what_to_fix(registry, obj, needle):
    err = only_error(registry, obj)
    assert needle in err.error.message


def test_duplicate_custom_id_names_the_first_line(registry):
    parsed = read_batch(lines({"custom_id": "a", **hi()}, {"custom_id": "b", **hi()}, {"custom_id": "a", **hi()}), registry)
    assert [(e.number, e.error.message) for e in parsed.errors] == [(3, 'duplicate custom_id "a" (first used on line 1)')]


def test_retired_model_names_date_and_replacement(registry):
    err = only_error(registry, hi("anthropic/claude-opus-4-1"))
    assert err.error.code == "model_retired"
    assert "2026-08-05" in err.error.message and "anthropic/" in err.error.message


def test_a_parameter_the_model_rejects_fails_unless_dropping_is_asked_for(registry):
    line = hi("anthropic/claude-opus-5-5", temperature=0.3)
    err = only_error(registry, line)
    assert err.error.code == "unsupported_parameter"
    assert "temperature" in err.error.message and "anthropic/claude-opus-5-5" in err.error.message
    assert read_batch(lines(line), registry, drop_unsupported=True).errors == []


def test_empty_file_is_an_error(registry):
    parsed = read_batch([b"\n", b"   \n"], registry)
    assert "empty" in parsed.errors[0].error.message


def test_rejected_submission_enqueues_nothing(registry):
    conn = fakeredis.FakeRedis()
    with pytest.raises(SubmissionRejected, match="1 line is invalid; nothing was enqueued"):
        submit(conn, Settings(), registry, lines(hi(), hi("openai/gpt-4o")))
    assert conn.keys("*") == []


def test_keep_valid_records_bad_lines_as_errored_results(registry):
    from worker.store import Store

    conn = fakeredis.FakeRedis()
    raw = lines({"custom_id": "ok", **hi()}, {"custom_id": "bad", **hi("openai/gpt-4o")}, b"{oops", {"custom_id": "ok", **hi()})
    bid = submit(conn, Settings(), registry, raw, SubmitOptions(keep_valid=True)).batch_id
    store = Store(conn)
    status = store.status(bid)
    assert status["request_counts"] == {"total": 4, "succeeded": 0, "errored": 3, "canceled": 0, "expired": 0, "processing": 1}
    results = [r for r in store.iter_results(bid)]
    assert results[0] is None  # "ok" not processed yet
    by_id = {r["custom_id"]: r for r in results if r}
    assert set(by_id) == {"bad", "line-3", "line-4"}
    # a result line's error body is OpenAI's error-file form: the seed's three fields and `param`
    assert by_id["bad"]["response"]["body"] == {"error": {**NOT_FOUND["error"], "param": None}}
    assert by_id["bad"]["response"]["status_code"] == 400
    assert conn.llen("rq:queue:otb") == 1
