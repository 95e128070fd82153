"""Shared fixtures. Outbound network is blocked: only loopback and unix sockets may be reached."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker import clock, retry
from worker.registry import Registry, load_registry

ROOT = Path(__file__).resolve().parent.parent
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # unix socket
        return True
    host = str(address[0]) if isinstance(address, tuple) else ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _guarded(real):  # type: ignore[no-untyped-def]
    def connect(self, address):  # type: ignore[no-untyped-def]
        if not _is_local(address):
            raise ConnectionRefusedError(f"tests may not reach {address!r}: only loopback is allowed")
        return real(self, address)

    return connect


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> None:
    socket.socket.connect = _guarded(_real_connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded(_real_connect_ex)  # type: ignore[method-assign]


# The day in-process tests run on, whatever the machine's date: the registry's retirements and price
# changes make results depend on the day. A test about another day pins it with `clock.pinned(...)`.
# End-to-end tests run real processes on the real date, so they use models with no retirement
# scheduled (tests/test_dates.py keeps them so).
SUITE_DAY = "2026-11-27"


@pytest.fixture(autouse=True)
def _suite_day(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("e2e"):
        yield
        return
    with clock.pinned(SUITE_DAY):
        yield


@pytest.fixture(autouse=True)
def _no_backoff_sleep(request: pytest.FixtureRequest) -> Iterator[None]:
    """In-process tests never sleep out a retry backoff (the waits are recorded instead); real processes do."""
    if request.node.get_closest_marker("e2e"):
        yield
        return
    with retry.instant():
        yield


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry(ROOT / "registry.json")


# -- real services -----------------------------------------------------------------------------
import redis  # noqa: E402

from bench.harness import RedisServer, WorkerProcess, free_port, otb, worker_env  # noqa: E402,F401


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def real_redis(redis_server: RedisServer) -> redis.Redis:
    conn = redis_server.client()
    conn.flushdb()
    return conn


@pytest.fixture(scope="session")
def emulator(registry: Registry):  # type: ignore[no-untyped-def]
    from worker.emulator import EmulatorConfig, start_background

    emu = start_background(EmulatorConfig(), registry)
    yield emu
    emu.stop()


@pytest.fixture
def spawn_worker():  # type: ignore[no-untyped-def]
    started: list[WorkerProcess] = []

    def spawn(env: dict[str, str], *args: str) -> WorkerProcess:
        w = WorkerProcess(env, *args)
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.stop(timeout=5)
