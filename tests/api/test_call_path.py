"""The lean road of an HTTP call: one transaction that writes what `otb submit` writes, one shared reader of
batch ends, a work horse that stays for the next call, and claimed calls finished together."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from rq import Worker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bench.harness import RedisServer, ServerProcess, WorkerProcess, worker_env
from producer.api.aredis import AsyncRedis
from producer.api.batchends import BatchEnds
from producer.options import SubmitOptions
from producer.submit import SubmissionRejected, new_batch_id, submit, submit_one
from worker.keys import Keys
from worker.linger import claimer
from worker.queues import interactive_name, queue_for, wait_for_call
from worker.recovery import claim_next, finish_claimed
from worker.settings import Settings
from worker.store import Store

from ..conftest import ROOT
from .conftest import api_env, create_key, sdk

LINE = {"custom_id": "call", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}}


def settings_on(server: RedisServer) -> Settings:
    return Settings(redis_url=server.url, registry_path=ROOT / "registry.json")


def keys_of(conn, bid: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Every key of batch `bid` and its RQ job, with its type, TTL class and (for hashes) its field names."""
    out: dict[str, object] = {}
    for raw in conn.scan_iter("*"):
        key = raw.decode()
        if bid not in key:
            continue
        kind = conn.type(key).decode()
        fields = sorted(f.decode() for f in conn.hkeys(key)) if kind == "hash" else None
        out[key.replace(bid, "B")] = (kind, conn.ttl(key) > 0, fields)
    return out


def test_submit_one_writes_what_submit_writes(real_redis, registry):  # type: ignore[no-untyped-def]
    settings = Settings(registry_path=ROOT / "registry.json")
    store = Store.of(real_redis, settings)
    options = SubmitOptions(metadata={"key": "acme"}, completion_window=600, mode="realtime")
    raw = json.dumps(LINE).encode()
    one = new_batch_id()
    with real_redis.pipeline(transaction=True) as pipe:
        submit_one(store, settings, registry, raw, options, one, store.redis_now(), pipe)
        pipe.execute()
    full = submit(real_redis, settings, registry, [raw], options).batch_id
    assert keys_of(real_redis, one) == keys_of(real_redis, full)
    lean, usual = store.batch(one), store.batch(full)
    assert lean is not None and usual is not None
    for field in ("status", "total", "options", "metadata"):
        assert lean[field] == usual[field]
    assert real_redis.ttl(f"otb:batch:{one}:jobs") == real_redis.ttl(f"otb:batch:{one}")


def test_submit_one_refuses_a_bad_line_and_writes_nothing(real_redis, registry):  # type: ignore[no-untyped-def]
    settings = Settings(registry_path=ROOT / "registry.json")
    store = Store.of(real_redis, settings)
    bad = json.dumps({**LINE, "body": {**LINE["body"], "model": "openai/gpt-4o"}}).encode()
    with pytest.raises(SubmissionRejected) as caught, real_redis.pipeline(transaction=True) as pipe:
        submit_one(store, settings, registry, bad, SubmitOptions(), new_batch_id(), store.redis_now(), pipe)
    assert caught.value.errors[0].error.code == "model_not_found"
    assert real_redis.dbsize() == 0


def test_waiting_for_a_call_leaves_the_queue_as_it_was(real_redis, registry):  # type: ignore[no-untyped-def]
    settings = Settings(registry_path=ROOT / "registry.json")
    queue = queue_for(real_redis, settings, interactive=True)
    assert wait_for_call(real_redis, settings, 0.05) is False
    for job_id in ("a", "b", "c"):
        queue.push_job_id(job_id)
    assert wait_for_call(real_redis, settings, 0.05) is True
    assert queue.get_job_ids() == ["a", "b", "c"]


def test_an_idle_run_started_by_a_call_takes_the_next_call_when_it_comes(real_redis, registry):  # type: ignore[no-untyped-def]
    settings = Settings(registry_path=ROOT / "registry.json")
    calls = settings.with_(queue_name=interactive_name(settings))
    claim = claimer(real_redis, settings, Keys().lease("runner"), "", interactive=True, stop=threading.Event(),
                    lost=threading.Event())
    later = threading.Timer(0.3, lambda: submit(real_redis, calls, registry, [json.dumps(LINE).encode()]))
    later.start()
    got = claim()  # nothing queued yet: it waits, and takes the call once it is queued
    later.join()
    assert got is not None and got[2] == ["call"]
    assert claimer(real_redis, settings, Keys().lease("runner"), "", interactive=False, stop=threading.Event(),
                   lost=threading.Event())() is None


