"""A key's --max-cost over all its batches and calls at once (their shared pool), through the real SDK against
a real `otb serve`, real `otb worker`s, the emulator and a real redis-server: batches running side by side never
pass it together, a call beside a running batch sees what the batch spent, and every result's cost is counted
on the key once, as it is committed.

Each Sonnet 5.5 line below costs about $0.00019 on the emulator but may cost up to $0.00103 (its 100-token
output limit at $10 per 1M): 20 of them cost about $0.0038, more than half of a $0.005 key.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal

import openai
import pytest

from bench.harness import WorkerProcess, worker_env

from .conftest import api_cli, create_key, sdk
from .test_batches_api import content_lines, create, jsonl, retrieve, settled, upload

pytestmark = pytest.mark.e2e

SONNET = "anthropic/claude-sonnet-5-5"
N = 20
WORST = Decimal("0.0011")  # a line's worst case, its input included


def lines(tag: str, n: int = N, *, slow_ms: int = 100, max_tokens: int = 100) -> bytes:
    return jsonl(*({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": SONNET, "max_tokens": max_tokens,
                             "messages": [{"role": "user", "content": f"#emu:slow={slow_ms} {tag} {i}"}]}}
                   for i in range(n)))


def costs_of(client: openai.OpenAI, batch_id: str) -> list[Decimal]:
    batch = settled(client, batch_id)
    assert batch.status == "completed", batch
    return [Decimal(x["cost"]["total"]) for x in content_lines(client, batch.output_file_id)
            + content_lines(client, batch.error_file_id)]


def spent(api_redis, name: str) -> Decimal:  # type: ignore[no-untyped-def]
    return Decimal(int(api_redis.client().hget(f"otb:tenant:{name}", "spent_pico") or 0)).scaleb(-12)


def test_two_batches_of_a_key_running_at_once_never_pass_its_budget_together(live, env, api_redis, emulator):
    cap = Decimal("0.005")
    client = sdk(live, create_key(env, "pair", "--max-cost", str(cap)))
    second = WorkerProcess(worker_env(api_redis.url, emulator.url))  # the batches' chunks run side by side
    try:
        tag = uuid.uuid4().hex[:8]
        batches = [create(client, upload(client, lines(f"{tag} {n}"))) for n in range(2)]
        results = [settled(client, b.id) for b in batches]
        lines_of = [content_lines(client, b.output_file_id) + content_lines(client, b.error_file_id) for b in results]
    finally:
        second.stop(timeout=5)
    every = [x for one in lines_of for x in one]
    total = sum(Decimal(x["cost"]["total"]) for x in every)
    refused = [x for x in every if (x["error"] or {}).get("code") == "budget_exceeded"]
    sent = [x for x in every if x["response"] and x["response"]["status_code"] == 200]
    assert len(every) == 2 * N and len(sent) + len(refused) == 2 * N, [x["error"] for x in every if x not in sent]
    assert total <= cap and spent(api_redis, "pair") == total, (total, spent(api_redis, "pair"), len(refused))
    assert refused and all(Decimal(x["cost"]["total"]) == 0 for x in refused)  # not sent, not paid
    assert cap - WORST < total  # it stopped within one worst case of the cap
    assert all(len(one) == N and any(x in sent for x in one) for one in lines_of)  # both ran


def test_a_call_beside_a_running_batch_of_its_key_sees_what_the_batch_spent(live, env, api_redis):
    cap = Decimal("0.005")
    client = sdk(live, create_key(env, "beside", "--max-cost", str(cap)))
    conn = api_redis.client()
    tag = uuid.uuid4().hex[:8]
    data = lines(tag, 10) + jsonl({"custom_id": "slow", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": SONNET, "max_tokens": 100, "messages": [{"role": "user", "content": f"#emu:slow=8000 {tag} slow"}]}})
    batch = create(client, upload(client, data))
    deadline = time.monotonic() + 30
    while int(conn.hget(f"otb:batch:{batch.id}", "succeeded") or 0) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    batch_spent = Decimal(int(conn.hget(f"otb:batch:{batch.id}", "spent_pico"))).scaleb(-12)
    assert spent(api_redis, "beside") == batch_spent > Decimal("0.0015")  # live, not at the batch's end
    assert retrieve(client, batch.id).status == "in_progress"

    big = {"model": SONNET, "messages": [{"role": "user", "content": "#emu:slow=50 big"}], "max_tokens": 350}
    with pytest.raises(openai.RateLimitError) as caught:  # its worst case ($0.0035) fits the key, not beside the batch
        client.chat.completions.create(**big)  # type: ignore[call-overload]
    assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "budget of key 'beside'" in caught.value.message

    small = client.chat.completions.with_raw_response.create(
        model=SONNET, messages=[{"role": "user", "content": "#emu:slow=50 small"}], max_tokens=20)
    call_cost = Decimal(small.headers["x-otb-cost"])
    assert settled(client, batch.id).status == "completed"
    assert spent(api_redis, "beside") == sum(costs_of(client, batch.id)) + call_cost <= cap


def test_a_keys_spend_is_each_result_counted_once_as_it_is_committed(live, env, api_redis):
    """A key without --max-cost: its batches' commits (real time and the providers' batch APIs) and its calls
    add to its spend, and a batch's end adds nothing more."""
    client = sdk(live, create_key(env, "once"))
    tag = uuid.uuid4().hex[:8]
    realtime = jsonl(*({"custom_id": f"g{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": SONNET, "max_tokens": 50, "service_tier": "default",
        "messages": [{"role": "user", "content": f"{tag} g{i}"}]}} for i in range(5)))
    batches = [create(client, upload(client, lines(tag, 5))), create(client, upload(client, realtime))]
    calls = [Decimal(client.chat.completions.with_raw_response.create(
        model=SONNET, messages=[{"role": "user", "content": f"{tag} call {i}"}], max_tokens=20).headers["x-otb-cost"])
        for i in range(2)]
    costs = [c for b in batches for c in costs_of(client, b.id)]
    routes = {x["meta"].get("route") for b in batches for x in content_lines(client, settled(client, b.id).output_file_id)}
    assert routes == {"native", "realtime"}  # a 24 h Claude batch goes to Message Batches: its commits count too
    assert spent(api_redis, "once") == sum(costs) + sum(calls) > 0  # the batches' ends added nothing more
    listed = api_cli(["keys", "list", "--json"], env)  # what the operator sees: the same figure, exact
    row = next(r for r in json.loads(listed.stdout)["data"] if r["name"] == "once")
    assert Decimal(row["spent"]) == sum(costs) + sum(calls)
    text = api_cli(["keys", "list"], env).stdout.decode()
    assert f"spent ${row['spent']}" in next(line for line in text.splitlines() if line.startswith("once "))
