"""/v1/files through the real SDK against a real `otb serve` and redis-server: the round trip, cursor
pages, lifetimes, tenants, hostile ids and hostile uploads."""

from __future__ import annotations

import hashlib
import http.client
import io
import json

import httpx
import openai
import pytest
from openai.types import FileDeleted, FileObject

from bench.harness import ServerProcess

from .conftest import sdk

pytestmark = pytest.mark.e2e

LINES = b'{"custom_id": "a", "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "Hi"}]}\n' * 3


def upload(client: openai.OpenAI, data: bytes = LINES, name: str = "in.jsonl", **kwargs: object) -> FileObject:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch", **kwargs)  # type: ignore[arg-type]


def file_keys(api_redis) -> list[bytes]:
    return sorted(api_redis.client().scan_iter("otb:tenant:*:file:*"))


def test_round_trip_create_retrieve_content_list_delete(acme):
    raw = acme.files.with_raw_response.create(file=("in.jsonl", io.BytesIO(LINES)), purpose="batch")
    created = FileObject.model_validate(raw.http_response.json())
    assert (created.bytes, created.filename, created.purpose, created.object) == (len(LINES), "in.jsonl", "batch", "file")
    assert created.expires_at == created.created_at + 30 * 24 * 3600  # batch files: 30 days by default
    got = acme.files.with_raw_response.retrieve(created.id).http_response.json()
    assert FileObject.model_validate(got) == created
    assert acme.files.content(created.id).read() == LINES
    assert created.id in [f.id for f in acme.files.list()]
    deleted = acme.files.with_raw_response.delete(created.id).http_response.json()
    assert FileDeleted.model_validate(deleted) == FileDeleted(id=created.id, object="file", deleted=True)
    with pytest.raises(openai.NotFoundError):
        acme.files.retrieve(created.id)
    assert created.id not in [f.id for f in acme.files.list()]


def test_auto_pager_lists_every_file_once_in_either_order(server, env, tmp_path):
    from .conftest import create_key

    client = sdk(server, create_key(env, "pager"))
    made = [upload(client, f"{i}\n".encode()).id for i in range(250)]
    newest_first = [f.id for f in client.files.list(limit=7)]
    assert newest_first == made[::-1]  # every file exactly once, newest first (OpenAI's default order)
    assert [f.id for f in client.files.list(limit=11, order="asc")] == made
    first = client.files.list(limit=250)
    assert (first.has_more, len(first.data)) == (False, 250)
    page = client.files.with_raw_response.list(limit=100).http_response.json()
    assert (page["object"], page["has_more"], page["first_id"], page["last_id"]) == (
        "list", True, made[-1], made[-100])
    # a cursor whose file was deleted still pages on from where it stood
    client.files.delete(made[-100])
    rest = client.files.list(limit=100, after=made[-100])
    assert [f.id for f in rest.data] == made[-101:-201:-1]


