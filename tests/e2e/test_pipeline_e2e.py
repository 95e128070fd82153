"""End to end as a user runs it: real redis-server, two `otb worker` processes, the CLI, the emulator.

The costs are checked by an independent hand calculation straight from registry.json prices.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from ..conftest import ROOT, otb, worker_env

pytestmark = pytest.mark.e2e

CHAT_MODELS = ["anthropic/claude-haiku-5-5", "anthropic/claude-sonnet-5-5", "anthropic/claude-opus-5-5",
               "google/gemini-3-flash", "google/gemini-3.8-flash", "google/gemini-3.5-flash"]
BAD_IDS = ["openai/gpt-4o", "google/gemini-9-ultra", "anthropic/claude-nonexistent"]


def mixed_batch(n: int = 200) -> list[dict]:
    lines = []
    for i in range(n):
        if i % 50 == 7:
            model = BAD_IDS[(i // 50) % len(BAD_IDS)]
            lines.append({"custom_id": f"bad-{i}", "model": model, "messages": [{"role": "user", "content": "x"}]})
        elif i % 10 == 3:
            lines.append({"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
                          "body": {"model": "google/gemini-embedding-001", "input": [f"doc {i} a", f"doc {i} b"]}})
        else:
            model = CHAT_MODELS[i % len(CHAT_MODELS)]
            system = [{"type": "text", "text": "Shared instructions. " * 40, "cache_control": {"type": "ephemeral"}}]
            messages = [{"role": "system", "content": system if model.startswith("anthropic") else "Be brief."},
                        {"role": "user", "content": f"Question number {i}: what is {i} squared?"}]
            body = {"model": model, "messages": messages, "max_tokens": 300}
            if i % 4 == 0:
                body["reasoning_effort"] = "low"
            lines.append({"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return lines


def prices_on(raw: dict, day: str) -> dict[str, dict]:
    """Each model's rates on `day`: the base row with every dated change up to that day applied."""
    fields = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
    prices = {}
    for m in raw["models"]:
        if "pricing" not in m:
            continue
        rates = {k: Decimal(v) for k, v in m["pricing"].items() if k in fields}
        for change in m["pricing"].get("changes", []):
            if change["effective"] <= day:
                rates.update({k: Decimal(v) for k, v in change.items() if k in fields})
        prices[m["id"]] = rates
    return prices


def hand_cost(meta: dict, prices: dict[str, dict]) -> Decimal:
    """Σ tokens × price / 1e6 with the registry's base rates (no size tier is crossed in this batch)."""
    p = prices[meta["billed_model"]]
    u = meta["usage"]
    assert u["input_tokens"] + u["cache_read_tokens"] + u["cache_write_5m_tokens"] < 100_000
    total = (u["input_tokens"] * p["input"] + u["cache_read_tokens"] * p["cache_read"]
             + u["cache_write_5m_tokens"] * p["cache_write"]
             + u["cache_write_1h_tokens"] * p.get("cache_write_1h", 2 * p["cache_write"])
             + u["output_tokens"] * p["output"])
    return total / Decimal(1_000_000)


