"""Real processes for tests and benchmarks: a private redis-server, `otb worker` processes, the CLI.

Shared by tests/ and bench/ so both break and measure the same parts a user runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_clock_env() -> dict[str, str]:
    """This environment without libfaketime, for the processes tests start (README, Testing).

    Under Debian's libfaketime 0.9.10 redis-server (jemalloc) cannot start, and a Python thread's
    timed wait (`Event.wait(5)`: glibc's sem_clockwait, which it does not intercept) never returns.
    So when the suite runs under `faketime`, only the test process is shifted; the processes it
    starts run on the real date, and tests/test_dates.py keeps what they use callable on any date.
    """
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")}


class RedisServer:
    """A private redis-server on a free port (so tests never touch a developer's data)."""

    def __init__(self, workdir: Path, *, appendonly: bool = False, extra: tuple[str, ...] = (), tls: bool = False,
                 url_of: Callable[[int], str] | None = None) -> None:
        """`extra` adds server arguments (auth, ACL users, certificates); with `tls` the port is the TLS
        port; `url_of(port)` gives the client URL (default plain redis://)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (see README)")
        self.port = free_port()
        self.url = url_of(self.port) if url_of else f"redis://127.0.0.1:{self.port}/0"
        ports = ["--port", "0", "--tls-port", str(self.port)] if tls else ["--port", str(self.port)]
        self.log = workdir / f"redis-{self.port}.log"
        self.args = [binary, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes" if appendonly else "no",
                     "--appendfsync", "always", "--dir", str(workdir), *extra]
        self._start()

    def _start(self, attempts: int = 200) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=real_clock_env())
        conn = redis.Redis.from_url(self.url)
        for _ in range(attempts):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log.read_text()[-2000:]}")
            try:
                conn.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        self.stop()  # a server that never answered must not outlive the run that started it
        raise RuntimeError(f"redis-server did not answer on port {self.port}: {self.log.read_text()[-2000:]}")

    def restart(self, pause: float) -> None:
        """Shut Redis down (as an operator would), stay down for `pause` seconds, start it on the same data."""
        try:
            redis.Redis.from_url(self.url).shutdown()
        except redis.ConnectionError:
            pass
        self.proc.wait(timeout=10)
        time.sleep(pause)
        self._start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def worker_env(redis_url: str, emulator_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker or CLI run against `redis_url` and the emulator (placeholder keys)."""
    env = {k: v for k, v in real_clock_env().items() if not k.startswith(("OTB_", "ANTHROPIC", "GEMINI", "REDIS_URL"))}
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
    """A real `otb worker` in its own session, so it can be killed together with its work horse."""

    def __init__(self, env: dict[str, str], *args: str, log: Path | None = None) -> None:
        out = open(log, "ab") if log else subprocess.PIPE  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "worker", *args], env=env, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

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


def chunks_held_by(conn: redis.Redis, pids: list[int], prefix: str = "otb") -> list[str]:
    """Chunk jobs run by one of `pids`: by their own lease (`host:pid`) or claimed under one."""
    held = []
    for key in conn.scan_iter(f"{prefix}:lease:*"):
        owner = (conn.get(key) or b"").decode()
        if owner and int(owner.rsplit(":", 1)[1]) in pids:
            held.append(key.decode().removeprefix(f"{prefix}:lease:"))
    leases = {f"{prefix}:lease:{job}" for job in held}
    for job, claim in conn.hgetall(f"{prefix}:claimed").items():
        if claim.decode().rpartition(" ")[0] in leases:
            held.append(job.decode())
    return held


def wait_taken_over(conn: redis.Redis, job_id: str, dead: list[int], since: float, limit: float = 120) -> float:
    """Seconds from `since` (a kill) until another process runs the chunk (its own lease, or a claim
    under a live runner's lease), or the chunk finished."""
    while time.monotonic() - since < limit:
        try:
            owner = (conn.get(f"otb:lease:{job_id}") or b"").decode()
            claim = (conn.hget("otb:claimed", job_id) or b"").decode()
            if claim:
                owner = (conn.get(claim.rpartition(" ")[0]) or b"").decode()
            if (owner and int(owner.rsplit(":", 1)[1]) not in dead) or conn.hget(f"rq:job:{job_id}", "status") == b"finished":
                break
        except redis.ConnectionError:  # Redis restarting under a chaos run
            pass
        time.sleep(0.1)
    return time.monotonic() - since


def settle(client: Any, bid: str, timeout: float = 60) -> dict[str, Any]:
    """The batch's status once it is final, or as it is after `timeout`. Polled: a blocking read of the
    events stream longer than the client's socket timeout fails instead of waiting."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.status(bid)
        if status["status"] in ("completed", "cancelled", "expired") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


class ServerProcess:
    """A real `otb serve` on a free loopback port, its output in a log file (tests scan it for keys).

    Started as `python -m producer.cli serve`, as a user runs `otb serve`.
    """

    def __init__(self, env: dict[str, str], *args: str, log: Path, timeout: float = 30) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "serve", "--port", str(self.port), *args],
                                         env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"otb serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/openapi.json")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"otb serve did not answer on port {self.port}: {self.log.read_text()[-2000:]}")

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