def test_expires_after_sets_the_lifetime_in_the_object_and_in_redis(acme, api_redis):
    f = upload(acme, expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600
    ttl = api_redis.client().ttl(f"otb:tenant:acme:file:{f.id}:data")
    assert 3500 < ttl <= 3600
    for bad in ({"anchor": "created_at", "seconds": 5}, {"anchor": "last_active_at", "seconds": 3600}):
        with pytest.raises(openai.BadRequestError) as caught:
            upload(acme, expires_after=bad)
        assert caught.value.param.startswith("expires_after")


def test_another_tenants_file_is_exactly_an_unknown_id(acme, bob):
    mine = upload(acme)

    def answer(call) -> tuple[int, dict]:
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        return caught.value.status_code, caught.value.response.json()

    unknown = "file-" + "0" * 24
    for call in (bob.files.retrieve, bob.files.delete, lambda i: bob.files.content(i).read()):
        theirs, never = answer(lambda: call(mine.id)), answer(lambda: call(unknown))
        assert theirs == (never[0], json.loads(json.dumps(never[1]).replace(unknown, mine.id)))
    assert mine.id not in [f.id for f in bob.files.list()]
    assert acme.files.retrieve(mine.id).id == mine.id  # still there for its owner


@pytest.mark.parametrize("path", ["/v1/files/..", "/v1/files/../files", "/v1/files/%2e%2e", "/v1/files/a/b",
                                  "/v1/files/file-x%2F..%2Fsecret", "/v1/files/%2F", "/v1/files/" + "a" * 10_000,
                                  "/v1/files/" + "file-0" * 2_000 + "/content"])
def test_hostile_ids_answer_an_openai_404(server, keys, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for method in ("GET", "DELETE"):
        conn.request(method, path, headers={"Authorization": f"Bearer {keys['acme']}"})
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 404, (method, path, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert len(body["error"]["message"]) < 300


def test_a_huge_request_line_is_refused_and_the_server_lives_on(server, acme, keys):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v1/files/" + "a" * 200_000, headers={"Authorization": f"Bearer {keys['acme']}"})
    assert 400 <= conn.getresponse().status < 500
    assert acme.models.retrieve("google/gemini-3-flash").id == "google/gemini-3-flash"


def post_raw(server: ServerProcess, key: str, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/files", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": content_type})


@pytest.mark.parametrize("body,content_type,param", [
    (b'{"purpose": "batch"}', "application/json", None),
    (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{}\n", "multipart/form-data; boundary=xyz", None),
    (b"garbage without any boundary at all", "multipart/form-data; boundary=xyz", None),
    (b"", "multipart/form-data", None),
])
def test_malformed_uploads_are_400_and_store_nothing(server, keys, api_redis, body, content_type, param):
    before = file_keys(api_redis)
    response = post_raw(server, keys["acme"], body, content_type)
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.headers["x-should-retry"] == "false"
    assert file_keys(api_redis) == before


@pytest.mark.parametrize("name,data,purpose,param", [
    ("in.csv", LINES, "batch", "file"),
    ("in.jsonl", b"", "batch", "file"),
    ("in.jsonl", LINES, "fine-tune", "purpose"),
])
def test_uploads_that_are_no_batch_file_are_400(acme, api_redis, name, data, purpose, param):
    before = file_keys(api_redis)
    with pytest.raises(openai.BadRequestError) as caught:
        acme.files.create(file=(name, io.BytesIO(data)), purpose=purpose)  # type: ignore[arg-type]
    assert caught.value.param == param
    assert file_keys(api_redis) == before


def test_250_mb_upload_is_413_with_nothing_stored(acme, server, api_redis, tmp_path):
    big = tmp_path / "big.jsonl"
    with big.open("wb") as fh:
        fh.truncate(250 * 1024 * 1024)  # sparse: costs no disk
    before, rss_before = file_keys(api_redis), server.peak_rss_mb()
    with pytest.raises(openai.APIStatusError) as caught:
        acme.files.create(file=big, purpose="batch")
    assert caught.value.status_code == 413 and caught.value.code == "file_too_large"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert file_keys(api_redis) == before
    assert server.peak_rss_mb() - rss_before < 50


def test_a_stream_without_length_is_cut_at_the_limit_and_nothing_stays(env, keys, api_redis, tmp_path):
    small = ServerProcess(env, "--max-file-mb", "1", log=tmp_path / "small.log")
    try:
        def body():  # chunked: no Content-Length to refuse up front
            yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n'
            for _ in range(40):
                yield b"x" * 65536 + b"\n"
            yield b"\r\n--b--\r\n"

        before = file_keys(api_redis)
        response = httpx.post(f"{small.base_url}/files", content=body(), timeout=30,
                              headers={"Authorization": f"Bearer {keys['acme']}",
                                       "Content-Type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413
        assert file_keys(api_redis) == before
    finally:
        small.stop()


def test_a_200_mb_100k_line_upload_streams_through_one_copy(acme, server, api_redis, tmp_path):
    """Neither the server's memory nor Redis holds more than about one copy; the bytes come back intact."""
    line = b'{"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "' + b"x" * 1980 + b'"}]}\n'
    path = tmp_path / "200mb.jsonl"
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for _ in range(100_000):
            fh.write(line)
            digest.update(line)
    size = path.stat().st_size
    conn = api_redis.client()
    rss_before, redis_before = server.peak_rss_mb(), conn.info("memory")["used_memory"]
    f = acme.files.create(file=path, purpose="batch")
    redis_growth = conn.info("memory")["used_memory"] - redis_before
    rss_growth = server.peak_rss_mb() - rss_before
    print(f"\n{size / 2**20:.0f} MiB upload: server peak RSS +{rss_growth:.1f} MiB, Redis +{redis_growth / 2**20:.1f} MiB")
    assert f.bytes == size
    assert redis_growth < 1.1 * size  # 1 MiB chunks were 1.25x (jemalloc size classes)
    assert rss_growth < 64
    back = hashlib.sha256()
    with acme.files.with_streaming_response.content(f.id) as response:
        for chunk in response.iter_bytes():
            back.update(chunk)
    assert back.hexdigest() == digest.hexdigest()
    assert server.peak_rss_mb() - rss_before < 64
    acme.files.delete(f.id)
