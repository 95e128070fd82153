"""A chunk executed twice at the same time (orphaned horse + retry) still commits one result per request."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest

from producer.client import Client
from worker.chunk import ChunkSummary, process_chunk
from worker.settings import Settings

from ..conftest import ROOT

pytestmark = pytest.mark.e2e


def test_two_simultaneous_runs_of_one_chunk_commit_each_request_once(real_redis, redis_server, emulator, registry):
    settings = Settings(redis_url=redis_server.url, anthropic_base_url=emulator.url, google_base_url=emulator.url,
                        registry_path=ROOT / "registry.json", api_keys={"anthropic": "k", "google": "k"})
    client = Client(real_redis, settings, registry)
    ids = [f"d{i}" for i in range(30)]
    bid = client.submit([{"custom_id": cid, "model": "google/gemini-3-flash",
                          "messages": [{"role": "user", "content": f"#emu:slow=150 question {cid}"}]} for cid in ids])
    summaries: list[ChunkSummary] = []

    def execute() -> None:
        conn = redis_server.client()
        summaries.append(asyncio.run(process_chunk(conn, settings, bid, ids)))

    threads = [threading.Thread(target=execute) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    status = client.status(bid)
    assert status["request_counts"] == {"total": 30, "succeeded": 30, "errored": 0, "canceled": 0, "expired": 0, "processing": 0}
    lines = list(client.results(bid))
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    assert sum(Decimal(line["cost"]["total"]) for line in lines) == Decimal(status["cost"]["total"])
    # both runs called upstream for requests in flight at once: spent counts every paid call, cost only one each
    assert Decimal(status["spent"]) >= Decimal(status["cost"]["total"]) > 0
    assert sum(s.outcomes["succeeded"] for s in summaries) == 30  # the losing commits report "skipped"
