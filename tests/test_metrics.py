"""Metrics: what the workers count (worker/metrics.py), how a work horse hands it over, and the queue gauges.

In-process runs count straight into this process's registry, which other tests feed too, so these
tests compare values before and after what they run.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from decimal import Decimal

import fakeredis
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from producer.client import Client
from producer.local import drain
from worker import clock, metrics
from worker.connection import connect
from worker.errors import TransportError, upstream_error
from worker.metrics_serve import QueueCollector, asgi_app, registry_for
from worker.keys import Keys
from worker.ratelimit import Limiter, RateLimits, Scope
from worker.queues import enqueue_chunks
from worker.recovery import claim_next, recover_claimed
from worker.settings import Settings
from worker.upstream import failure_code

from .conftest import ROOT, free_port
from .test_jobs import chat, setup  # noqa: F401  (the in-process stack of the job-level tests)


@pytest.fixture(autouse=True)
def counting() -> Iterator[None]:
    """As in a process that serves its metrics; other tests' processes count nothing."""
    metrics.count_here()
    yield
    metrics.discard()


def value(name: str, **labels: str) -> float:
    return metrics.registry().get_sample_value(name, labels) or 0.0


def test_a_batch_counts_its_requests_tokens_and_cost(setup):
    conn, settings, client = setup
    model = "anthropic/claude-haiku-5-5"
    before = {o: value("otb_requests_total", model=model, outcome=o, route="realtime") for o in ("succeeded", "errored")}
    tokens_before = {b: value("otb_tokens_total", model=model, bucket=b) for b in ("input", "output")}
    cost_before = value("otb_cost_usd_total", model=model)
    calls_before = value("otb_upstream_request_duration_seconds_count", provider="anthropic")
    reqs = [chat(f"m{i}", model, f"metrics please {i}") for i in range(6)]
    reqs.append(chat("bad", model, "#emu:fail=400 refuse this one"))
    bid = client.submit(reqs)
    drain(conn, settings)
    status = client.status(bid)
    assert value("otb_requests_total", model=model, outcome="succeeded", route="realtime") - before["succeeded"] == 6
    assert value("otb_requests_total", model=model, outcome="errored", route="realtime") - before["errored"] == 1
    assert value("otb_tokens_total", model=model, bucket="input") - tokens_before["input"] == status["usage"]["input_tokens"]
    assert value("otb_tokens_total", model=model, bucket="output") - tokens_before["output"] == status["usage"]["output_tokens"]
    assert value("otb_cost_usd_total", model=model) - cost_before == pytest.approx(float(Decimal(status["cost"]["total"])))
    assert value("otb_upstream_request_duration_seconds_count", provider="anthropic") - calls_before == 7
    assert value("otb_upstream_calls_in_flight", provider="anthropic") == 0


def test_retries_and_429s_are_counted_by_status_code(setup):
    conn, settings, client = setup
    retries = value("otb_upstream_retries_total", provider="anthropic", code="429")
    answered_429 = value("otb_upstream_calls_total", provider="anthropic", code="429")
    client.submit([chat("limited", "anthropic/claude-haiku-5-5", "#emu:fail-first=2:429 #emu:retry-after=0 metrics 429")])
    drain(conn, settings)
    assert value("otb_upstream_retries_total", provider="anthropic", code="429") - retries == 2
    assert value("otb_upstream_calls_total", provider="anthropic", code="429") - answered_429 == 2


def test_labels_never_take_a_callers_string():
    assert metrics.model_label("google/gemini-3-flash", {"google/gemini-3-flash"}) == "google/gemini-3-flash"
    assert metrics.model_label("acme/customer-1234", {"google/gemini-3-flash"}) == "other"
    assert metrics.model_label(None, {"google/gemini-3-flash"}) == "other"
    # a provider's own error names are unbounded; the HTTP status is not
    assert failure_code(upstream_error("anthropic", 429, "some_new_error_name_123", "slow down")) == "429"
    assert failure_code(TransportError("timed out", code="upstream_timeout")) == "upstream_timeout"


def test_a_work_horse_hands_its_counts_to_the_parent_and_its_calls_in_flight_end_with_it():
    """A real fork, as RQ makes it: the horse counts, flushes, and dies with a call still in flight."""
    labels = ("anthropic/claude-haiku-5-5", "succeeded", "realtime")
    before = value("otb_requests_total", model=labels[0], outcome="succeeded", route="realtime")
    latency_before = value("otb_upstream_request_duration_seconds_bucket", provider="anthropic", le="0.5")
    feed = metrics.HorseFeed()
    pid = os.fork()
    if pid == 0:  # the horse
        try:
            feed.in_horse()
            for _ in range(3):
                metrics.request_done(labels[0], "succeeded")
            metrics.call_started("anthropic")
            metrics.call_ended("anthropic", "200", 0.3)
            metrics.call_started("anthropic")  # still in flight when the horse ends
            feed.close()
        finally:
            os._exit(0)
    pump = feed.in_parent()
    os.waitpid(pid, 0)
    pump.join(timeout=10)
    assert not pump.is_alive()
    assert value("otb_requests_total", model=labels[0], outcome="succeeded", route="realtime") - before == 3
    assert value("otb_upstream_request_duration_seconds_bucket", provider="anthropic", le="0.5") - latency_before == 1
    assert value("otb_upstream_calls_in_flight", provider="anthropic") == 0


