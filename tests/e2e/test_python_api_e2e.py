"""Other apps: the Python API gets answers through completion events, and the README's web app works."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import httpx
import pytest

from producer.client import Client
from worker.settings import Settings

from ..conftest import ROOT, free_port, otb, worker_env

pytestmark = pytest.mark.e2e


def test_an_app_gets_its_answer_through_the_event_not_by_polling(redis_server, emulator, real_redis, registry,
                                                                 spawn_worker):
    spawn_worker(worker_env(redis_server.url, emulator.url))
    client = Client(real_redis, Settings(redis_url=redis_server.url), registry)
    calls = {"status": 0}
    real_status = client.status

    def counting_status(bid: str) -> dict:
        calls["status"] += 1
        return real_status(bid)

    client.status = counting_status  # type: ignore[method-assign]
    started = time.monotonic()
    handle = client.submit_one({"model": "anthropic/claude-haiku-5-5",
                                "messages": [{"role": "user", "content": "#emu:slow=1500 hello"}]}, tags={"app": "t"})
    line = handle.result(timeout=60)
    waited = time.monotonic() - started
    assert line["meta"]["outcome"] == "succeeded" and line["meta"]["tags"] == {"app": "t"}
    assert line["response"]["body"]["choices"][0]["message"]["content"]
    assert waited >= 1.5
    assert calls["status"] <= 2  # a poller would have asked every 0.5 s
    events = list(client.events(handle.batch_id, timeout=1))
    assert [e["type"] for e in events] == ["request", "batch"] and events[-1]["status"] == "completed"



def test_a_result_and_a_wait_after_a_retry_are_those_of_the_rerun(redis_server, real_redis, emulator, registry,
                                                                    spawn_worker):
    env = worker_env(redis_server.url, emulator.url)
    client = Client(real_redis, Settings(redis_url=redis_server.url), registry)
    tag = uuid.uuid4().hex[:8]  # the emulator remembers bodies it failed once: a new one per run
    handle = client.submit_one({"model": "google/gemini-3-flash",  # refused once (400, fatal), slow the second time
                                "messages": [{"role": "user", "content": f"#emu:fail-first=1:400 #emu:slow=1500 {tag}"}]})
    assert otb(["worker", "--burst"], env, timeout=120).returncode == 0
    assert handle.result(timeout=10)["meta"]["outcome"] == "errored"
    assert client.retry(handle.batch_id) == 1
    spawn_worker(env)
    line = handle.result(timeout=60)  # before: TimeoutError at once, the old event named a result the retry took back
    assert line["meta"]["outcome"] == "succeeded"
    again = client.submit([{"custom_id": "x", "model": "google/gemini-3-flash",
                            "messages": [{"role": "user", "content": f"#emu:fail-first=1:400 #emu:slow=1500 {tag} b"}]}])
    client.wait(again, timeout=60)
    assert client.retry(again) == 1
    status = client.wait(again, timeout=60)  # before: at once, in_progress, on the batch's first "completed" event
    assert status["status"] == "completed" and status["request_counts"]["succeeded"] == 1


def test_the_readme_web_app_hands_work_to_the_workers(redis_server, emulator, real_redis, spawn_worker):
    env = worker_env(redis_server.url, emulator.url)
    spawn_worker(env)
    port = free_port()
    app = subprocess.Popen([sys.executable, "producer/examples/webapp.py", "--port", str(port)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert json.loads(app.stdout.readline()) == {"listening": port}
        r = httpx.post(f"http://127.0.0.1:{port}/ask", json={"prompt": "Name three uses of Redis", "customer": "acme"},
                       timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert "Redis" in body["answer"] and Decimal(body["cost_usd"]) > 0
    finally:
        app.terminate()
        app.wait(timeout=10)