@pytest.fixture
def workers(redis_server, emulator, real_redis):  # type: ignore[no-untyped-def]
    env = worker_env(redis_server.url, emulator.url)
    procs = [subprocess.Popen([sys.executable, "-m", "producer.cli", "worker", "--concurrency", "32"], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    yield env, procs
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def test_200_line_mixed_batch_ends_with_one_exact_result_per_request(workers, real_redis, tmp_path: Path):
    env, procs = workers
    batch = mixed_batch()
    src = tmp_path / "batch.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in batch))

    done = otb(["submit", str(src), "--keep-valid", "--wait", "--json"], env, timeout=240)
    assert done.returncode == 2, done.stderr.decode()  # finished, with errored requests (the 4 unknown ids)
    status = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": 200, "succeeded": 196, "errored": 4, "canceled": 0, "expired": 0, "processing": 0}
    assert b"model_not_found" in done.stderr

    out = tmp_path / "results.jsonl"
    assert otb(["results", status["id"], "-o", str(out)], env).returncode == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [b["custom_id"] for b in batch]  # one each, input order

    raw = json.loads((ROOT / "registry.json").read_text(), parse_float=Decimal)
    total = Decimal(0)
    for line in lines:
        prices = prices_on(raw, line["meta"]["completed_at"][:10])  # the UTC day the request ran
        assert set(line["cost"]) == {"input", "cache_read", "cache_write", "output", "total"}
        if line["custom_id"].startswith("bad-"):
            assert line["response"]["status_code"] == 400 and line["cost"]["total"] == "0"
            assert line["response"]["body"]["error"]["code"] == "model_not_found"
            continue
        assert line["response"]["status_code"] == 200, line
        assert Decimal(line["cost"]["total"]) == hand_cost(line["meta"], prices), line["custom_id"]
        total += Decimal(line["cost"]["total"])
    assert total == Decimal(status["cost"]["total"])
    assert any(line["meta"]["usage"]["cache_read_tokens"] for line in lines if "usage" in line["meta"])
    assert {line["meta"]["billed_model"] for line in lines if line["custom_id"].startswith("chat-")} >= {"google/gemini-3.6-flash"}

    # the report agrees with the results file to the last digit, in all three formats
    report = json.loads(otb(["report", "--batch", status["id"], "--by", "model", "--format", "json"], env).stdout)
    assert Decimal(report["total"]["cost"]["total"]) == total and report["total"]["requests"] == 200
    assert sum(Decimal(r["cost"]["total"]) for r in report["rows"]) == total
    csv_rows = otb(["report", "--batch", status["id"], "--format", "csv"], env).stdout.decode().splitlines()
    assert csv_rows[-1].startswith("total,200,196,4,") and Decimal(csv_rows[-1].rsplit(",", 1)[1]) == total
    table = otb(["report", "--batch", status["id"], "--by", "provider"], env).stdout.decode()
    assert Decimal(next(ln for ln in table.splitlines() if ln.startswith("total")).split()[-1]) == total
    assert report["errors"] == {"model_not_found": 4}

    human = otb(["status", status["id"]], env)
    assert f"${status['cost']['total']}" in human.stdout.decode()
    # keys never reach Redis
    for key in real_redis.scan_iter("*"):
        kind = real_redis.type(key)
        blob = repr(real_redis.dump(key)) if kind != b"none" else ""
        assert "SECRET-KEY" not in blob, key


def test_invalid_file_is_refused_whole_and_nothing_is_enqueued(redis_server, emulator, real_redis, tmp_path):
    env = worker_env(redis_server.url, emulator.url)
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "ok"}]})
                   + "\n" + json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]}) + "\n")
    proc = otb(["submit", str(src)], env)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert 'line 2: {"error": {"message": "model \\"openai/gpt-4o\\" not found", "type": "invalid_request_error", "code": "model_not_found"}}' in err
    assert "nothing was enqueued" in err
    assert real_redis.dbsize() == 0


def test_malformed_registry_stops_worker_and_cli_at_start(redis_server, emulator, tmp_path):
    bad = tmp_path / "registry.json"
    raw = json.loads((ROOT / "registry.json").read_text())
    raw["models"][1]["pricing"]["input"] = -1
    bad.write_text(json.dumps(raw))
    env = worker_env(redis_server.url, emulator.url, OTB_REGISTRY=str(bad))
    for args in (["worker", "--burst"], ["models"]):
        proc = otb(args, env, timeout=30)
        assert proc.returncode == 1
        assert f'models[1] ("{raw["models"][1]["id"]}"): pricing.input' in proc.stderr.decode()


def test_models_json_is_the_catalog_shape(redis_server, emulator):
    proc = otb(["models", "--json"], worker_env(redis_server.url, emulator.url))
    catalog = json.loads(proc.stdout)
    assert catalog["object"] == "list"
    by_id = {m["id"]: m for m in catalog["data"]}
    assert by_id["google/gemini-3-flash"] == {"id": "google/gemini-3-flash", "object": "model", "owned_by": "google",
                                              "pricing": {"input": 0.5, "output": 3.0, "cache_read": 0.05, "cache_write": 0.5}}
    assert by_id["anthropic/claude-haiku-5-5"]["pricing"] == {"input": 0.1, "output": 0.5, "cache_read": 0.01, "cache_write": 0.125}
    assert "anthropic/claude-opus-4-1" not in by_id  # retired
