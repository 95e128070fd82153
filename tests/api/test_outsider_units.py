"""What an outsider's probing of the HTTP API found, pinned where no process is needed: a file deleted
while a batch reads it, keys pasted into URLs, the status of a batch being cancelled, provider errors
passed on, and the OpenAPI document /docs renders."""

from __future__ import annotations

import json
import logging

import fakeredis
import pytest
from openai.types import Batch

from producer.api import errors, filestore
from producer.api.batchcontext import BatchContext
from producer.api.batchcreate import start
from producer.api.batchobject import ZERO_COST, openai_status, to_openai
from producer.api.batchrecords import BatchRecord, new_batch_id
from producer.api.filestore import FileGone, FileStore
from worker.settings import Settings


@pytest.fixture
def conn() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def chat_line(custom_id: str) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "Hi"}]}}).encode() + b"\n"


def test_a_file_deleted_while_it_is_read_raises_instead_of_ending_short(conn, monkeypatch):
    monkeypatch.setattr(filestore, "CHUNK", 7)
    store = FileStore(conn)
    writer = store.writer("t")
    writer.write(b"123456\n" * 4)  # every chunk ends exactly at a line end: a cut there looks like a shorter file
    meta = writer.commit(filename="x.jsonl", purpose="batch", ttl=60)
    lines = store.lines(meta)
    assert next(lines) == b"123456"
    assert store.delete("t", meta.id)
    with pytest.raises(FileGone, match="deleted or expired while it was read"):
        list(lines)


def test_a_batch_whose_file_is_deleted_mid_read_fails_naming_that_not_a_line(conn, monkeypatch):
    monkeypatch.setattr(filestore, "CHUNK", 4096)
    ctx = BatchContext.of(conn, Settings(), hooks=[])
    writer = ctx.files.writer("acme")
    writer.write(b"".join(chat_line(f"r{i}") for i in range(200)))  # several chunks, cut mid-line below
    meta = writer.commit(filename="in.jsonl", purpose="batch", ttl=3600)
    real_chunks = FileStore.chunks

    def deleted_after_the_first_chunk(self: FileStore, m: filestore.FileMeta):  # type: ignore[no-untyped-def]
        for n, chunk in enumerate(real_chunks(self, m)):
            yield chunk
            if n == 0:
                self.delete(m.tenant, m.id)

    monkeypatch.setattr(FileStore, "chunks", deleted_after_the_first_chunk)
    record, _ = ctx.records.create(BatchRecord(new_batch_id(), "acme", "/v1/chat/completions", meta.id, 1_800_000_000),
                                   None, "me", 10_000)
    failed = start(ctx, record)
    assert failed.status == "failed" and failed.errors is not None
    (error,) = failed.errors
    assert error["line"] is None and error["code"] == "invalid_file"
    assert "deleted or expired while it was read" in error["message"]
    assert conn.keys("otb:batch:*") == []  # nothing of the half-read file was submitted


def test_a_cancelled_batch_stays_cancelling_until_it_is_cancelled_as_at_openai():
    rec = BatchRecord(new_batch_id(), "acme", "/v1/chat/completions", "file-1", 1_800_000_000, status="in_progress",
                      times={"cancelling_at": 1_800_000_010})
    counts = {"total": 2, "succeeded": 1, "errored": 0, "canceled": 1, "expired": 0, "processing": 0}
    engine = {"status": "cancelled", "request_counts": counts, "usage": {}, "cost": dict(ZERO_COST),
              "completed_at": 1_800_000_020.0}
    assert openai_status(rec, engine) == "cancelling"  # OpenAI: in_progress -> cancelling -> cancelled
    shown = to_openai(rec, engine)
    assert shown["finalizing_at"] is None
    Batch.model_validate(shown)


def test_a_provider_error_passed_on_has_openai_s_four_fields_and_is_not_retried_by_the_sdk():
    forwarded = errors.Forwarded(500, {"error": {"message": "google answered 500: boom", "type": "api_error",
                                                 "code": "internal"}})
    assert errors.body_of(forwarded) == {"error": {"message": "google answered 500: boom", "type": "api_error",
                                                   "param": None, "code": "internal"}}
    # the workers already retried it OTB_MAX_ATTEMPTS times: an SDK retry would run all of those again
    assert errors.headers_of(forwarded)["x-should-retry"] == "false"