def test_claimed_calls_are_finished_together_and_a_vanished_job_is_not_written_again(real_redis, registry):  # type: ignore[no-untyped-def]
    settings = Settings(registry_path=ROOT / "registry.json")
    calls = settings.with_(queue_name=interactive_name(settings))
    for _ in range(3):
        submit(real_redis, calls, registry, [json.dumps(LINE).encode()])
    lease = Keys().lease("runner")
    claimed = [claim_next(real_redis, settings, lease) for _ in range(3)]
    job_ids = [c[0] for c in claimed if c is not None]
    real_redis.delete(f"rq:job:{job_ids[2]}")  # gone meanwhile
    finish_claimed(real_redis, settings, job_ids)
    assert [Job.fetch(j, connection=real_redis, serializer=JSONSerializer).get_status() for j in job_ids[:2]] == \
        [JobStatus.FINISHED] * 2
    assert not real_redis.exists(f"rq:job:{job_ids[2]}")
    assert real_redis.hlen(Keys().claimed) == 0


def test_one_reader_wakes_each_waiting_call_when_its_batch_ends(redis_server):  # type: ignore[no-untyped-def]
    stream = Keys().all_events
    conn = redis_server.client()
    conn.delete(stream)
    conn.xadd(stream, {"type": "batch", "batch": "old", "status": "completed"})  # before: not for these

    async def run() -> list[tuple[str, bytes | None]]:
        ends = BatchEnds(AsyncRedis(redis_server.url), stream, lambda bid: (f"results:{bid}", "call"))
        woken: list[tuple[str, bytes | None]] = []

        async def wait(bid: str) -> None:
            async with ends.watch(bid) as ended:
                woken.append((bid, await asyncio.wait_for(ended, 10)))

        waits = [asyncio.ensure_future(wait(b)) for b in ("b1", "b2", "b3")]
        await asyncio.sleep(0.2)
        conn.hset("results:b1", "call", "line of b1")
        for bid in ("b2", "other", "b1", "b3"):
            conn.xadd(stream, {"type": "batch", "batch": bid, "status": "completed"})
        await asyncio.gather(*waits)
        return woken

    assert asyncio.run(run()) == [("b2", None), ("b1", b"line of b1"), ("b3", None)]


def test_a_calls_result_is_written_at_once_while_other_calls_are_in_flight(real_redis, registry):  # type: ignore[no-untyped-def]
    """Group commit holds results for others of their batch; a one-request batch has none to wait for."""
    from worker.batch import Batch
    from worker.commits import Committer
    from worker.writes import Writes

    settings = Settings(registry_path=ROOT / "registry.json")
    bid = submit(real_redis, settings, registry, [json.dumps(LINE).encode()]).batch_id
    store = Store.of(real_redis, settings)
    assert Batch.load(store, bid).single
    line = {"id": "x", "custom_id": "call", "error": None, "response": {"status_code": 200, "request_id": "q", "body": {}},
            "cost": {"input": "0", "cache_read": "0", "cache_write": "0", "output": "0", "total": "0"},
            "meta": {"outcome": "succeeded", "model": "google/gemini-3-flash", "tags": {}}}

    async def run() -> float:
        committer = Committer(store, Writes(real_redis, "otb"), quiet=lambda: False, linger=30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await committer.commit(bid, "call", line, "succeeded", alone=True)
        took = loop.time() - started
        await committer.close()
        return took

    assert asyncio.run(run()) < 10  # the linger (30 s) was not waited out, though calls are in flight
    assert store.batch(bid)["status"] == "completed"  # type: ignore[index]


@pytest.mark.e2e
def test_a_work_horse_stays_for_the_next_call(tmp_path, emulator):  # type: ignore[no-untyped-def]
    """Calls one after another: one RQ job (one fork) for the first, the rest claimed by its lingering horse."""
    server = RedisServer(tmp_path)
    try:
        env = api_env(server.url)
        worker = WorkerProcess(worker_env(server.url, emulator.url))
        serve = ServerProcess(env, log=tmp_path / "serve.log")
        try:
            client = sdk(serve, create_key(env, "acme"))
            for i in range(5):
                assert client.chat.completions.create(model="google/gemini-3-flash",
                                                      messages=[{"role": "user", "content": f"call {i}"}]).choices
            conn = server.client()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and conn.llen("rq:queue:otb:interactive"):
                time.sleep(0.1)
            forked = sum(w.successful_job_count + w.failed_job_count for w in Worker.all(connection=conn))
            started = len(conn.keys("rq:job:*"))
            assert started == 5 and forked <= 1  # the first call's job runs in a horse (counted once it ends)
        finally:
            serve.stop()
            worker.stop(timeout=5)
    finally:
        server.stop()
