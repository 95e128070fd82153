"""Probes of the worker process itself: what it runs, what it keeps when its registry breaks, its name
after a crash (issue 8 part 5 items 5, 11, 13). Real redis-server, real `otb worker`, the emulator."""

from __future__ import annotations

import time

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from bench.harness import settle
from producer.client import Client
from worker.settings import Settings

from ..conftest import ROOT, otb, worker_env

pytestmark = pytest.mark.e2e


def chats(n: int, prefix: str, text: str = "hello") -> list[dict]:
    return [{"custom_id": f"{prefix}{i}", "model": "google/gemini-3-flash",
             "messages": [{"role": "user", "content": f"{text} {i}"}]} for i in range(n)]


def test_a_job_naming_another_function_is_refused_unrun(redis_server, emulator, real_redis, registry, tmp_path):
    """Before: a JSON job naming os.system ran it (anyone with Redis write access had code execution)."""
    marker = tmp_path / "pwned"
    evil = Queue("otb", connection=real_redis, serializer=JSONSerializer).enqueue("os.system", f"touch {marker}")
    client = Client(real_redis, Settings(redis_url=redis_server.url), registry)
    bid = client.submit(chats(2, "r"))  # queued behind it
    proc = otb(["worker", "--burst"], worker_env(redis_server.url, emulator.url), timeout=60)
    log = (proc.stdout + proc.stderr).decode()
    assert not marker.exists(), log
    assert real_redis.hget(f"rq:job:{evil.id}", "status") == b"failed"
    assert "'os.system', which is not a job of this project" in log
    assert client.status(bid)["request_counts"]["succeeded"] == 2  # real work goes on


def test_a_worker_keeps_its_last_good_registry_while_the_file_is_broken(redis_server, emulator, real_redis, registry,
                                                                       tmp_path, spawn_worker):
    """Before: chunks started while the file was half-written failed 4 times in 0.1 s, landed in RQ's
    failed registry, and their batch stayed in_progress after the file was fixed."""
    path = tmp_path / "registry.json"
    good = (ROOT / "registry.json").read_text()
    path.write_text(good)
    env = worker_env(redis_server.url, emulator.url, OTB_REGISTRY=str(path))
    worker = spawn_worker(env)
    client = Client(real_redis, Settings(redis_url=redis_server.url, chunk_size=5), registry)
    warm = client.submit(chats(2, "w"))
    assert settle(client, warm)["status"] == "completed"
    path.write_text(good[: len(good) // 2])  # a half-written file, as an editor or a deploy leaves it
    bid = client.submit(chats(12, "r"))
    status = settle(client, bid)
    path.write_text(good)
    assert status["status"] == "completed" and status["request_counts"]["succeeded"] == 12, status
    assert real_redis.zcard("rq:failed:otb") == 0
    log = worker.stop()
    assert log.count("keeping the last good registry") == 1, log[-2000:]


def test_a_worker_name_left_by_a_crash_is_taken_over_and_a_live_one_refused(redis_server, emulator, real_redis,
                                                                            spawn_worker):
    """Before: `otb worker --name X` was refused with a traceback for ~110 s after X crashed."""
    env = worker_env(redis_server.url, emulator.url)
    first = spawn_worker(env, "--name", "w1")
    deadline = time.monotonic() + 20
    while not real_redis.exists("rq:worker:w1") and time.monotonic() < deadline:
        time.sleep(0.1)
    twin = otb(["worker", "--name", "w1", "--burst"], env, timeout=60)
    err = twin.stderr.decode()
    assert twin.returncode == 1 and "Traceback" not in err and "already running" in err, err
    first.kill_all()
    again = otb(["worker", "--name", "w1", "--burst"], env, timeout=60)
    out = (again.stdout + again.stderr).decode()
    assert again.returncode == 0 and "Traceback" not in out, out
    assert "taking it over" in out


@pytest.mark.parametrize("content", ["{bad", None])
def test_a_worker_with_a_broken_or_missing_limits_file_refuses_to_start(redis_server, emulator, tmp_path, content):
    """OTB_LIMITS was read only by each chunk run: a broken file let the worker start, then failed every
    chunk it took (its requests ended chunk_failed). Now the worker refuses in one line."""
    limits = tmp_path / "limits.json"
    if content is not None:
        limits.write_text(content)
    done = otb(["worker", "--burst"], worker_env(redis_server.url, emulator.url, OTB_LIMITS=str(limits)), timeout=30)
    err = done.stderr.decode()
    assert done.returncode != 0 and "Error: cannot start: rate-limit file" in err and "Traceback" not in err, err
