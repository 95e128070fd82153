"""What an outsider's probing of the HTTP API found, through real processes: a real redis-server, a real
`otb serve` and `otb worker`, the emulator, and the official `openai` SDK as the client.

The first test runs before the module's worker starts (the `live` fixture starts it later), so its
50,001 requests are cancelled before any of them runs.
"""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest
from openai.types import Batch

from .conftest import api_cli, log_of, sdk
from .test_try_it import node_openai  # noqa: F401 (the fixture: the `openai` npm package, installed once)

pytestmark = pytest.mark.e2e

FLASH = "google/gemini-3-flash"


def line(custom_id: str, content: str = "Hi", *, standard: bool = False) -> dict:
    """A chat line; `standard` sends it in real time whatever the batch's mode (a 24 h API batch is `auto`:
    Gemini lines would go to its Batch Mode, polled by a worker, whose timeline #emu:slow does not set)."""
    body = {"model": FLASH, "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {**body, "service_tier": "default"} if standard else body}


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x, separators=(",", ":")).encode() + b"\n" for x in lines)


def create(client: openai.OpenAI, data: bytes) -> Batch:
    file = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")


def settled(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> tuple[Batch, list[str]]:
    """The final batch, and every status a user polling it saw on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
            return batch, seen
        time.sleep(0.1)


def test_a_50001_line_file_is_one_batch_of_50001_requests(server, keys):
    """OpenAI caps a batch at 50,000 requests; this server takes up to OTB_MAX_LINES (100,000), so a
    file made for OpenAI always fits and one a little bigger is not refused (README, Batches)."""
    client = sdk(server, keys["acme"], timeout=120)
    # standard lines: no provider batch to cancel, and so no worker needed to cancel it
    batch = create(client, jsonl([line(f"{i}", standard=True) for i in range(50_001)]))
    assert batch.status == "in_progress" and batch.request_counts and batch.request_counts.total == 50_001
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done, seen = settled(client, batch.id, timeout=120)
    assert done.status == "cancelled" and done.request_counts and done.request_counts.failed == 50_001
    assert seen in (["cancelling", "cancelled"], ["cancelled"])  # never `finalizing`, as at OpenAI
    assert done.finalizing_at is None and done.cancelled_at


def test_a_key_pasted_into_a_url_never_reaches_the_log(server, keys):
    key = keys["bob"]
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        assert http.get(f"/models?api_key={key}").status_code == 401
        assert http.get(f"/files/{key}", headers={"Authorization": f"Bearer {key}"}).status_code == 404
        assert http.get(f"/{key}", headers={"Authorization": f"Bearer {key}"}).status_code == 404
    deadline = time.monotonic() + 10
    while log_of(server).count("sk-otb-***") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log_of(server)
    assert "sk-otb-***" in text and key not in text and key.removeprefix("sk-otb-") not in text


def test_a_provider_failure_is_tried_by_the_workers_only_not_again_by_the_sdk(live, keys, emulator):
    client = openai.OpenAI(base_url=live.base_url, api_key=keys["acme"], max_retries=2)  # the SDK's default
    stats = lambda: httpx.get(f"{emulator.url}/_emulator/stats").json()["by_status"].get("500", 0)  # noqa: E731
    before = stats()
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "#emu:fail=500 no"}])
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert set(failed.value.response.json()["error"]) == {"message", "type", "param", "code"}
    attempts = stats() - before
    assert 1 <= attempts <= 5  # OTB_MAX_ATTEMPTS tries in the worker; three SDK attempts would make 15


def test_batch_failed_and_batch_expired_reach_the_webhook_verified_by_the_sdk(live, env, api_redis):
    from openai.types.webhooks import BatchExpiredWebhookEvent, BatchFailedWebhookEvent

    from .test_webhooks_serve import receiver_on_free_port, wait_for

    receiver = receiver_on_free_port()
    try:
        made = api_cli(["keys", "create", "outsider", "--json", "--webhook-url", receiver.url("/ok")], env)
        assert made.returncode == 0, made.stderr.decode()
        new = json.loads(made.stdout)
        client = sdk(live, new["key"])
        failed = create(client, b"{not json\n")
        slow = create(client, jsonl([line(f"e{i}", f"#emu:slow=1500 hello {i}", standard=True) for i in range(200)]))
        api_redis.client().zadd("otb:deadlines", {slow.id: 1})  # its window ends now (the workers' janitor reads it)
        assert settled(client, failed.id)[0].status == "failed"
        assert settled(client, slow.id)[0].status == "expired"
        wait_for(lambda: len(receiver.of("/ok")) >= 2, "two webhook deliveries", 60)
        verifier = openai.OpenAI(api_key="unused", webhook_secret=new["webhook_secret"])
        events = {e.data.id: e for e in (verifier.webhooks.unwrap(d.body, d.headers) for d in receiver.of("/ok"))}
        assert isinstance(events[failed.id], BatchFailedWebhookEvent)
        assert isinstance(events[slow.id], BatchExpiredWebhookEvent) and len(events) == 2
    finally:
        receiver.server.shutdown()


JS_BATCH = """
import OpenAI, { toFile } from "openai";
import fs from "node:fs";

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.OTB_KEY, maxRetries: 0 });
const streamed = await client.files.create({ file: fs.createReadStream("batch.jsonl"), purpose: "batch" });
const buffered = await client.files.create({ file: await toFile(fs.readFileSync("batch.jsonl"), "b.jsonl"),
                                             purpose: "batch", expires_after: { anchor: "created_at", seconds: 7200 } });
