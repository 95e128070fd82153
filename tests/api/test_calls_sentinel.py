"""A call through `otb serve` when REDIS_URL names Sentinels: the server waits on the master they name."""

from __future__ import annotations

import pytest

from bench.harness import SentinelTopology, ServerProcess, WorkerProcess, worker_env

from .conftest import api_env, create_key, sdk

pytestmark = pytest.mark.e2e


def test_a_call_is_answered_over_a_sentinel_url(tmp_path, emulator):  # type: ignore[no-untyped-def]
    topology = SentinelTopology(tmp_path)
    try:
        env = api_env(topology.url)
        key = create_key(env, "acme")
        worker = WorkerProcess(worker_env(topology.url, emulator.url))
        server = ServerProcess(env, log=tmp_path / "serve.log")
        try:
            answer = sdk(server, key).chat.completions.create(model="google/gemini-3-flash",
                                                              messages=[{"role": "user", "content": "Hello"}])
            assert answer.choices[0].message.content
        finally:
            server.stop()
            worker.stop(timeout=5)
    finally:
        topology.stop()
