"""Shared fixtures. Outbound network is blocked: only loopback and unix sockets may be reached."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry(ROOT / "registry.json")


# -- real services -----------------------------------------------------------------------------
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import redis  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port (so tests never touch a developer's data)."""

    def __init__(self, workdir: Path, *, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server (see README)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "yes" if appendonly else "no", "--appendfsync", "always", "--dir", str(workdir)]
        self._start()

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conn = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                conn.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def restart(self, pause: float) -> None:
        """Shut Redis down (as an operator would), stay down for `pause` seconds, start it on the same data."""
        try:
            redis.Redis(port=self.port).shutdown()
        except redis.ConnectionError:
            pass
        self.proc.wait(timeout=10)
        time.sleep(pause)
        self._start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


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


def worker_env(redis_url: str, emulator_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTB_", "ANTHROPIC", "GEMINI", "REDIS_URL"))}
    env.update(
        REDIS_URL=redis_url,
        OTB_ANTHROPIC_BASE_URL=emulator_url,
        OTB_GOOGLE_BASE_URL=emulator_url,
        ANTHROPIC_API_KEY="sk-ant-test-SECRET-KEY-1234",
        GEMINI_API_KEY="gm-test-SECRET-KEY-5678",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def otb(args: list[str], env: dict[str, str], *, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env, input=input,
                          capture_output=True, timeout=timeout, cwd=ROOT)


class WorkerProcess:
    """A real `otb worker` in its own session, so a test can kill it and its work horse together."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "worker", *args], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def session_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-s", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> int:
        """SIGKILL the worker and its horse (the horse has its own process group, not its own session)."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        return len(pids)

    def stop(self, timeout: float = 30) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        for pid in self.session_pids():
            os.kill(pid, 9)
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


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