let batch = await client.batches.create({ input_file_id: streamed.id, endpoint: "/v1/chat/completions",
                                          completion_window: "24h", metadata: { from: "node" } });
while (!["completed", "failed", "expired", "cancelled"].includes(batch.status)) {
  await new Promise((resolve) => setTimeout(resolve, 200));
  batch = await client.batches.retrieve(batch.id);
}
const output = await (await client.files.content(batch.output_file_id)).text();
const listed = [];
for await (const file of client.files.list({ limit: 1 })) listed.push(file.id);
let missing = null;
try { await client.batches.retrieve("batch_nope"); } catch (err) { missing = err instanceof OpenAI.NotFoundError; }
console.log(JSON.stringify({ streamed: [streamed.bytes, streamed.filename], buffered: [buffered.bytes, buffered.filename,
  buffered.expires_at - buffered.created_at], status: batch.status, counts: batch.request_counts,
  metadata: batch.metadata, lines: output.trim().split("\\n").map((l) => JSON.parse(l).custom_id), listed, missing }));
"""


def test_the_js_sdk_uploads_runs_and_downloads_a_batch(live, env, tmp_path, node_openai):
    """The JS SDK's multipart differs from Python's (a ReadStream, toFile, expires_after as form fields)."""
    from .conftest import create_key
    from .test_try_it import run_node

    data = jsonl([line("a"), line("b")])
    (tmp_path / "batch.jsonl").write_bytes(data)
    script = JS_BATCH.replace("process.env.BASE_URL", json.dumps(live.base_url)).replace(
        "process.env.OTB_KEY", json.dumps(create_key(env, "node")))
    proc = run_node(script, tmp_path, node_openai)
    assert proc.returncode == 0, proc.stderr.decode()
    got = json.loads(proc.stdout)
    assert got["streamed"] == [len(data), "batch.jsonl"] and got["buffered"] == [len(data), "b.jsonl", 7200]
    assert (got["status"], got["counts"], got["metadata"]) == ("completed", {"total": 2, "completed": 2, "failed": 0},
                                                               {"from": "node"})
    assert got["lines"] == ["a", "b"] and len(got["listed"]) == len(set(got["listed"])) == 3 and got["missing"]


def test_a_file_deleted_while_it_downloads_cuts_the_answer_and_logs_one_line(server, keys):
    """The download has sent its Content-Length: the client must see the answer end short (an error, not a
    shorter file), and the server must say so in one line, not a traceback."""
    client = sdk(server, keys["bob"])
    data = b"".join(b'{"custom_id": "%08d", "pad": "%s"}\n' % (i, b"x" * 200) for i in range(150_000))  # ~34 MB
    file = client.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="batch")
    got = 0
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            with http.stream("GET", f"/files/{file.id}/content", headers={"Authorization": f"Bearer {keys['bob']}"}) as r:
                assert r.status_code == 200 and int(r.headers["content-length"]) == len(data)
                for part in r.iter_bytes():
                    if not got:
                        client.files.delete(file.id)  # (the socket buffers hold a few MB at most)
                    got += len(part)
    assert 0 < got < len(data)
    deadline = time.monotonic() + 10
    while "was deleted while it was downloaded" not in log_of(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"file {file.id} was deleted while it was downloaded" in log_of(server)


def test_the_server_logged_no_traceback_and_no_key(server, keys):
    text = log_of(server)
    assert "Traceback" not in text
    for key in keys.values():
        assert key not in text