def test_keys_in_a_request_line_are_redacted_from_the_log(caplog):
    from producer.api import redact

    key = "sk-otb-OAW1qs7ZvVqpBgKI7yyFkNJLqxOuSkr5ULlKNncNU1Y"
    logger = logging.getLogger("uvicorn.access")
    redact.install()
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/v1/models?api_key={key}", "1.1", 401)
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/v1/files/{key}", "1.1", 404)
    text = caplog.text
    assert key not in text and "OAW1qs7ZvVqpBgKI7yyFkNJLqxOuSkr5ULlKNncNU1Y" not in text
    assert text.count("sk-otb-***") == 2 and "/v1/files/sk-otb-***" in text


def test_a_missing_purpose_is_named_missing():
    from producer.api.files import _checked
    from producer.api.upload import UploadForm

    form = UploadForm(FileStore(fakeredis.FakeRedis()).writer("t"), 100)
    form.filename, form.file_field = "in.jsonl", "file"
    with pytest.raises(errors.ApiError, match="Missing required parameter: 'purpose'"):
        _checked(form)


def test_the_openapi_document_shows_the_error_answers_and_the_create_body():
    from producer.api.app import create_app

    schema = create_app(Settings(), fakeredis.FakeRedis()).openapi()
    create = schema["paths"]["/v1/batches"]["post"]
    for status in ("400", "401", "404", "429", "500"):
        assert status in create["responses"], status
    assert create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False  # an unknown parameter is a 400, as the document now says
    assert body["properties"]["endpoint"]["enum"] == ["/v1/chat/completions", "/v1/embeddings"]
    assert body["properties"]["completion_window"]["enum"] == ["24h"]


def test_the_openapi_document_matches_what_the_server_answers():
    """What schemathesis found against /openapi.json: the seed's model_not_found body has no `param`, an
    empty Idempotency-Key is refused, and a 405 names the methods the path takes."""
    from fastapi.testclient import TestClient

    from producer.api.app import create_app

    app = create_app(Settings(), fakeredis.FakeRedis())
    schema = app.openapi()
    assert schema["components"]["schemas"]["ErrorDetail"]["required"] == ["message", "type"]
    (idempotency,) = schema["paths"]["/v1/batches"]["post"]["parameters"]
    assert (idempotency["schema"]["minLength"], idempotency["schema"]["maxLength"]) == (1, 255)
    answer = TestClient(app).request("TRACE", "/v1/batches")
    assert answer.status_code == 405 and answer.json()["error"]["message"] == "Invalid URL (TRACE /v1/batches)"
    assert set(answer.headers["allow"].replace(" ", "").split(",")) <= {"GET", "POST"}  # (Starlette: the first route's)


def test_a_too_large_batch_create_names_its_own_limit_not_a_request_line_s():
    from fastapi.testclient import TestClient

    from producer.api.app import ServeOptions, create_app

    app = create_app(Settings(), fakeredis.FakeRedis(), ServeOptions(no_auth=True))
    answer = TestClient(app).post("/v1/batches", content=b'{"input_file_id": "' + b"x" * 100_000 + b'"}',
                                  headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.headers["x-should-retry"] == "false"
    assert "OTB_MAX_LINE_BYTES" not in answer.json()["error"]["message"]  # the create's limit is 64 KiB, not 8 MiB


def test_a_redis_that_does_not_answer_is_a_503_naming_no_host_and_logged_in_one_line(caplog):
    import socket

    import redis
    from fastapi.testclient import TestClient

    from producer.api.app import ServeOptions, create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    down = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    app = create_app(Settings(), down, ServeOptions(no_auth=True))
    with caplog.at_level(logging.WARNING):
        answer = TestClient(app).get("/v1/files")
    assert answer.status_code == 503 and answer.json()["error"]["type"] == "server_error"
    assert str(port) not in answer.text and "127.0.0.1" not in answer.text and "x-should-retry" not in answer.headers
    (record,) = [r for r in caplog.records if r.name == "otb.api"]
    assert record.exc_info is None and "GET /v1/files" in record.getMessage()
