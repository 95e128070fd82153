"""`otb worker --metrics-port`: a real worker (its chunks in forked work horses) runs a batch against the
emulator on a real redis-server; its /metrics, parsed with prometheus-client's parser, must agree with
the batch's own status: requests by outcome and model, tokens by bucket, cost.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import free_port, otb, worker_env

pytestmark = pytest.mark.e2e

MODELS = ["anthropic/claude-haiku-5-5", "google/gemini-3-flash"]


def batch() -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for i in range(40):
        text = f"metrics e2e question {i}"
        if i % 13 == 5:
            text += " #emu:fail=400"  # errored, not retried
        if i == 8:
            text += " #emu:fail-first=1:503 #emu:retry-after=0"  # one retry, then succeeds
        lines.append({"custom_id": f"c{i}", "model": MODELS[i % 2], "messages": [{"role": "user", "content": text}]})
    lines.append({"custom_id": "emb", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": "google/gemini-embedding-001", "input": ["first text", "second text"]}})
    return lines


def scrape(port: int) -> dict[str, list[Any]]:
    """Samples by family name, as Prometheus reads them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def total(families: dict[str, list[Any]], family: str, sample: str, **match: str) -> float:
    return sum(s.value for s in families.get(family, []) if s.name == sample
               and all(s.labels.get(k) == v for k, v in match.items()))


def wait_for(port: int, done: Any, timeout: float = 60) -> dict[str, list[Any]]:
    """Scrapes until `done(families)`: a horse hands its last counts over as its job ends."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            families = scrape(port)
            if done(families) or time.monotonic() > deadline:
                return families
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_metrics_agree_with_the_batch_the_worker_ran(redis_server, emulator, real_redis, spawn_worker, tmp_path):
    env = worker_env(redis_server.url, emulator.url, OTB_CHUNK_SIZE="10")
    port = free_port()
    spawn_worker(env, "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--concurrency", "16")
    before = wait_for(port, lambda f: "otb_queue_chunks" in f)
    assert total(before, "otb_queue_chunks", "otb_queue_chunks") == 0
    assert total(before, "otb_requests", "otb_requests_total") == 0

    path = tmp_path / "batch.jsonl"
    lines = batch()
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    submitted = otb(["submit", str(path), "--json"], env)
    assert submitted.returncode == 0, submitted.stderr.decode()
    bid = json.loads(submitted.stdout)["id"]
    shown = otb(["status", bid, "--json"], env)
    for _ in range(300):
        status = json.loads(shown.stdout)
        if status["status"] == "completed":
            break
        time.sleep(0.2)
        shown = otb(["status", bid, "--json"], env)
    assert status["status"] == "completed", status

    counts = status["request_counts"]
    families = wait_for(port, lambda f: total(f, "otb_requests", "otb_requests_total") >= counts["total"])
    for outcome in ("succeeded", "errored"):
        assert total(families, "otb_requests", "otb_requests_total", outcome=outcome, route="realtime") == counts[outcome]
    assert total(families, "otb_requests", "otb_requests_total") == counts["total"]  # nothing parked or skipped

    results = otb(["results", bid], env)
    by_model: dict[str, int] = defaultdict(int)
    for raw in results.stdout.decode().splitlines():
        by_model[json.loads(raw)["meta"]["model"]] += 1
    for model, n in by_model.items():
        assert total(families, "otb_requests", "otb_requests_total", model=model) == n

    for bucket in ("input", "cache_read", "cache_write", "output", "reasoning"):
        assert total(families, "otb_tokens", "otb_tokens_total", bucket=bucket) == status["usage"][f"{bucket}_tokens"]
    assert total(families, "otb_cost_usd", "otb_cost_usd_total") == pytest.approx(float(Decimal(status["cost"]["total"])),
                                                                                  rel=1e-9)

    calls = total(families, "otb_upstream_calls", "otb_upstream_calls_total")
    assert calls == total(families, "otb_upstream_request_duration_seconds", "otb_upstream_request_duration_seconds_count")
    assert total(families, "otb_upstream_calls", "otb_upstream_calls_total", code="400") == counts["errored"]
    assert total(families, "otb_upstream_calls", "otb_upstream_calls_total", code="503") == 1
    assert total(families, "otb_upstream_retries", "otb_upstream_retries_total", provider="anthropic", code="503") \
        + total(families, "otb_upstream_retries", "otb_upstream_retries_total", provider="google", code="503") == 1
    assert total(families, "otb_upstream_calls_in_flight", "otb_upstream_calls_in_flight") == 0
    assert total(families, "otb_queue_chunks", "otb_queue_chunks") == 0
    assert total(families, "otb_queue_oldest_chunk_age_seconds", "otb_queue_oldest_chunk_age_seconds") == 0


def test_a_metrics_port_in_use_stops_the_worker_in_one_line(redis_server, emulator, real_redis):
    env = worker_env(redis_server.url, emulator.url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = otb(["worker", "--burst", "--metrics-host", "127.0.0.1", "--metrics-port", str(port)], env, timeout=60)
    err = run.stderr.decode()
    assert run.returncode == 1, err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err and "Traceback" not in err
