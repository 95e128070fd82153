"""/v1/batches through the real SDK against a real `otb serve`, a real `otb worker`, the emulator and a
real redis-server: the round trip to output and error files, validation failures, cancel, the
auto-pager, idempotent creates (with a key, concurrently, and the SDK's retry of a lost answer),
tenants and hostile ids, the key's budget, the report per key, and a finalize that crashed."""

from __future__ import annotations

import io
import json
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch, ErrorObject

from bench.harness import RedisServer, otb

from .conftest import create_key, sdk

pytestmark = pytest.mark.e2e

HAIKU = "anthropic/claude-haiku-5-5"


def line(custom_id: str, content: str = "Say hello", *, model: str = HAIKU, url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 40}}


def standard(request: dict) -> dict:
    """The line sent in real time whatever the batch's mode (a 24 h API batch is `auto`: Claude lines would
    go to Message Batches, whose timeline the emulator's batch markers set, not #emu:slow)."""
    request["body"]["service_tier"] = "default"
    return request


def jsonl(*lines: dict | str) -> bytes:
    return b"".join((ln if isinstance(ln, str) else json.dumps(ln)).encode() + b"\n" for ln in lines)


def upload(client: openai.OpenAI, data: bytes) -> str:
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id


def create(client: openai.OpenAI, file_id: str, **kwargs: Any) -> Batch:
    """batches.create, its raw answer checked against the SDK's own Batch model first."""
    raw = client.batches.with_raw_response.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                  completion_window="24h", **kwargs)
    return Batch.model_validate(raw.http_response.json())


def retrieve(client: openai.OpenAI, batch_id: str) -> Batch:
    return Batch.model_validate(client.batches.with_raw_response.retrieve(batch_id).http_response.json())


