"""The emulator's native batch APIs over real HTTP, driven the way a client drives them.

Anthropic Message Batches (create, retrieve, list, cancel, results, delete) and Gemini Batch Mode
(batchGenerateContent, asyncBatchEmbedContent, batches get/list/cancel/delete, the resumable Files
upload and the download). A job's timeline follows worker.clock, so most tests give a job a long
`#emu:batch-delay` and move the clock instead of sleeping: no timing is asserted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from worker import clock
from worker.emulator import EmulatorConfig, RunningEmulator, start_background
from worker.registry import Registry, parse_registry

A = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
G = {"x-goog-api-key": "k"}
FLASH = "gemini-2.5-flash"


def _registry() -> Registry:
    price = {"input": 1, "output": 2, "cache_read": 0.1, "cache_write": 1.25}
    return parse_registry({
        "providers": {"anthropic": {"api_version": "2023-06-01"}, "google": {"api_version": "v1beta"}},
        "models": [
            {"id": "anthropic/claude-x", "provider": "anthropic", "upstream": "claude-x", "kind": "chat",
             "pricing": price},
            {"id": "anthropic/claude-old", "provider": "anthropic", "upstream": "claude-old-1", "kind": "chat",
             "lifecycle": {"status": "retired", "retires_on": "2026-01-01"}},
            {"id": "google/gemini-old", "provider": "google", "upstream": "gemini-2.0-flash", "kind": "chat",
             "lifecycle": {"status": "retired", "retires_on": "2026-06-01"}},
        ],
    })


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    config = EmulatorConfig(seed=5, batch_delay_s=0.2, anthropic_batch_max_requests=50,
                            anthropic_batch_max_bytes=64 * 1024, gemini_inline_max_bytes=32 * 1024, batch_cancel_s=30)
    with start_background(config, _registry()) as running:
        yield running


@pytest.fixture()
def client(emu: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=10) as c:
        yield c


def later(seconds: float) -> Any:
    """The clock moved `seconds` ahead (it keeps ticking), for the emulator thread too."""
    return clock.pinned(clock.now() + seconds)


def wait_for(check: Callable[[], bool]) -> None:
    """Poll until `check` holds (a generous deadline only to stop a hang; nothing timed is asserted)."""
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


# -- Anthropic Message Batches ---------------------------------------------------------------------

def params(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": text}], **extra}


def a_create(client: httpx.Client, requests: list[dict[str, Any]]) -> httpx.Response:
    return client.post("/v1/messages/batches", json={"requests": requests}, headers=A)


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def a_batch(client: httpx.Client, requests: list[dict[str, Any]]) -> dict[str, Any]:
    return ok(a_create(client, requests))


def a_get(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    return ok(client.get(f"/v1/messages/batches/{batch_id}", headers=A))


def a_results(client: httpx.Client, batch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    r = client.get(batch["results_url"], headers=A)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/binary")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == len({x["custom_id"] for x in lines})
    return {x["custom_id"]: x["result"] for x in lines}


def test_anthropic_create_poll_results_match_realtime(client: httpx.Client, emu: RunningEmulator) -> None:
    before = emu.stats()["by_path"]
    texts = [f"question number {i}" for i in range(6)]
    batch = a_batch(client, [{"custom_id": f"q-{i}", "params": params(t)} for i, t in enumerate(texts)])
    assert batch["id"].startswith("msgbatch_") and batch["type"] == "message_batch"
    assert batch["processing_status"] == "in_progress" and batch["results_url"] is None
    assert batch["request_counts"] == {"processing": 6, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    assert batch["ended_at"] is None and batch["cancel_initiated_at"] is None and batch["archived_at"] is None
    assert batch["expires_at"] > batch["created_at"]
    wait_for(lambda: a_get(client, batch["id"])["processing_status"] == "ended")
    done = a_get(client, batch["id"])
    assert done["request_counts"]["succeeded"] == 6 and done["ended_at"] is not None
    assert done["results_url"] == f"{emu.url}/v1/messages/batches/{batch['id']}/results"
    results = a_results(client, done)
    for i, text in enumerate(texts):
        got = results[f"q-{i}"]
        assert got["type"] == "succeeded" and got["message"]["usage"]["service_tier"] == "batch"
        realtime = client.post("/v1/messages", json=params(text), headers=A).json()
        assert realtime["usage"]["service_tier"] == "standard"
        for message in (got["message"], realtime):
            message.pop("id"), message["usage"].pop("service_tier")
        assert got["message"] == realtime
    after = emu.stats()
    assert after["by_path"]["messages.batches.create"] == before.get("messages.batches.create", 0) + 1
    assert after["batch_items"]["claude-x"] >= 6


def test_anthropic_params_are_refused_only_in_the_results(client: httpx.Client) -> None:
    batch = a_batch(client, [
        {"custom_id": "ok", "params": params("fine")},
        {"custom_id": "stream", "params": params("x", stream=True)},
        {"custom_id": "speed", "params": params("x", speed="fast")},
        {"custom_id": "no-max", "params": {"model": "claude-x", "messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "overloaded", "params": params("#emu:fail=529")},
        {"custom_id": "retired", "params": {**params("x"), "model": "claude-old-1"}},
    ])
    assert batch["request_counts"]["processing"] == 6
    wait_for(lambda: a_get(client, batch["id"])["processing_status"] == "ended")
    done = a_get(client, batch["id"])
    assert done["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 5, "canceled": 0, "expired": 0}
    results = a_results(client, done)
    kinds = {cid: r["error"]["error"]["type"] for cid, r in results.items() if r["type"] == "errored"}
    assert kinds == {"stream": "invalid_request_error", "speed": "invalid_request_error",
                     "no-max": "invalid_request_error", "overloaded": "overloaded_error",
                     "retired": "not_found_error"}
    assert results["stream"]["error"]["type"] == "error"
    assert "stream" in results["stream"]["error"]["error"]["message"]
    assert results["no-max"]["error"]["error"]["message"].startswith("max_tokens:")


@pytest.mark.parametrize("requests, status, problem", [
    ([{"custom_id": "has space", "params": params("x")}], 400, "requests.0.custom_id: String should match pattern"),
    ([{"custom_id": "x" * 65, "params": params("x")}], 400, "requests.0.custom_id"),
    ([{"custom_id": "a", "params": params("x")}, {"custom_id": "a", "params": params("y")}], 400, "Duplicate custom_id"),
    ([{"custom_id": f"r{i}", "params": params("x")} for i in range(51)], 400, "at most 50 items"),
    ([], 400, "requests: Field required"),
    ([{"custom_id": "a", "params": "nope"}], 400, "requests.0.params"),
    ([{"custom_id": "big", "params": params("x" * 70_000)}], 413, "maximum allowed number of bytes"),
])
def test_anthropic_envelope_is_refused_at_create(client: httpx.Client, requests: list[Any], status: int,
                                                 problem: str) -> None:
    r = a_create(client, requests)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["type"] == ("request_too_large" if status == 413 else "invalid_request_error")
    assert problem in error["message"]


def test_anthropic_control_calls_need_the_headers(client: httpx.Client) -> None:
    assert client.get("/v1/messages/batches", headers={"x-api-key": "k"}).status_code == 400  # no anthropic-version
    assert client.get("/v1/messages/batches", headers={"anthropic-version": "2023-06-01"}).status_code == 401
    r = client.post("/v1/messages/batches", json={"requests": [], "extra": 1}, headers=A)
    assert r.json()["error"]["message"] == "extra: Extra inputs are not permitted"
    assert client.get("/v1/messages/batches/msgbatch_nope", headers=A).json()["error"]["type"] == "not_found_error"


def test_anthropic_expire_fail_and_stall_markers(client: httpx.Client) -> None:
    four = [{"custom_id": f"r{i}", "params": params(f"item {i}")} for i in range(4)]
    four[0]["params"]["system"] = "#emu:batch-delay=60 #emu:batch-expire=0.5"
    expiring = a_batch(client, four)
    four[0]["params"]["system"] = "#emu:batch-delay=60 #emu:batch-fail"
    failing = a_batch(client, four)
    four[0]["params"]["system"] = "#emu:batch-delay=60 #emu:batch-stall"
    stalled = a_batch(client, four)
    with later(61):
        done = a_get(client, expiring["id"])
        assert done["processing_status"] == "ended"
        assert done["request_counts"] == {"processing": 0, "succeeded": 2, "errored": 0, "canceled": 0, "expired": 2}
        assert sorted(r["type"] for r in a_results(client, done).values()) == ["expired", "expired", "succeeded",
                                                                              "succeeded"]
        failed = a_get(client, failing["id"])
        assert failed["request_counts"]["errored"] == 4
        assert {r["error"]["error"]["type"] for r in a_results(client, failed).values()} == {"api_error"}
        assert a_get(client, stalled["id"])["processing_status"] == "in_progress"
    with later(24 * 3600 + 1):  # a batch not ended in 24 hours expires
        gone = a_get(client, stalled["id"])
        assert gone["processing_status"] == "ended" and gone["request_counts"]["expired"] == 4


def test_anthropic_cancel_keeps_what_finished(client: httpx.Client) -> None:
    four = [{"custom_id": f"r{i}", "params": params(f"item {i}")} for i in range(4)]
    four[2]["params"]["system"] = "#emu:batch-delay=10 #emu:batch-stall=0.5"
    batch = a_batch(client, four)
    with later(20):  # the stalled half is done; the rest never will be
        r = client.post(f"/v1/messages/batches/{batch['id']}/cancel", headers=A)
        assert r.status_code == 200
        canceling = r.json()
        assert canceling["processing_status"] == "canceling" and canceling["cancel_initiated_at"] is not None
        assert canceling["request_counts"]["processing"] == 4
        assert client.get(f"/v1/messages/batches/{batch['id']}/results", headers=A).status_code == 400
        assert client.post(f"/v1/messages/batches/{batch['id']}/cancel", headers=A).json()["processing_status"] \
            == "canceling"
    with later(20 + 31):  # the emulator's batch_cancel_s is 30
        ended = a_get(client, batch["id"])
        assert ended["processing_status"] == "ended"
        assert ended["request_counts"] == {"processing": 0, "succeeded": 2, "errored": 0, "canceled": 2, "expired": 0}
        assert sorted(r["type"] for r in a_results(client, ended).values()) == ["canceled", "canceled", "succeeded",
                                                                              "succeeded"]
        again = client.post(f"/v1/messages/batches/{batch['id']}/cancel", headers=A)
        assert again.status_code == 409 and again.json()["error"]["type"] == "conflict_error"
        assert client.delete(f"/v1/messages/batches/{batch['id']}", headers=A).json() == {
            "id": batch["id"], "type": "message_batch_deleted"}
        assert client.get(f"/v1/messages/batches/{batch['id']}", headers=A).status_code == 404


def test_anthropic_404_right_after_create(client: httpx.Client) -> None:
    calls = a_batch(client, [{"custom_id": "a", "params": params("#emu:batch-404=2")}])
    codes = [client.get(f"/v1/messages/batches/{calls['id']}", headers=A).status_code for _ in range(3)]
    assert codes == [404, 404, 200]
    seconds = a_batch(client, [{"custom_id": "a", "params": params("#emu:batch-404=30s")}])
    r = client.get(f"/v1/messages/batches/{seconds['id']}", headers=A)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert client.post(f"/v1/messages/batches/{seconds['id']}/cancel", headers=A).status_code == 404
    with later(31):
        assert a_get(client, seconds["id"])["id"] == seconds["id"]


def test_anthropic_lost_create_still_makes_a_batch(client: httpx.Client) -> None:
    first = client.get("/v1/messages/batches", params={"limit": 1}, headers=A).json()["first_id"]
    with pytest.raises(httpx.RemoteProtocolError):
        a_create(client, [{"custom_id": "a", "params": params("#emu:batch-lost")}])
    newest = client.get("/v1/messages/batches", params={"limit": 1}, headers=A).json()
    assert newest["first_id"] != first and newest["data"][0]["request_counts"]["processing"] == 1


def test_anthropic_list_pages_newest_first(client: httpx.Client) -> None:
    made = [a_batch(client, [{"custom_id": "a", "params": params(f"page {i}")}])["id"] for i in range(5)]
    newest = made[::-1]

    def page(**query: Any) -> dict[str, Any]:
        return ok(client.get("/v1/messages/batches", params=query, headers=A))

    first = page(limit=2)
    assert [b["id"] for b in first["data"]] == newest[:2] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (newest[0], newest[1])
    second = page(limit=2, after_id=first["last_id"])
    assert [b["id"] for b in second["data"]] == newest[2:4]
    back = page(limit=2, before_id=second["first_id"])
    assert [b["id"] for b in back["data"]] == newest[:2] and back["has_more"] is False
    assert page(limit=1000, after_id=newest[4])["data"][0]["id"] not in made
    assert page(after_id="msgbatch_unknown")["data"] == []
    assert client.get("/v1/messages/batches", params={"limit": 0}, headers=A).status_code == 400


# -- Gemini Files API ------------------------------------------------------------------------------

def upload(client: httpx.Client, data: bytes, chunk: int = 100, display: str = "input") -> dict[str, Any]:
    """The resumable protocol as python-genai runs it: start, then upload chunks, the last with finalize."""
    r = client.post("/upload/v1beta/files", json={"file": {"displayName": display}}, headers={
        **G, "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": str(len(data)), "X-Goog-Upload-Header-Content-Type": "application/jsonl"})
    assert r.status_code == 200 and r.headers["x-goog-upload-status"] == "active"
    url = r.headers["x-goog-upload-url"]
    offset = 0
    while True:
        piece = data[offset:offset + chunk]
        last = offset + len(piece) >= len(data)
        r = client.post(url, content=piece, headers={"X-Goog-Upload-Command": "upload, finalize" if last else "upload",
                                                     "X-Goog-Upload-Offset": str(offset)})
        assert r.status_code == 200, r.text
        offset += len(piece)
        if last:
            assert r.headers["x-goog-upload-status"] == "final"
            return r.json()["file"]
        assert r.headers["x-goog-upload-status"] == "active"
        assert r.headers["x-goog-upload-size-received"] == str(offset)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def test_resumable_upload_protocol(client: httpx.Client, emu: RunningEmulator) -> None:
    data = jsonl([{"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"t{i}"}]}]}} for i in range(5)])
    start = {**G, "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
             "X-Goog-Upload-Header-Content-Length": str(len(data))}
    url = client.post("/upload/v1beta/files", headers=start).headers["x-goog-upload-url"]
    assert client.post(url, content=data[:50], headers={"X-Goog-Upload-Command": "upload",
                                                        "X-Goog-Upload-Offset": "0"}).status_code == 200
    wrong = client.post(url, content=data[50:], headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "7"})
    assert wrong.status_code == 400 and wrong.headers["x-goog-upload-size-received"] == "50"
    assert wrong.json()["error"]["status"] == "INVALID_ARGUMENT"
    query = client.post(url, headers={"X-Goog-Upload-Command": "query"})
    assert (query.headers["x-goog-upload-status"], query.headers["x-goog-upload-size-received"]) == ("active", "50")
    short = client.post(url, content=data[50:60], headers={"X-Goog-Upload-Command": "upload, finalize",
                                                           "X-Goog-Upload-Offset": "50"})
    assert short.status_code == 400 and "declared" in short.json()["error"]["message"]
    done = client.post(url, content=data[60:], headers={"X-Goog-Upload-Command": "upload, finalize",
                                                        "X-Goog-Upload-Offset": "60"})
    resource = done.json()["file"]
    assert done.headers["x-goog-upload-status"] == "final" and resource["sizeBytes"] == str(len(data))
    assert resource["state"] == "ACTIVE" and resource["source"] == "UPLOADED" and resource["name"].startswith("files/")
    assert client.get(f"/v1beta/{resource['name']}", headers=G).json() == resource
    assert emu.stats()["by_path"]["files.upload"] >= 4
    refused = client.get(f"/download/v1beta/{resource['name']}:download", params={"alt": "media"}, headers=G)
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert client.post(url, headers={"X-Goog-Upload-Command": "query"}).status_code == 404  # the session is over
    assert client.post("/upload/v1beta/files", headers={**start, "X-Goog-Upload-Protocol": "multipart"}).status_code == 400
    assert client.post("/upload/v1beta/files", headers={"X-Goog-Upload-Protocol": "resumable",
                                                        "X-Goog-Upload-Command": "start"}).status_code == 400  # no key
    named = upload(client, data, chunk=10_000)
    listed = client.get("/v1beta/files", params={"pageSize": 1}, headers=G).json()
    assert listed["files"][0]["name"] == named["name"] and "nextPageToken" in listed
    assert client.delete(f"/v1beta/{named['name']}", headers=G).json() == {}
    assert client.get(f"/v1beta/{named['name']}", headers=G).status_code == 404


# -- Gemini Batch Mode -----------------------------------------------------------------------------

def gen_request(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def g_create(client: httpx.Client, source: dict[str, Any], model: str = FLASH, display: str = "job",
             action: str = "batchGenerateContent") -> httpx.Response:
    return client.post(f"/v1beta/models/{model}:{action}", headers=G,
                       json={"batch": {"displayName": display, "inputConfig": source}})


def g_job(client: httpx.Client, source: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return ok(g_create(client, source, **kw))


def g_get(client: httpx.Client, name: str) -> dict[str, Any]:
    return ok(client.get(f"/v1beta/{name}", headers=G))


def download(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    r = client.get(f"/download/v1beta/{name}:download", params={"alt": "media"}, headers=G)
    assert r.status_code == 200
    return [json.loads(line) for line in r.text.splitlines()]


def test_gemini_file_mode_joins_on_key_and_matches_realtime(client: httpx.Client) -> None:
    rows = [{"key": f"row-{i}", "request": gen_request(f"prompt {i}")} for i in range(8)]
    rows[3]["request"] = {"contents": []}  # refused as realtime refuses it: an error line, same key
    rows[5]["request"] = gen_request("#emu:fail=500 boom")
    file = upload(client, jsonl(rows) + b"not json\n")
    job = g_job(client, {"fileName": file["name"]}, display="nightly-1")
    meta = job["metadata"]
    assert job["name"].startswith("batches/") and "done" not in job
    assert meta["state"] == "BATCH_STATE_PENDING" and meta["displayName"] == "nightly-1"
    assert meta["model"] == f"models/{FLASH}" and meta["batchStats"] == {"requestCount": "9", "pendingRequestCount": "9"}
    wait_for(lambda: g_get(client, job["name"]).get("done") is True)
    done = g_get(client, job["name"])
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED" and "endTime" in done["metadata"]
    assert done["metadata"]["batchStats"] == {"requestCount": "9", "successfulRequestCount": "6",
                                              "failedRequestCount": "3"}
    out = done["response"]["responsesFile"]
    assert done["metadata"]["output"] == {"responsesFile": out} and done["response"]["@type"].endswith("BatchOutput")
    assert client.get(f"/v1beta/{out}", headers=G).json()["source"] == "GENERATED"
    lines = download(client, out)
    by_key = {line.get("key"): line for line in lines}
    assert set(by_key) == {f"row-{i}" for i in range(8)} | {None} and len(lines) == 9
    assert by_key["row-3"]["error"]["code"] == 400 and by_key["row-5"]["error"]["status"] == "INTERNAL"
    assert by_key[None]["error"]["code"] == 400
    for i in (0, 1, 7):
        realtime = client.post(f"/v1beta/models/{FLASH}:generateContent", json=gen_request(f"prompt {i}"),
                               headers=G).json()
        got = by_key[f"row-{i}"]["response"]
        got.pop("responseId"), realtime.pop("responseId")
        assert got == realtime


def test_gemini_inline_mode_keeps_order_and_metadata(client: httpx.Client) -> None:
    entries = [{"request": gen_request(f"inline {i}"), "metadata": {"key": f"m{i}"}} for i in range(4)]
    entries[2]["request"] = gen_request("lost #emu:drop-key")
    job = g_job(client, {"requests": {"requests": entries}})
    wait_for(lambda: g_get(client, job["name"]).get("done") is True)
    inlined = g_get(client, job["name"])["response"]["inlinedResponses"]["inlinedResponses"]
    assert [x.get("metadata") for x in inlined] == [{"key": "m0"}, {"key": "m1"}, None, {"key": "m3"}]
    assert inlined[3]["response"]["candidates"][0]["content"]["parts"][0]["text"].endswith("inline 3")


def test_gemini_missing_key_in_file_output(client: httpx.Client) -> None:
    rows = [{"key": f"k{i}", "request": gen_request(f"p{i}" + (" #emu:drop-key" if i == 1 else ""))} for i in range(3)]
    job = g_job(client, {"fileName": upload(client, jsonl(rows))["name"]})
    wait_for(lambda: g_get(client, job["name"]).get("done") is True)
    done = g_get(client, job["name"])
    assert done["metadata"]["batchStats"]["successfulRequestCount"] == "3"  # the provider thinks all went well
    assert {line["key"] for line in download(client, done["response"]["responsesFile"])} == {"k0", "k2"}


@pytest.mark.parametrize("source, model, status, problem", [
    ({"requests": {"requests": [{"request": {**gen_request("x"), "model": "models/gemini-2.5-pro"}}]}}, FLASH, 400,
     "one model"),
    ({"fileName": "files/nosuchfile"}, FLASH, 404, "was not found"),
    ({"fileName": "files/x", "requests": {"requests": []}}, FLASH, 400, "exactly one"),
    ({"requests": {"requests": []}}, FLASH, 400, "requests is empty"),
    ({"requests": {"requests": [{"request": gen_request("x" * 40_000)}]}}, FLASH, 400, "payload size exceeds"),
    ({"requests": {"requests": [{"request": gen_request("x")}]}}, "gemini-2.0-flash", 404, "is not found"),
])
def test_gemini_create_refusals(client: httpx.Client, source: dict[str, Any], model: str, status: int,
                                problem: str) -> None:
    r = g_create(client, source, model=model)
    assert r.status_code == status and problem in r.json()["error"]["message"]


def test_gemini_expire_fail_stall_cancel_and_job_states(client: httpx.Client) -> None:
    def inline(text: str) -> dict[str, Any]:
        return {"requests": {"requests": [{"request": gen_request(text), "metadata": {"key": "a"}},
                                          {"request": gen_request("second"), "metadata": {"key": "b"}}]}}

    expiring = g_job(client, inline("#emu:batch-delay=60 #emu:batch-expire=0.5"))
    failing = g_job(client, inline("#emu:batch-delay=60 #emu:batch-fail"))
    stalled = g_job(client, inline("#emu:batch-delay=60 #emu:batch-stall=0.5 #emu:batch-job-states"))
    with later(31):
        running = g_get(client, stalled["name"])["metadata"]
        assert running["state"] == "JOB_STATE_RUNNING"
        assert running["batchStats"] == {"requestCount": "2", "successfulRequestCount": "1",
                                         "pendingRequestCount": "1"}
    with later(61):
        for job, state, code in ((expiring, "BATCH_STATE_EXPIRED", 4), (failing, "BATCH_STATE_FAILED", 13)):
            got = g_get(client, job["name"])
            assert got["metadata"]["state"] == state and got["done"] is True and got["error"]["code"] == code
            assert "response" not in got and "output" not in got["metadata"]  # no results at all
        assert g_get(client, stalled["name"])["metadata"]["state"] == "JOB_STATE_RUNNING"
        assert client.post(f"/v1beta/{stalled['name']}:cancel", headers=G).json() == {}
        cancelled = g_get(client, stalled["name"])
        assert cancelled["metadata"]["state"] == "JOB_STATE_CANCELLED" and "response" not in cancelled
        again = client.post(f"/v1beta/{stalled['name']}:cancel", headers=G)
        assert again.status_code == 400 and again.json()["error"]["status"] == "FAILED_PRECONDITION"
    with later(48 * 3600 + 1):  # a job still running after 48 hours expires with nothing
        never = g_job(client, inline("#emu:batch-stall"))
    with later(2 * 48 * 3600 + 2):
        assert g_get(client, never["name"])["metadata"]["state"] == "BATCH_STATE_EXPIRED"


def test_gemini_404_after_create_list_and_delete(client: httpx.Client) -> None:
    hidden = g_job(client, {"requests": {"requests": [{"request": gen_request("#emu:batch-404=1")}]}}, display="h")
    assert client.get(f"/v1beta/{hidden['name']}", headers=G).status_code == 404
    assert g_get(client, hidden["name"])["name"] == hidden["name"]
    made = [g_job(client, {"requests": {"requests": [{"request": gen_request("x")}]}}, display=f"d{i}")["name"]
            for i in range(3)]
    first = client.get("/v1beta/batches", params={"pageSize": 2}, headers=G).json()
    assert [op["name"] for op in first["operations"]] == made[::-1][:2]
    second = client.get("/v1beta/batches", params={"pageSize": 2, "pageToken": first["nextPageToken"]},
                        headers=G).json()
    assert second["operations"][0]["name"] == made[0]
    assert client.delete(f"/v1beta/{made[0]}", headers=G).json() == {}
    assert client.get(f"/v1beta/{made[0]}", headers=G).status_code == 404
    names = [op["name"] for op in client.get("/v1beta/batches", params={"pageSize": 1000}, headers=G).json()["operations"]]
    assert made[0] not in names and made[1] in names


def test_gemini_async_batch_embed(client: httpx.Client, emu: RunningEmulator) -> None:
    inline = {"requests": {"requests": [{"request": {"content": {"parts": [{"text": t}]}, "outputDimensionality": 8},
                                         "metadata": {"key": t}} for t in ("alpha", "beta")]}}
    job = g_job(client, inline, model="gemini-embedding-001", action="asyncBatchEmbedContent")
    assert job["metadata"]["@type"].endswith("EmbedContentBatch")
    rows = [{"key": "z", "request": {"content": {"parts": [{"text": "zeta"}]}}}, {"key": "bad", "request": {}}]
    from_file = g_job(client, {"fileName": upload(client, jsonl(rows))["name"]}, model="gemini-embedding-001",
                      action="asyncBatchEmbedContent")
    wait_for(lambda: all(g_get(client, j["name"]).get("done") for j in (job, from_file)))
    inlined = g_get(client, job["name"])["response"]["inlinedResponses"]["inlinedResponses"]
    realtime = client.post("/v1beta/models/gemini-embedding-001:batchEmbedContents", headers=G, json={"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "alpha"}]}, "outputDimensionality": 8}]})
    assert inlined[0]["response"]["embedding"] == realtime.json()["embeddings"][0]
    assert inlined[1]["metadata"] == {"key": "beta"} and len(inlined[1]["response"]["embedding"]["values"]) == 8
    lines = {x["key"]: x for x in download(client, g_get(client, from_file["name"])["response"]["responsesFile"])}
    assert len(lines["z"]["response"]["embedding"]["values"]) == 3072 and lines["bad"]["error"]["code"] == 400
    assert emu.stats()["by_path"]["asyncBatchEmbedContent"] == 2


def test_a_lost_gemini_create_is_found_by_display_name(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        g_create(client, {"requests": {"requests": [{"request": gen_request("#emu:batch-lost")}]}}, display="intent-77")
    ops = client.get("/v1beta/batches", headers=G).json()["operations"]
    assert [op["metadata"]["displayName"] for op in ops].count("intent-77") == 1
