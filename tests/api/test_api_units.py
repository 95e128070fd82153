"""Pure parts of the HTTP API: the error mapper, the file store's chunks and pages, the key store."""

from __future__ import annotations

from decimal import Decimal

import fakeredis
import pytest

from producer.api import errors, filestore
from producer.api.tenants import KeyStore, Tenant, is_loopback, parse_usd
from producer.api.errors import ApiError
from producer.api.filestore import FileStore
from worker import clock
from worker.errors import ConfigError, ModelNotFound


@pytest.fixture
def conn() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def test_error_headers_say_what_a_retry_can_do():
    assert errors.headers_of(ApiError(404, "x", code=None)) == {"x-should-retry": "false"}
    assert errors.headers_of(ApiError(429, "x", code="insufficient_quota")) == {"x-should-retry": "false"}
    assert errors.headers_of(ApiError(429, "x", code="rate_limit_exceeded", retry_after=0.25)) == {
        "retry-after": "1", "retry-after-ms": "250"}
    assert errors.headers_of(ApiError(500, "x", code=None)) == {}
    assert errors.headers_of(errors.Unanswered("no answer", code="upstream_unreachable")) == {"x-should-retry": "false"}


def test_error_bodies_carry_four_fields_except_the_seeds_exact_one():
    assert errors.body_of(ApiError(400, "m", code="c", param="p")) == {
        "error": {"message": "m", "type": "invalid_request_error", "param": "p", "code": "c"}}
    assert errors.body_of(ModelNotFound("openai/gpt-4o")) == {"error": {
        "message": 'model "openai/gpt-4o" not found', "type": "invalid_request_error", "code": "model_not_found"}}


def test_lines_span_chunk_boundaries(conn, monkeypatch):
    monkeypatch.setattr(filestore, "CHUNK", 7)
    store = FileStore(conn)
    writer = store.writer("t")
    data = b'{"a": 1}\n\n{"b": 22}\r\n{"c": 333}'
    for i in range(0, len(data), 3):
        writer.write(data[i:i + 3])
    meta = writer.commit(filename="x.jsonl", purpose="batch", ttl=60)
    assert conn.llen(f"otb:tenant:t:file:{meta.id}:data") == 5  # 32 bytes in chunks of 7
    assert b"".join(store.chunks(meta)) == data
    assert list(store.lines(meta)) == [b'{"a": 1}', b"", b'{"b": 22}', b'{"c": 333}']
    assert (meta.bytes, meta.lines) == (len(data), 4)


def test_an_aborted_upload_leaves_nothing(conn, monkeypatch):
    monkeypatch.setattr(filestore, "CHUNK", 4)
    writer = FileStore(conn).writer("t")
    writer.write(b"0123456789")
    assert conn.ttl(f"otb:tenant:t:file:{writer.id}:data") <= filestore.STAGING_TTL
    writer.abort()
    assert conn.keys("*") == []


def test_pages_skip_and_forget_expired_files(conn):
    store = FileStore(conn)
    with clock.pinned("2026-12-02"):
        short = store.writer("t")
        short.write(b"1\n")
        gone = short.commit(filename="a.jsonl", purpose="batch", ttl=3600)
        kept = [store.writer("t") for _ in range(3)]
        metas = []
        for w in kept:
            w.write(b"2\n")
            metas.append(w.commit(filename="b.jsonl", purpose="batch", ttl=None))
    with clock.pinned("2026-12-03"):  # a day later: the short-lived file is past its expires_at
        files, more = store.page("t", after=None, limit=10, order="asc")
        assert [f.id for f in files] == [m.id for m in metas] and not more
        assert store.get("t", gone.id) is None
        assert conn.zscore("otb:tenant:t:files", gone.id) is None
        assert store.get("other", metas[0].id) is None


def test_key_store_keeps_hashes_and_refuses_revoked_keys(conn):
    keys = KeyStore(conn)
    made = keys.create("acme", rpm=5, max_cost=Decimal("2.50"), webhook_url="https://example.test/hook")
    assert made.key.startswith("sk-otb-") and made.webhook_secret.startswith("whsec_")
    assert keys.lookup(made.key) == Tenant("acme", rpm=5, max_cost=Decimal("2.50"), webhook_url="https://example.test/hook")
    stored = b"".join(k + b"".join(conn.hgetall(k).values()) if conn.type(k) == b"hash" else k for k in conn.keys("*"))
    assert made.key.encode() not in stored
    keys.revoke("acme")
    assert keys.lookup(made.key) is None
    assert keys.list()[0]["status"] == "revoked"
    with pytest.raises(ConfigError):
        keys.revoke("acme")


@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
                                     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
                                     ("example.com", False)])
def test_loopback_hosts(host, ok):
    assert is_loopback(host) is ok


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "inf", ""])
def test_max_cost_must_be_a_positive_amount(text):
    with pytest.raises(ConfigError):
        parse_usd(text)