def settled(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Batch:
    """Poll as a user does, until the batch is final."""
    deadline = time.monotonic() + timeout
    while True:
        batch = retrieve(client, batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def content_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [] if file_id is None else [json.loads(x) for x in client.files.content(file_id).read().splitlines()]


def raw_json(response: Any) -> dict:
    return response.http_response.json()


def test_a_batch_runs_to_completed_with_its_output_and_error_files(live, acme, api_redis, env):
    conn = api_redis.client()
    spent_before = int(conn.hget("otb:tenant:acme", "spent_pico") or 0)
    data = jsonl(line("a"), line("b", "#emu:fail=400 refused"), line("c", "Tell me a story"))
    created = create(acme, upload(acme, data), metadata={"job": "nightly"},
                     output_expires_after={"anchor": "created_at", "seconds": 7200})
    assert created.status in ("in_progress", "finalizing", "completed") and created.id.startswith("batch_")
    assert (created.endpoint, created.completion_window, created.metadata) == ("/v1/chat/completions", "24h", {"job": "nightly"})
    assert created.model == HAIKU and created.expires_at == created.created_at + 24 * 3600

    batch = settled(acme, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts and (batch.request_counts.total, batch.request_counts.completed,
                                     batch.request_counts.failed) == (3, 2, 1)
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at  # type: ignore[operator]
    assert batch.usage and batch.usage.output_tokens > 0 and batch.usage.total_tokens == (
        batch.usage.input_tokens + batch.usage.output_tokens)

    output, errors = content_lines(acme, batch.output_file_id), content_lines(acme, batch.error_file_id)
    assert sorted(x["custom_id"] for x in output) == ["a", "c"] and [x["custom_id"] for x in errors] == ["b"]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None and x["id"].startswith("batch_req_")
               for x in output)
    assert all(x["response"]["body"]["id"].startswith("chatcmpl-") for x in output)  # OpenAI's ids, line and body
    assert errors[0]["response"]["status_code"] == 400 and errors[0]["response"]["body"]["error"]["message"]
    error = errors[0]["response"]["body"]["error"]
    assert set(error) == {"message", "type", "param", "code"} and ErrorObject.model_validate(error).param is None
    cost = (batch.model_extra or {})["cost"]
    assert sum(Decimal(x["cost"]["total"]) for x in output + errors) == Decimal(cost["total"]) > 0
    assert all(x["meta"]["tags"] == {"key": "acme"} for x in output + errors)
    assert int(conn.hget("otb:tenant:acme", "spent_pico") or 0) - spent_before == int(Decimal(cost["total"]).scaleb(12))

    out_file = acme.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert (out_file.purpose, out_file.filename) == ("batch_output", f"{batch.id}_output.jsonl")
    assert out_file.expires_at == out_file.created_at + 7200
    listed = {f.id for f in acme.files.list(purpose="batch_output")}
    assert {batch.output_file_id, batch.error_file_id} <= listed
    assert retrieve(acme, batch.id) == batch  # final: the same answer every time

    report = otb(["report", "--by", "tag:key", "--format", "json"], env)
    assert report.returncode == 0, report.stderr.decode()
    rows = {row["group"]["tag:key"]: row for row in json.loads(report.stdout)["rows"]}
    assert rows["acme"]["requests"] >= 3 and Decimal(rows["acme"]["cost"]["total"]) >= Decimal(cost["total"])


def test_a_file_that_fails_validation_gives_a_failed_batch_naming_each_line(acme, server):
    data = jsonl(line("ok"), line("unknown", model="openai/gpt-4o"),
                 line("embed", url="/v1/embeddings"), "not json", line("ok"))
    batch = create(acme, upload(acme, data))
    assert batch.status == "failed" and batch.failed_at and batch.errors and batch.errors.object == "list"
    found = [(e.line, e.code, e.param) for e in batch.errors.data or []]
    raw = raw_json(acme.batches.with_raw_response.retrieve(batch.id))["errors"]["data"]
    assert all(set(e) == {"code", "line", "message", "param"} for e in raw), raw  # param present, null when none
    assert found == [(2, "model_not_found", None), (3, "invalid_request", "url"), (4, "invalid_request", None),
                     (5, "invalid_request", "custom_id")], found
    assert batch.errors.data[0].message == 'model "openai/gpt-4o" not found'  # type: ignore[index]
    assert batch.output_file_id is None and batch.request_counts and batch.request_counts.total == 0
    assert retrieve(acme, batch.id).status == "failed"


def test_bad_parameters_answer_400_and_unknown_files_404(acme, bob, server):
    good = upload(acme, jsonl(line("x")))
    cases = [dict(completion_window="1h"), dict(endpoint="/v1/responses"),
             dict(metadata={f"k{i}": "v" for i in range(17)}), dict(metadata={"k": "v" * 513}),
             dict(output_expires_after={"anchor": "created_at", "seconds": 60}),
             dict(extra_body={"unknown_field": 1})]
    for case in cases:
        params = {"input_file_id": good, "endpoint": "/v1/chat/completions", "completion_window": "24h", **case}
        with pytest.raises(openai.BadRequestError) as caught:
            acme.batches.create(**params)  # type: ignore[arg-type]
        assert caught.value.response.headers["x-should-retry"] == "false", case
    with pytest.raises(openai.NotFoundError):
        create(bob, good)  # another tenant's file is no file
    with pytest.raises(openai.NotFoundError):
        create(acme, "file-" + "0" * 24)


def test_cancel_keeps_finished_lines_and_ends_the_rest_cancelled(live, acme):
    data = jsonl(*[standard(line(f"r{i}", f"#emu:slow=700 hello {i}")) for i in range(300)])
    created = create(acme, upload(acme, data))
    deadline = time.monotonic() + 30
    while retrieve(acme, created.id).request_counts.completed < 1 and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.1)
    cancelled = Batch.model_validate(raw_json(acme.batches.with_raw_response.cancel(created.id)))
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at
    batch = settled(acme, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at and batch.request_counts
    counts = batch.request_counts
    assert counts.total == 300 and counts.completed >= 1 and counts.completed + counts.failed == 300
    output, errors = content_lines(acme, batch.output_file_id), content_lines(acme, batch.error_file_id)
    assert len(output) == counts.completed and len(errors) == counts.failed
    assert errors and {x["error"]["code"] for x in errors} == {"batch_cancelled"}
    assert sum(Decimal(x["cost"]["total"]) for x in output + errors) == Decimal((batch.model_extra or {})["cost"]["total"])
    assert acme.batches.cancel(created.id).status == "cancelled"  # again: the same batch, no error
    with pytest.raises(openai.BadRequestError):
        acme.batches.cancel(create(acme, upload(acme, b"nonsense\n")).id)  # a failed batch cannot be cancelled


def test_the_auto_pager_lists_250_batches_once_each_newest_first(server, env):
    client = sdk(server, create_key(env, "pager"))
    bad = upload(client, jsonl(line("x", model="openai/gpt-4o")))  # fails validation: no work for the workers
    made = [create(client, bad).id for _ in range(250)]
    assert [b.id for b in client.batches.list(limit=7)] == made[::-1]
    assert [b.id for b in client.batches.list()] == made[::-1]  # default pages of 20
    page = raw_json(client.batches.with_raw_response.list(limit=100))
    assert (page["object"], page["has_more"], page["first_id"], page["last_id"], len(page["data"])) == (
        "list", True, made[-1], made[-100], 100)
    last = raw_json(client.batches.with_raw_response.list(limit=100, after=made[50]))
    assert (last["has_more"], [b["id"] for b in last["data"]]) == (False, made[:50][::-1])
    for bad_limit in (0, 101):
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=bad_limit)


def test_an_idempotency_key_makes_one_batch_even_concurrently(live, env, api_redis):
    client = sdk(live, create_key(env, "idem"))
    conn = api_redis.client()
    file_id = upload(client, jsonl(line("x")))
    first = create(client, file_id, extra_headers={"Idempotency-Key": "k1"})
    assert create(client, file_id, extra_headers={"Idempotency-Key": "k1"}).id == first.id
    with pytest.raises(openai.BadRequestError):  # the same key for other parameters
        create(client, file_id, metadata={"other": "1"}, extra_headers={"Idempotency-Key": "k1"})
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(create(client, file_id, extra_headers={
        "Idempotency-Key": "k2"}).id)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1 and got[0] != first.id
    assert conn.zcard("otb:tenant:idem:batches") == 2
    assert create(client, file_id).id != create(client, file_id).id  # without a key, two creates are two batches
    assert conn.zcard("otb:tenant:idem:batches") == 4


class LoseFirstAnswer(httpx.HTTPTransport):
    """The network drops the answer to the first batch create (the server did the work)."""

    lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path.endswith("/batches") and not self.lost:
            self.lost += 1
            response.read()
            response.close()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_the_sdk_retry_of_a_lost_create_answer_returns_the_first_batch(live, env, api_redis):
    key = create_key(env, "flaky")
    transport = LoseFirstAnswer()
    client = openai.OpenAI(base_url=live.base_url, api_key=key, max_retries=2,
                           http_client=httpx.Client(transport=transport))
    file_id = upload(client, jsonl(line("x")))
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert transport.lost == 1
    assert [b.id for b in client.batches.list()] == [batch.id]  # one batch, the one the lost answer named


def test_another_tenant_s_batch_answers_exactly_as_an_unknown_one(acme, bob, server, api_redis):
    mine = create(acme, upload(acme, b"nonsense\n"))
    unknown = "batch_" + "0" * 24
    answers = []
    for batch_id in (mine.id, unknown):
        for call in (bob.batches.retrieve, bob.batches.cancel):
            with pytest.raises(openai.NotFoundError) as caught:
                call(batch_id)
            answers.append(caught.value.response.json()["error"] | {"message": caught.value.message.replace(batch_id, "ID")})
    assert answers[0] == answers[2] and answers[1] == answers[3]
    assert mine.id not in {b.id for b in bob.batches.list()}
    keys_before = sorted(api_redis.client().keys("*"))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {bob.api_key}"}) as http:
        for path in ("/v1/batches/..", "/v1/batches/a%2Fb", "/v1/batches/batch_%2E%2E", f"/v1/batches/{mine.id}%2F..",
                     "/v1/batches/" + "a" * 5000, f"/v1/batches/batch_..%2F{mine.id}"):
            assert http.get(path).status_code == 404, path
            assert http.post(path + "/cancel").status_code == 404, path
    assert sorted(api_redis.client().keys("*")) == keys_before  # nothing written, nothing created


def test_a_key_over_its_budget_gets_429_and_a_batch_shares_its_budget(live, env, api_redis):
    client = sdk(live, create_key(env, "budget", "--max-cost", "0.5"))
    conn = api_redis.client()
    conn.hset("otb:tenant:budget", "spent_pico", int(Decimal("0.2").scaleb(12)))
    file_id = upload(client, jsonl(line("x")))
    batch = create(client, file_id)
    options = json.loads(conn.hget(f"otb:batch:{batch.id}", "options"))
    assert "max_cost_pico" not in options  # not a budget of its own: the key's, shared with its other batches and calls
    assert (options["pool"], options["pool_max_pico"]) == ("budget", int(Decimal("0.5").scaleb(12)))
    conn.hset("otb:tenant:budget", "spent_pico", int(Decimal("0.5").scaleb(12)))
    with pytest.raises(openai.RateLimitError) as caught:
        create(client, file_id)
    assert caught.value.code == "insufficient_quota" and caught.value.response.headers["x-should-retry"] == "false"


def test_a_finalize_that_died_is_finished_by_another_server_with_one_set_of_files(live, env, api_redis, keys):
    """A server that held the batch's lock and died mid-write: its staged file never shows, and once its lock
    lapses the batch is finalized by the other server (here the same one), with one output file."""
    from producer.api.batchcontext import BatchContext
    from producer.api.finalizer import write_outputs
    from worker.settings import Settings

    client = sdk(live, create_key(env, "crash"))
    conn = api_redis.client()
    batch = create(client, upload(client, jsonl(standard(line("a", "#emu:slow=1500 hi")), standard(line("b")))))
    lock = f"otb:tenant:crash:batch:{batch.id}:lock"
    assert conn.set(lock, "dead-server", nx=True, px=6000)  # a server that took it, then died
    ctx = BatchContext.of(conn, Settings(redis_url=api_redis.url))
    deadline = time.monotonic() + 30
    while retrieve(client, batch.id).status != "finalizing" and time.monotonic() < deadline:
        time.sleep(0.1)
    record = ctx.records.get("crash", batch.id)
    assert record is not None and retrieve(client, batch.id).status == "finalizing"  # the lock holds it
    half = write_outputs(ctx, record)[0]  # what the dead server had written
    assert [f.id for f in client.files.list(purpose="batch_output")] == []
    done = settled(client, batch.id, timeout=40)
    assert done.status == "completed" and done.output_file_id != half.id
    listed = [f.id for f in client.files.list(purpose="batch_output")]
    assert listed == [done.output_file_id]
    assert len(content_lines(client, done.output_file_id)) == 2


def test_a_batch_whose_window_ends_is_expired_with_the_rest_in_the_error_file(live, acme, api_redis):
    created = create(acme, upload(acme, jsonl(*[standard(line(f"e{i}", f"#emu:slow=1500 hello {i}"))
                                                 for i in range(400)])))
    api_redis.client().zadd("otb:deadlines", {created.id: 1})  # its window ends now (the workers' janitor reads this)
    batch = settled(acme, created.id, timeout=40)
    assert batch.status == "expired" and batch.expired_at and batch.completed_at is None and batch.request_counts
    output, errors = content_lines(acme, batch.output_file_id), content_lines(acme, batch.error_file_id)
    assert len(output) + len(errors) == 400 == batch.request_counts.total
    assert len(errors) == batch.request_counts.failed > 0 and {x["error"]["code"] for x in errors} == {"batch_expired"}


def ctx_of(api_redis: RedisServer, hooks=None):  # type: ignore[no-untyped-def]
    """The server's stores, in this process, over the same Redis (what a second server would hold)."""
    from producer.api.batchcontext import BatchContext
    from worker.settings import Settings

    return BatchContext.of(api_redis.client(), Settings(redis_url=api_redis.url), hooks=hooks)


def test_two_finalizers_at_once_leave_one_set_of_files_and_one_final_event(live, env, api_redis):
    from producer.api.finalizer import _finish

    client = sdk(live, create_key(env, "twice"))
    conn = api_redis.client()
    batch = create(client, upload(client, jsonl(line("a", "#emu:slow=500 hi"), line("b", "#emu:fail=400 no"))))
    lock = f"otb:tenant:twice:batch:{batch.id}:lock"
    assert conn.set(lock, "elsewhere", nx=True, px=30_000)  # keeps the server's own finalizer off it
    deadline = time.monotonic() + 30
    while conn.hget(f"otb:batch:{batch.id}", "status") != b"completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    announced: list[tuple[str, str, str]] = []
    ctx = ctx_of(api_redis, hooks=[lambda *args: announced.append(args)])
    record, engine = ctx.records.get("twice", batch.id), ctx.store.status(batch.id)
    try:
        start = threading.Barrier(4)
        results: list[Any] = []

        def race() -> None:
            start.wait()
            results.append(_finish(ctx, record, engine, "completed"))  # type: ignore[arg-type]

        threads = [threading.Thread(target=race) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        conn.delete(lock)
    final = retrieve(client, batch.id)
    assert final.status == "completed" and announced == [("twice", batch.id, "completed")]
    assert {r.output_file_id for r in results} == {final.output_file_id}  # the losers see the winner's record
    assert sorted(f.id for f in client.files.list(purpose="batch_output")) == sorted(
        [final.output_file_id, final.error_file_id])
    kept = {k.decode().split(":")[4] for k in conn.scan_iter("otb:tenant:twice:file:*:data")}
    assert kept == {batch.input_file_id, final.output_file_id, final.error_file_id}  # the losers' staged bytes are gone


def test_a_batch_left_validating_by_a_dead_server_is_validated_again(live, env, api_redis):
    from producer.api.batchrecords import BatchRecord, new_batch_id
    from producer.api.finalizer import Finalizer

    client = sdk(live, create_key(env, "phoenix"))
    file_id = upload(client, jsonl(line("a"), line("b")))
    ctx = ctx_of(api_redis)
    dead = BatchRecord(new_batch_id(), "phoenix", "/v1/chat/completions", file_id, int(time.time()))
    ctx.records.create(dead, None, "a-server-that-died", 200)  # it never submitted; its lock lapses at once
    assert retrieve(client, dead.id).status == "validating"
    time.sleep(0.3)
    Finalizer(ctx).sweep()  # what every server's finalizer does every few seconds
    batch = settled(client, dead.id)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == 2
    assert [b.id for b in client.batches.list()] == [dead.id]


def test_a_batch_nobody_polls_is_finalized_by_the_server_s_own_finalizer(live, acme, api_redis):
    batch = create(acme, upload(acme, jsonl(line("quiet", "#emu:slow=300 hi"))))
    assert batch.status == "in_progress"
    conn, key = api_redis.client(), f"otb:tenant:acme:batch:{batch.id}"
    deadline = time.monotonic() + 20
    while conn.hget(key, "status") != b"completed" and time.monotonic() < deadline:  # no GET: only its thread
        time.sleep(0.05)
    assert conn.hget(key, "status") == b"completed" and conn.hget(key, "output_file_id")
    assert not conn.hexists("otb:api:open", batch.id)


def test_a_key_with_a_webhook_url_gets_batch_completed_and_cancelled_verified_by_the_sdk(live, env):
    """Batch ends reach the tenant's webhook, signed so that the SDK's own `webhooks.unwrap()` accepts
    them, one event per batch end."""
    from openai.types.webhooks import BatchCancelledWebhookEvent, BatchCompletedWebhookEvent

    from .conftest import api_cli
    from .test_webhooks_serve import receiver_on_free_port, wait_for

    receiver = receiver_on_free_port()
    try:
        made = api_cli(["keys", "create", "hooked", "--json", "--webhook-url", receiver.url("/ok")], env)
        assert made.returncode == 0, made.stderr.decode()
        new = json.loads(made.stdout)
        client = sdk(live, new["key"])
        done = create(client, upload(client, jsonl(line("a"), line("b"))))
        stopped = create(client, upload(client, jsonl(line("slow", "#emu:slow=3000 hi"))))
        client.batches.cancel(stopped.id)
        assert settled(client, done.id).status == "completed"
        assert settled(client, stopped.id).status == "cancelled"
        wait_for(lambda: len(receiver.of("/ok")) >= 2, "two webhook deliveries", 60)
        time.sleep(0.5)  # a second delivery of either event would arrive now
        verifier = openai.OpenAI(api_key="unused", webhook_secret=new["webhook_secret"])
        events = [verifier.webhooks.unwrap(d.body, d.headers) for d in receiver.of("/ok")]
        by_batch = {e.data.id: e for e in events}
        assert len(events) == 2 and set(by_batch) == {done.id, stopped.id}
        assert isinstance(by_batch[done.id], BatchCompletedWebhookEvent)
        assert isinstance(by_batch[stopped.id], BatchCancelledWebhookEvent)
    finally:
        receiver.server.shutdown()


def test_the_server_logged_no_failure(server):
    from .conftest import log_of

    text = log_of(server)
    assert "Traceback" not in text and "failed" not in text and "sk-otb-" not in text
