"""`POST /v1/chat/completions` and `/v1/embeddings` through a real `otb serve`, a real `otb worker`
and the emulator, driven by the official `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from decimal import Decimal

import httpx
import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bench.harness import RedisServer, ServerProcess, otb, worker_env

from .conftest import api_env, create_key, sdk

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello"}]


def result_line(api_redis: RedisServer, batch_id: str) -> dict:
    return json.loads(api_redis.client().hget(f"otb:batch:{batch_id}:results", "call"))


def test_the_seed_snippet_works_verbatim(live, keys):
    from openai import OpenAI

    client = OpenAI(base_url=live.base_url, api_key=keys["acme"])
    response = client.chat.completions.create(
        model="google/gemini-3-flash",
        messages=[{"role": "user", "content": "Hello"}],
    )
    print(response.choices[0].message.content)
    assert response.choices[0].message.content and response.model == "google/gemini-3-flash"


def test_a_chat_answer_is_a_strict_chat_completion_with_its_exact_cost(live, keys, api_redis):
    raw = sdk(live, keys["acme"]).chat.completions.with_raw_response.create(model="anthropic/claude-haiku-5-5",
                                                                             messages=HELLO, max_tokens=50)
    completion = ChatCompletion.model_validate_json(raw.http_response.text, strict=True)
    assert completion.object == "chat.completion" and completion.usage and completion.usage.completion_tokens > 0
    assert completion.id.startswith("chatcmpl-msg_")  # OpenAI's shape, Anthropic's id after it
    line = result_line(api_redis, raw.headers["x-otb-batch"])
    assert raw.headers["x-otb-cost"] == line["cost"]["total"] and Decimal(line["cost"]["total"]) > 0
    assert raw.http_response.json()["cost"] == line["cost"]
    assert line["meta"]["tags"] == {"key": "acme"}


def test_embeddings_come_back_as_the_sdk_decodes_them(live, keys):
    client = sdk(live, keys["acme"])
    raw = client.embeddings.with_raw_response.create(model="google/gemini-embedding-001", input=["one", "two"])
    response = raw.parse()  # the SDK asked for base64 (its default) and decoded it
    CreateEmbeddingResponse.model_validate(response.model_dump(), strict=True)
    assert [len(d.embedding) > 0 and isinstance(d.embedding[0], float) for d in response.data] == [True, True]
    assert Decimal(raw.headers["x-otb-cost"]) > 0
    floats = client.embeddings.with_raw_response.create(model="google/gemini-embedding-001", input="one",
                                                        encoding_format="float", dimensions=128)
    assert len(CreateEmbeddingResponse.model_validate_json(floats.http_response.text, strict=True).data[0].embedding) == 128
    assert not {"id", "created"} & set(floats.http_response.json())  # OpenAI's list has neither (no chatcmpl- id)


def test_an_unknown_model_is_the_seed_body_and_a_retired_one_model_retired(live, keys):
    client = sdk(live, keys["acme"])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="openai/gpt-4o", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert caught.value.response.json() == {"error": {"message": 'model "openai/gpt-4o" not found',
                                                      "type": "invalid_request_error", "code": "model_not_found"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="google/gemini-2.0-flash", messages=HELLO)
    assert caught.value.code == "model_retired"


def test_bad_parameters_are_refused_as_otb_submit_refuses_them(live, keys):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(live, keys["acme"]).chat.completions.create(model="anthropic/claude-haiku-5-5", messages=HELLO,
                                                        temperature=0.5)
    assert "temperature" in caught.value.message and caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.body["code"] == "unsupported_parameter" and caught.value.body["param"] == "temperature"
    assert caught.value.body["message"].endswith("; remove it")  # not the CLI's --drop-unsupported-params


def test_a_provider_4xx_comes_back_with_its_status(live, keys):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(live, keys["acme"]).chat.completions.create(model="google/gemini-3-flash",
                                                        messages=[{"role": "user", "content": "#emu:fail=400 x"}])
    assert caught.value.status_code == 400 and caught.value.response.headers["x-otb-cost"] == "0"


def test_a_provider_that_never_answers_is_a_502_the_sdk_does_not_retry(live, keys):
    """The workers already tried OTB_MAX_ATTEMPTS times; an SDK retry would run all of them again."""
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(live, keys["acme"]).chat.completions.create(model="google/gemini-3-flash",
                                                        messages=[{"role": "user", "content": "#emu:reset x"}])
    headers = caught.value.response.headers
    assert caught.value.status_code == 502 and caught.value.code == "upstream_unreachable"
    assert headers["x-should-retry"] == "false" and headers["x-otb-cost"] == "0" and headers["x-otb-batch"]
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_calls_are_billed_per_key_in_the_report(live, keys, env):
    sdk(live, keys["bob"]).chat.completions.create(model="google/gemini-3-flash", messages=HELLO)
    proc = otb(["report", "--by", "tag:key", "--format", "json"], env)
    assert proc.returncode == 0, proc.stderr.decode()
    groups = {row["group"]["tag:key"]: row for row in json.loads(proc.stdout)["rows"]}
    assert groups["bob"]["succeeded"] >= 1 and Decimal(groups["bob"]["cost"]["total"]) > 0
    assert groups["acme"]["succeeded"] >= 1


def test_no_worker_answers_503_naming_the_queue(tmp_path):
    redis_server = RedisServer(tmp_path)
    try:
        env = api_env(redis_server.url)
        key = create_key(env, "lonely")
        server = ServerProcess(env, "--call-timeout", "1", log=tmp_path / "serve.log")
        try:
            with pytest.raises(openai.InternalServerError) as caught:
                sdk(server, key).chat.completions.create(model="google/gemini-3-flash", messages=HELLO)
            assert caught.value.status_code == 503 and "no worker is listening" in caught.value.message
            assert caught.value.response.headers["x-should-retry"] == "false"  # it waited already
            batch = redis_server.client().zrange("otb:batches", 0, -1)[0].decode()
            assert redis_server.client().hget(f"otb:batch:{batch}", "status") == b"cancelled"
        finally:
            server.stop()
    finally:
        redis_server.stop()


def test_streaming_works_with_the_sdk_iteration(live, keys):
    client = sdk(live, keys["acme"])
    plain_text = []
    stream = client.chat.completions.create(model="google/gemini-3-flash", messages=HELLO, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            plain_text.append(chunk.choices[0].delta.content)
    assert chunks[0].object == "chat.completion.chunk" and "".join(plain_text)
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    without_usage = list(client.chat.completions.create(model="google/gemini-3-flash", messages=HELLO, stream=True))
    assert all(c.usage is None for c in without_usage) and without_usage[-1].choices[0].finish_reason == "stop"


def test_a_streamed_tool_call_arrives_whole_with_its_index(live, keys):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    chunks = list(sdk(live, keys["acme"]).chat.completions.create(
        model="anthropic/claude-haiku-5-5", messages=HELLO, tools=tools, tool_choice="required", stream=True))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_key_over_its_budget_gets_429_insufficient_quota(live, env, api_redis, emulator):
    key = create_key(env, "thrifty", "--max-cost", "0.0002")
    client, conn = sdk(live, key), api_redis.client()
    client.chat.completions.create(model="anthropic/claude-haiku-5-5", messages=HELLO, max_tokens=200)  # worst $0.0001
    spent = int(conn.hget("otb:tenant:thrifty", "spent_pico"))
    assert spent > 0
    sent = emulator.stats()["calls"]
    with pytest.raises(openai.RateLimitError) as caught:  # its worst case, $0.0005, can never fit the key's budget
        client.chat.completions.create(model="anthropic/claude-haiku-5-5", messages=HELLO, max_tokens=1000)
    assert caught.value.code == "insufficient_quota" and caught.value.response.headers["x-should-retry"] == "false"
    conn.hset("otb:tenant:thrifty", "spent_pico", 200_000_000)  # the budget reached: refused before any worker sees it
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="google/gemini-3-flash", messages=HELLO)
    assert caught.value.code == "insufficient_quota" and caught.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="google/gemini-embedding-001", input="x")
    assert emulator.stats()["calls"] == sent and int(conn.hget("otb:tenant:thrifty", "spent_pico")) == 200_000_000


def test_a_call_made_while_a_big_batch_runs_starts_at_once(live, keys, api_redis, emulator, tmp_path):
    """Interactive calls take their own queue, ahead of the batch's chunks: measured, not asserted (p95 printed)."""
    batch = tmp_path / "big.jsonl"
    batch.write_text("".join(json.dumps({"model": "google/gemini-3-flash", "messages": [
        {"role": "user", "content": f"#emu:slow=200 batch {i}"}]}) + "\n" for i in range(2000)))
    proc = otb(["submit", str(batch), "--json"], worker_env(api_redis.url, emulator.url))
    assert proc.returncode == 0, proc.stderr.decode()
    batch_id = json.loads(proc.stdout)["id"]
    client, waits, done_at_call = sdk(live, keys["acme"]), [], []
    for i in range(20):
        done_at_call.append(int(api_redis.client().hget(f"otb:batch:{batch_id}", "succeeded") or 0))
        started = time.monotonic()
        answer = client.chat.completions.create(model="google/gemini-3-flash", messages=[
            {"role": "user", "content": f"interactive {i}"}])
        waits.append(time.monotonic() - started)
        assert answer.choices[0].message.content
    p95 = sorted(waits)[int(len(waits) * 0.95) - 1]
    print(f"\n20 calls during a 2,000-request batch (done when each call started: {done_at_call}): "
          f"median {statistics.median(waits) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(waits) * 1000:.0f} ms")


