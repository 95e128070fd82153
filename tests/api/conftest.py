"""A real redis-server and real `otb serve` processes per test module, driven by the real `openai` SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bench.harness import ROOT, RedisServer, ServerProcess, WorkerProcess, real_clock_env, worker_env


def api_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in real_clock_env().items() if not k.startswith(("OTB_", "REDIS_URL"))}
    env.update(REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    return env


def api_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """The real `otb` CLI in a fresh process (serve, keys)."""
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env, capture_output=True,
                          timeout=timeout, cwd=ROOT)


def create_key(env: dict[str, str], name: str, *options: str) -> str:
    proc = api_cli(["keys", "create", name, "--json", *options], env)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)["key"]


def sdk(server: ServerProcess, key: str, **kwargs: object) -> openai.OpenAI:
    """The official client as a user points it at us; no retries, so each call is one request."""
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def api_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("api-redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(api_redis: RedisServer) -> dict[str, str]:
    return api_env(api_redis.url)


@pytest.fixture(scope="module")
def keys(env: dict[str, str]) -> dict[str, str]:
    """Two tenants, acme and bob."""
    return {name: create_key(env, name) for name in ("acme", "bob")}


@pytest.fixture(scope="module")
def server(env: dict[str, str], keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(env, log=tmp_path_factory.mktemp("serve") / "serve.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def worker(api_redis: RedisServer, emulator) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    proc = WorkerProcess(worker_env(api_redis.url, emulator.url))
    yield proc
    proc.stop(timeout=5)


@pytest.fixture(scope="module")
def live(server: ServerProcess, worker: WorkerProcess) -> ServerProcess:
    """The module's server, with an `otb worker` listening (on the emulator)."""
    return server


@pytest.fixture(scope="module")
def acme(server: ServerProcess, keys: dict[str, str]) -> openai.OpenAI:
    return sdk(server, keys["acme"])


@pytest.fixture(scope="module")
def bob(server: ServerProcess, keys: dict[str, str]) -> openai.OpenAI:
    return sdk(server, keys["bob"])


def log_of(server: ServerProcess) -> str:
    return Path(server.log).read_text(errors="replace")