def test_a_line_cut_off_by_a_kill_is_dropped(tmp_path):
    before = value("otb_chunks_taken_over_total", kind="claimed")
    feed = metrics.HorseFeed()
    os.write(feed.write_fd, b'{"add":[["otb_chunks_taken_over",["claimed"],1]],"obs":[]}\n'
                            b'{"add":[["otb_chunks_taken_over",["claimed"],5')
    pump = feed.in_parent()
    pump.join(timeout=10)
    assert value("otb_chunks_taken_over_total", kind="claimed") - before == 1


def test_queue_depth_and_the_oldest_chunks_age_are_read_at_scrape_time(setup):
    conn, settings, client = setup
    collector = QueueCollector(conn, settings, now=lambda: time.time() + 90)
    batches = collector.queues[1]
    depth, age = collector.read(batches)
    assert (depth, age) == (0, 0.0)
    enqueue_chunks(conn, settings, "batch_x", [f"q{i}" for i in range(250)], "t")
    depth, age = collector.read(batches)
    assert depth == 3  # chunks of OTB_CHUNK_SIZE (100)
    assert 89 < age < 120
    text = generate_latest(registry_for(conn, settings)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    by_queue = {s.labels["queue"]: s.value for s in families["otb_queue_chunks"].samples}
    assert by_queue == {"otb": 3, "otb:interactive": 0}  # the batch queue and otb serve's calls


def test_a_scrape_while_redis_is_down_still_answers():
    down = connect(f"redis://127.0.0.1:{free_port()}/0", retries=0)  # nothing listens there
    text = generate_latest(registry_for(down, Settings())).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "otb_queue_chunks" not in names and "otb_requests" in names


def test_a_process_that_serves_no_metrics_counts_nothing():
    metrics.discard()
    before = value("otb_requests_total", model="other", outcome="errored", route="realtime")
    metrics.request_done("other", "errored")
    assert value("otb_requests_total", model="other", outcome="errored", route="realtime") == before
    registry_for(fakeredis.FakeRedis(), Settings())  # serving starts the counting
    metrics.request_done("other", "errored")
    assert value("otb_requests_total", model="other", outcome="errored", route="realtime") == before + 1


def test_names_follow_prometheus_conventions():
    text = generate_latest(metrics.registry()).decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("otb_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        assert set().union(*(s.labels for s in family.samples)) <= {
            "model", "outcome", "route", "bucket", "provider", "code", "kind", "reason", "le"}


def test_the_janitor_counts_chunks_it_takes_over_and_those_it_gives_up(registry):
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    settings = Settings(registry_path=ROOT / "registry.json", chunk_size=3, max_recoveries=1)
    Client(conn, settings, registry).submit([chat(f"r{i}", "google/gemini-3-flash", "hi") for i in range(6)])
    taken, abandoned = value("otb_chunks_taken_over_total", kind="claimed"), value(
        "otb_chunks_abandoned_total", reason="worker_crashed")
    keys = Keys()
    for _ in range(2):  # taken over once, then given up (max_recoveries=1)
        got = claim_next(conn, settings, keys.lease("a-runner-that-died"))
        assert got is not None
        conn.delete(keys.recovering(got[0]))
        recover_claimed(conn, settings, now=clock.now() + settings.lease_ttl * 3)
    assert value("otb_chunks_taken_over_total", kind="claimed") - taken == 1
    assert value("otb_chunks_abandoned_total", reason="worker_crashed") - abandoned == 1


def test_rate_limit_waits_are_counted_with_the_time_waited():
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    limiter = Limiter(conn)
    scope = Scope.of("google", "gemini-3-flash-preview", "gm-test", RateLimits(rpm=600))
    waits, seconds = value("otb_ratelimit_waits_total", provider="google"), value(
        "otb_ratelimit_wait_seconds_total", provider="google")
    limiter.cool_down(scope, 0.05, "429 rate_limit_exceeded")
    assert asyncio.run(limiter.acquire(scope, 10, 10, max_wait=5)) == 0
    assert value("otb_ratelimit_waits_total", provider="google") - waits >= 1
    assert value("otb_ratelimit_wait_seconds_total", provider="google") - seconds >= 0.04


def test_otb_serve_can_mount_the_same_metrics():
    """What `otb serve` mounts: app.mount("/metrics", asgi_app(conn, settings))."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.mount("/metrics", asgi_app(fakeredis.FakeRedis(), Settings()))
    answer = TestClient(app).get("/metrics/")
    assert answer.status_code == 200
    names = {f.name for f in text_string_to_metric_families(answer.text)}
    assert {"otb_requests", "otb_queue_chunks", "otb_queue_oldest_chunk_age_seconds"} <= names