def test_a_call_waits_for_a_slow_answer(live, keys):
    """Longer than one blocked read of the events and redis-py's 5 s socket timeout (before: a 500)."""
    answer = sdk(live, keys["acme"]).chat.completions.create(model="google/gemini-3-flash", messages=[
        {"role": "user", "content": "#emu:slow=6500 take your time"}])
    assert answer.choices[0].message.content


def test_streamed_chunks_are_strict_chat_completion_chunks(live, keys):
    body = {"model": "google/gemini-3-flash", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(f"{live.base_url}/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {keys['acme']}"})
    assert response.headers["content-type"].startswith("text/event-stream") and response.headers["x-otb-cost"]
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        ChatCompletionChunk.model_validate_json(event, strict=True)


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "could not parse the JSON body"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"model": "google/gemini-3-flash", "messages": HELLO, "stream": "yes"}).encode(), 400, "'stream'"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "could not parse the JSON body"),
    (json.dumps({"model": "google/gemini-3-flash", "messages": HELLO, "pad": "x" * (9 << 20)}).encode(), 413, "limit"),
])
def test_a_bad_body_is_refused_in_openai_shape(live, keys, body, status, says):
    response = httpx.post(f"{live.base_url}/chat/completions", content=body, timeout=60,
                          headers={"Authorization": f"Bearer {keys['acme']}", "Content-Type": "application/json"})
    assert response.status_code == status and says in response.json()["error"]["message"]


