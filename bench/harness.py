"""Real processes for tests and benchmarks: a private redis-server, `otb worker` processes, the CLI.

Shared by tests/ and bench/ so both break and measure the same parts a user runs.
"""

from __future__ import annotations

import os
import shutil
import asyncio
import socket
import subprocess
import sys
import threading
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

    def __init__(self, env: dict[str, str], *args: str, log: Path | None = None, prefix: tuple[str, ...] = ()) -> None:
        """`prefix` runs it through a command that execs it (`ip netns exec NS`: another machine's network)."""
        out = open(log, "ab") if log else subprocess.PIPE  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "producer.cli", "worker", *args], env=env, cwd=ROOT,
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
    """Chunk jobs run by one of `pids`: by their own lease (`{token}@host:pid`) or claimed under one."""
    held = []
    for key in conn.scan_iter(f"{prefix}:lease:*"):
        owner = (conn.get(key) or b"").decode()
        if owner and int(owner.rsplit(":", 1)[1]) in pids:
            held.append(key.decode().removeprefix(f"{prefix}:lease:"))
    leases = {f"{prefix}:lease:{job}" for job in held}
    for job, claim in conn.hgetall(f"{prefix}:claimed").items():
        if claim.decode().split(" ", 1)[0] in leases:
            held.append(job.decode())
    return held


def wait_taken_over(conn: redis.Redis, job_id: str, dead: list[int], since: float, limit: float = 120) -> float:
    """Seconds from `since` (a kill) until another process runs the chunk (its own lease, or a claim
    under a live runner's lease), or the chunk finished."""
    while time.monotonic() - since < limit:
        try:
            owner = (conn.get(f"otb:lease:{job_id}") or b"").decode()
            claim = (conn.hget("otb:claimed", job_id) or b"").decode()
            if claim:  # "{lease key} {unix s} {claimer's token}": run by the claimer while it holds that lease
                lease_key, _, rest = claim.partition(" ")
                claimer = rest.partition(" ")[2]
                owner = (conn.get(lease_key) or b"").decode()
                owner = "" if claimer and owner != claimer else owner
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


class DelayProxy:
    """A TCP proxy on a free port that delays every byte by `delay` seconds each way, in a thread.

    When one side goes away, the other is cut at once and what was still delayed is dropped: the
    bytes a machine had on the wire when it died. (tc netem is not available on these machines.)
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.port, self.target, self.delay = free_port(), target_port, delay
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        async def serve() -> None:
            await asyncio.start_server(self._connection, "127.0.0.1", self.port)
            started.set()
        self.loop.run_until_complete(serve())
        self.loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer)), asyncio.ensure_future(self._pump(up_reader, writer))]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for w in (writer, up_writer):
            w.transport.abort()  # drop what was still delayed

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                writer.write(data)
        delivering = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((self.loop.time() + self.delay, data))
        except OSError:
            pass
        finally:
            delivering.cancel()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class SentinelProcess:
    """One `redis-server --sentinel` on a free port, watching `service` (its config file is its own:
    a Sentinel rewrites it as it learns the topology)."""

    def __init__(self, workdir: Path, service: str, master_port: int, *, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, quorum: int = 2) -> None:
        self.port = free_port()
        self.log = workdir / f"sentinel-{self.port}.log"
        conf = workdir / f"sentinel-{self.port}.conf"
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {workdir}",
            f"sentinel monitor {service} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1", ""]))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                                         stdout=log, stderr=subprocess.STDOUT, env=real_clock_env())

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def stop(self) -> None:
        RedisServer.stop(self)  # type: ignore[arg-type]  (same terminate-then-kill)


class SentinelTopology:
    """A master, a replica and three Sentinels on free loopback ports: what `redis+sentinel://` names.

    `kill_master()` SIGKILLs the master (a lost machine: no goodbye to replicas or clients) and
    `wait_promoted()` returns once the Sentinels name the replica as the new master and it says so.
    """

    SERVICE = "otbmaster"

    def __init__(self, workdir: Path, *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                 extra: tuple[str, ...] = (), replica_delay_ms: float = 0) -> None:
        """`replica_delay_ms` puts the replica that far from the master (a DelayProxy on its link; the
        clients stay near): the Sentinels would "fix" a replica whose master address is not the one
        they monitor after `failover_timeout_ms`, so pass one longer than the run."""
        fast = ("--repl-diskless-sync-delay", "0")  # the replica syncs at once, not after 5 s
        self.master = RedisServer(workdir, extra=(*fast, *extra))
        self.link = DelayProxy(self.master.port, replica_delay_ms / 1000) if replica_delay_ms else None
        upstream = self.link.port if self.link else self.master.port
        self.replica = RedisServer(workdir, extra=(*fast, *extra, "--replicaof", "127.0.0.1", str(upstream)))
        self.sentinels = [SentinelProcess(workdir, self.SERVICE, self.master.port, down_after_ms=down_after_ms,
                                          failover_timeout_ms=failover_timeout_ms) for _ in range(3)]
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{self.SERVICE}/0"
        self._wait(self._ready, 30, "the Sentinels never saw the replica and each other")

    def _ready(self) -> bool:
        """Every Sentinel knows the master, the replica (online: the master streams it every write) and
        the two other Sentinels."""
        if self.master.client().info("replication").get("slave0", {}).get("state") != "online":
            return False
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(self.SERVICE)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                return False
        return True

    def master_port(self) -> int:
        """The master's port as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                return int(sentinel.client().sentinel_get_master_addr_by_name(self.SERVICE)[1])
            except (redis.ConnectionError, TypeError):
                continue
        raise RuntimeError("no Sentinel answered")

    def kill_master(self) -> None:
        self.master.proc.kill()
        self.master.proc.wait(timeout=10)

    def wait_promoted(self, timeout: float = 30) -> float:
        """Seconds until every Sentinel names the replica and the replica answers as a master."""
        since = time.monotonic()

        def promoted() -> bool:
            named = all(int(s.client().sentinel_get_master_addr_by_name(self.SERVICE)[1]) == self.replica.port
                        for s in self.sentinels)
            return named and self.replica.client().info("replication")["role"] == "master"
        self._wait(promoted, timeout, "the replica was never promoted")
        return time.monotonic() - since

    def _wait(self, ready: Callable[[], bool], timeout: float, failure: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (redis.ConnectionError, redis.ResponseError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{failure} within {timeout} s")

    def stop(self) -> None:
        for process in (*self.sentinels, self.replica, self.master):
            if process.proc.poll() is None:
                process.stop()
        if self.link:
            self.link.stop()


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


def load_average() -> str:
    """The machine's load (1, 5, 15 min) for a bench's header: figures mean little without it."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def end_run(report: dict[str, Any], work: Path, started: float, *, ok: bool, keep: bool,
            say: Callable[[str], None]) -> None:
    """A bench run's close, whatever happened: the load and time at the end, and the work directory
    removed after a good run (kept, and named, after a failure or with --keep)."""
    report["loadavg_end"] = load_average()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    if ok and not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"work directory kept: {work}")