def test_the_docs_show_the_call_bodies(live):
    spec = httpx.get(f"{live.url}/openapi.json").json()
    body = {path: spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            for path in ("/v1/chat/completions", "/v1/embeddings")}
    chat, embeddings = body["/v1/chat/completions"], body["/v1/embeddings"]
    assert chat["required"] == ["model", "messages"] and embeddings["required"] == ["model", "input"]
    assert {"max_tokens", "max_completion_tokens", "temperature", "stream", "stream_options", "tools",
            "tool_choice", "response_format"} <= set(chat["properties"])
    message = chat["properties"]["messages"]["items"]
    assert message["required"] == ["role"] and "tool" in message["properties"]["role"]["enum"]
    assert {"content", "tool_calls", "tool_call_id"} <= set(message["properties"])
    assert {"dimensions", "encoding_format"} <= set(embeddings["properties"])
    assert "$ref" not in json.dumps(body)  # each stands alone: no dangling #/$defs


def test_many_concurrent_calls_are_each_answered_with_their_own_cost(live, keys, api_redis):
    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=live.base_url, api_key=keys["acme"], max_retries=0)
        calls = [client.chat.completions.with_raw_response.create(model="google/gemini-3-flash", messages=[
            {"role": "user", "content": f"#emu:slow=200 question {i} " + "x" * i}]) for i in range(200)]
        return await asyncio.gather(*calls)

    started = time.monotonic()
    answers = asyncio.run(run())
    took = time.monotonic() - started
    batches = {raw.headers["x-otb-batch"] for raw in answers}
    assert len(batches) == 200
    for raw in answers[::20]:
        assert raw.headers["x-otb-cost"] == result_line(api_redis, raw.headers["x-otb-batch"])["cost"]["total"]
    single = []
    for _ in range(10):
        begun = time.monotonic()
        sdk(live, keys["acme"]).chat.completions.create(model="google/gemini-3-flash", messages=[
            {"role": "user", "content": "#emu:slow=200 one"}])
        single.append(time.monotonic() - begun)
    print(f"\n200 concurrent calls (200 ms upstream) in {took:.2f} s ({200 / took:.0f}/s); one call at a time: "
          f"median {statistics.median(single) * 1000:.0f} ms")
