"""Throughput benchmark: opentoken-batch against plain RQ and a bare aiohttp client, on the emulator.

    .venv/bin/python -m bench.throughput                  # default run (well under 10 minutes on 2 cores)
    .venv/bin/python -m bench.throughput --quick          # smoke run, about a minute
    .venv/bin/python -m bench.throughput --only 1,4 --json

Scenarios (bench/README.md says what limits each figure):
  1 latency-bound   emulator latency 200 ms: one `otb worker` vs plain RQ (one job per request,
                    4 `rq worker -S json`) vs raw aiohttp at 200 in flight (the ceiling); req/s, ratios
  2 overhead-bound  latency 0: req/s and CPU ms per request of the worker processes, vs raw aiohttp
                    (1 and 2 also time the worker's own HTTP client, worker/http.py, alone: a diagnostic row)
  3 rate-limited    the emulator answers 429 above a per-model RPM; three workers share one limit
                    (OTB_LIMITS): throughput as a fraction of the limit, and how many calls got 429
  4 submit          `otb submit` of a 100,000-line file: lines/s and peak RSS
  5 memory          worker peak RSS (parent + work horse) with 500 calls in flight

Everything is real and on loopback: a private redis-server per scenario, `otb emulator` as a
subprocess, `otb worker`, stock `rq worker`, the `otb submit` CLI. Progress goes to stderr; the
table (or, with --json, one JSON object) to stdout. Every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import httpx
import redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from bench.harness import ROOT, RedisServer, WorkerProcess, free_port, end_run, load_average, otb, worker_env

MODELS = ("anthropic/claude-haiku-5-5", "google/gemini-3-flash")  # alternated: both providers, both adapters
CLK_TCK = os.sysconf("SC_CLK_TCK")
RQ_BIN = Path(sys.executable).with_name("rq")
PLAIN_QUEUE = "plain"
TARGETS = {"ours_vs_aiohttp": 0.8, "ours_vs_plain_rq": 20.0, "submit_lines_per_s": 20_000, "submit_peak_rss_mb": 200,
           "worker_peak_rss_mb": 200, "rate_fraction_of_limit": 0.9, "rate_share_429": 0.01}
LATENCY_BOUND = {"OTB_CONCURRENCY": "200", "OTB_CHUNK_SIZE": "1000"}


@dataclass(frozen=True)
class Sizes:
    requests: int = 5000  # scenario 1, ours and aiohttp
    rq_requests: int = 300  # scenario 1, plain RQ (about 10 req/s)
    overhead_requests: int = 3000  # scenario 2
    submit_lines: int = 100_000  # scenario 4
    memory_requests: int = 1500  # scenario 5 (also the chunk size: one chunk, 500 in flight)
    memory_concurrency: int = 500
    memory_latency_ms: float = 2000
    latency_ms: float = 200
    concurrency: int = 200
    rate_requests: int = 3000  # scenario 3: about 150 s, well past the provider's first minute
    rate_rpm: int = 600  # per model


QUICK = Sizes(requests=600, rq_requests=40, overhead_requests=600, submit_lines=10_000, memory_requests=1000,
              rate_requests=600)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------------------
class Emulator:
    """`otb emulator` in its own process (one event loop), as a user would run it."""

    def __init__(self, latency_ms: float, log: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.latency_ms = latency_ms
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTB_")}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "producer.cli", "emulator", "--port", str(self.port), "--latency-ms", str(latency_ms),
                 *extra_args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        for _ in range(400):
            try:
                self.stats()
                return
            except httpx.TransportError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"otb emulator exited with {self.proc.returncode}; see {log}") from None
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"otb emulator did not come up on {self.url}")

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_emulator/stats", timeout=10).json()

    def reset(self) -> None:
        httpx.post(self.url + "/_emulator/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def services(work: Path, name: str, latency_ms: float | None) -> Iterator[tuple[RedisServer, Emulator | None]]:
    """A private redis-server (and an emulator with this latency), stopped on the way out whatever happens."""
    where = work / name
    where.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        server = RedisServer(where)
        stack.callback(server.stop)
        emu = None
        if latency_ms is not None:
            emu = Emulator(latency_ms, where / "emulator.log")
            stack.callback(emu.stop)
        yield server, emu


def stop_session(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM a process started with start_new_session=True, then SIGKILL whatever is left of its session."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    leftovers = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and of its children it has reaped (/proc/<pid>/stat utime..cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK  # fields 14-17 of stat(5), counted from `state`


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0  # gone, or a zombie


def pss_bytes(pid: int) -> int:
    """Proportional set size: pages shared by the worker and its forked horse counted once between them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def child_pids(pid: int) -> list[int]:
    """Direct children of any thread of `pid` (the RQ work horse of an `otb worker`)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    except FileNotFoundError:
        pass
    return kids


def wait_no_children(pid: int, timeout: float = 30) -> None:
    """Until the last work horse has exited and been reaped (its CPU then shows in the parent's cutime)."""
    deadline = time.monotonic() + timeout
    while child_pids(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_workers(conn: redis.Redis, queue: Queue, n: int, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while Worker.count(connection=conn, queue=queue) < n:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a worker exited with {dead[0].returncode} before registering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {Worker.count(connection=conn, queue=queue)} of {n} workers registered")
        time.sleep(0.05)


def connections_to(port: int) -> int:
    """Established loopback TCP connections whose remote end is `port` (client sockets to the emulator)."""
    suffix = f":{port:04X}"
    count = 0
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split(maxsplit=4)
            count += fields[2].endswith(suffix) and fields[3] == "01"
    return count


class RssSampler(threading.Thread):
    """VmRSS of a worker and its work horse every `interval` seconds, and its connections to `port`; keeps the peaks."""

    def __init__(self, pid: int, port: int, interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.port, self.interval = pid, port, interval
        self.idle = self.peak_total = self.peak_parent = self.peak_horse = self.peak_connections = self.peak_pss = 0
        self.samples = 0
        self._halt = threading.Event()
        self.idle = self.sample()

    def sample(self) -> int:
        kids = child_pids(self.pid)
        parent = rss_bytes(self.pid)
        horse = sum(rss_bytes(k) for k in kids)
        self.peak_pss = max(self.peak_pss, pss_bytes(self.pid) + sum(pss_bytes(k) for k in kids))
        self.peak_parent = max(self.peak_parent, parent)
        self.peak_horse = max(self.peak_horse, horse)
        self.peak_total = max(self.peak_total, parent + horse)
        self.peak_connections = max(self.peak_connections, connections_to(self.port))
        self.samples += 1
        return parent + horse

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# -- requests --------------------------------------------------------------------------------------
def chat_lines(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    """Short-form chat lines, alternating an Anthropic and a Gemini model."""
    return [{"custom_id": f"{prefix}{i}", "model": MODELS[i % len(MODELS)],
             "messages": [{"role": "user", "content": f"Benchmark question {i}: in one sentence, what is {i} + {i}?"}],
             "max_tokens": 64} for i in range(n)]


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
    return path


WireCall = tuple[str, str, dict[str, Any], dict[str, str]]  # provider, path, JSON body, non-secret headers


def wire_calls(lines: list[dict[str, Any]]) -> list[WireCall]:
    """The exact upstream calls the worker sends for these lines (same registry and adapters), for the baselines."""
    from worker.providers import ADAPTERS
    from worker.registry import load_registry
    from worker.schemas import ChatRequest
    from worker.settings import DEFAULT_REGISTRY

    registry = load_registry(DEFAULT_REGISTRY)
    out = []
    for line in lines:
        body = {k: v for k, v in line.items() if k != "custom_id"}
        spec = registry.resolve_for(body["model"], "chat")
        prepared = ADAPTERS[spec.provider].prepare_chat(ChatRequest.model_validate(body), spec,
                                                        api_version=registry.api_version(spec.provider),
                                                        drop_unsupported=False)
        call = prepared.calls[0]
        out.append((spec.provider, call.path, call.json, dict(call.headers)))
    return out


def auth_headers(env: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"anthropic": {"x-api-key": env["ANTHROPIC_API_KEY"]}, "google": {"x-goog-api-key": env["GEMINI_API_KEY"]}}


def check_emulator(emu: Emulator, n: int, who: str) -> None:
    stats = emu.stats()
    if stats["calls"] != n or stats["by_status"] != {"200": n}:
        raise RuntimeError(f"{who}: expected {n} calls answered 200, the emulator saw {stats}")


# -- the three systems -----------------------------------------------------------------------------
def run_otb(server: RedisServer, emu: Emulator, work: Path, lines: list[dict[str, Any]], extra_env: dict[str, str],
            *, tag: str, sample_rss: bool = False, timeout: float = 300) -> dict[str, Any]:
    """One `otb worker`; `otb submit FILE --json`; time until the batch hash says completed."""
    n = len(lines)
    path = write_jsonl(work / f"{tag}.jsonl", lines)
    env = worker_env(server.url, emu.url, **extra_env)
    conn = server.client()
    emu.reset()
    sampler: RssSampler | None = None
    with contextlib.ExitStack() as cleanup:
        worker = WorkerProcess(env, log=work / f"{tag}-worker.log")
        cleanup.callback(worker.stop, timeout=10)
        wait_workers(conn, Queue("otb", connection=conn), 1, [worker.proc])
        if sample_rss:
            sampler = RssSampler(worker.proc.pid, emu.port)
            sampler.start()
            cleanup.callback(sampler.stop)
        cpu0, redis0, emu0 = cpu_seconds(worker.proc.pid), cpu_seconds(server.proc.pid), cpu_seconds(emu.proc.pid)
        started = time.monotonic()
        sub = otb(["submit", str(path), "--json"], env)
        if sub.returncode != 0:
            raise RuntimeError(f"otb submit failed: {sub.stderr.decode()[-2000:]}")
        submitted = time.monotonic()
        bid = json.loads(sub.stdout)["id"]
        key = f"otb:batch:{bid}"
        while conn.hget(key, "status") != b"completed":
            if worker.proc.poll() is not None:
                raise RuntimeError(f"otb worker exited with {worker.proc.returncode}; see {work / (tag + '-worker.log')}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"batch {bid} not completed after {timeout:.0f} s: {conn.hgetall(key)}")
            time.sleep(0.02)
        finished = time.monotonic()
        wait_no_children(worker.proc.pid)
        cpu = cpu_seconds(worker.proc.pid) - cpu0
        redis_cpu, emu_cpu = cpu_seconds(server.proc.pid) - redis0, cpu_seconds(emu.proc.pid) - emu0
    record = {k.decode(): v.decode() for k, v in conn.hgetall(key).items()}
    if int(record["succeeded"]) != n or conn.hlen(f"{key}:results") != n:
        raise RuntimeError(f"ours: expected {n} succeeded results, got {record}")
    check_emulator(emu, n, "ours")
    wall = finished - started
    processing = float(record["completed_at"]) - float(record["created_at"])
    out = {"requests": n, "wall_s": round(wall, 3), "req_per_s": round(n / wall, 1),
           "submit_cli_s": round(submitted - started, 3), "processing_s": round(processing, 3),
           "processing_req_per_s": round(n / processing, 1), "cpu_ms_per_req": round(cpu * 1000 / n, 3),
           "redis_cpu_ms_per_req": round(redis_cpu * 1000 / n, 3), "emulator_cpu_ms_per_req": round(emu_cpu * 1000 / n, 3),
           "env": extra_env}
    if sampler is not None:
        mb = 1024 * 1024
        out.update(idle_rss_mb=round(sampler.idle / mb, 1), peak_rss_mb=round(sampler.peak_total / mb, 1),
                   peak_parent_rss_mb=round(sampler.peak_parent / mb, 1), peak_horse_rss_mb=round(sampler.peak_horse / mb, 1),
                   peak_pss_mb=round(sampler.peak_pss / mb, 1),
                   rss_samples=sampler.samples, peak_connections_to_emulator=sampler.peak_connections)
    return out


BARE_CLIENTS = {
    "aiohttp": "raw aiohttp: ClientSession, TCPConnector(limit=200)",
    "worker_http": "the worker's own client alone: worker/http.py (aiohttp, one pooled session)",
}


def run_bare(emu: Emulator, lines: list[dict[str, Any]], concurrency: int, client: str = "aiohttp",
             repeat: int = 1, loop: str = "asyncio") -> dict[str, Any]:
    """One asyncio process (this one), `concurrency` calls in flight, no queue, no Redis; the median of `repeat` runs.

    `aiohttp` is the ceiling; `worker_http` sends through worker/http.py exactly as a chunk does, which
    separates the cost of the HTTP client from the cost of everything else in the worker. `loop`:
    the standard event loop (as a plain client runs) or `uvloop` (as a work horse runs by default).
    """
    calls = wire_calls(lines)
    auth = auth_headers(worker_env("redis://unused", emu.url))
    base = emu.url

    async def with_aiohttp() -> Counter[int]:
        import aiohttp

        statuses: Counter[int] = Counter()
        gate = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def one(call: WireCall) -> None:
                provider, path, body, headers = call
                async with gate:
                    async with session.post(base + path, json=body, headers={**headers, **auth[provider]}) as resp:
                        json.loads(await resp.read())
                        statuses[resp.status] += 1

            await asyncio.gather(*(one(c) for c in calls))
        return statuses

    async def with_worker_http() -> Counter[int]:
        from worker import http
        from worker.providers.base import UpstreamCall

        statuses: Counter[int] = Counter()
        gate = asyncio.Semaphore(concurrency)
        async with http.make_client(concurrency=concurrency, timeout=120) as session:
            async def one(call: WireCall) -> None:
                provider, path, body, headers = call
                async with gate:
                    answer = await http.send(session, base, UpstreamCall("POST", path, body, headers), auth[provider])
                    answer.json()
                    statuses[answer.status] += 1

            await asyncio.gather(*(one(c) for c in calls))
        return statuses

    runs = []
    n = len(lines)
    for _ in range(repeat):
        emu.reset()
        usage0, emu0 = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(emu.proc.pid)
        started = time.monotonic()
        main = with_aiohttp() if client == "aiohttp" else with_worker_http()
        if loop == "uvloop":
            import uvloop

            statuses = uvloop.run(main)
        else:
            statuses = asyncio.run(main)
        wall = time.monotonic() - started
        usage1, emu_cpu = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(emu.proc.pid) - emu0
        if statuses != Counter({200: n}):
            raise RuntimeError(f"{client}: expected {n} answers 200, got {dict(statuses)}")
        check_emulator(emu, n, client)
        cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        runs.append({"requests": n, "wall_s": round(wall, 3), "req_per_s": round(n / wall, 1),
                     "cpu_ms_per_req": round(cpu * 1000 / n, 3), "emulator_cpu_ms_per_req": round(emu_cpu * 1000 / n, 3)})
    runs.sort(key=lambda r: r["req_per_s"])
    median = dict(runs[len(runs) // 2])
    if repeat > 1:
        median["runs_req_per_s"] = [r["req_per_s"] for r in runs]
    return median


def run_plain_rq(server: RedisServer, emu: Emulator, work: Path, lines: list[dict[str, Any]], workers: int = 4,
                 timeout: float | None = None) -> dict[str, Any]:
    """One RQ job per request (bench.baseline_rq.call), `workers` stock `rq worker -S json` processes."""
    n = len(lines)
    calls = wire_calls(lines)
    env = worker_env(server.url, emu.url)
    conn = server.client()
    queue = Queue(PLAIN_QUEUE, connection=conn, serializer=JSONSerializer)
    results_key = "plain:results"
    emu.reset()
    procs: list[subprocess.Popen] = []
    try:
        for i in range(workers):
            with open(work / f"rq-worker{i}.log", "ab") as log:
                procs.append(subprocess.Popen([str(RQ_BIN), "worker", "-S", "json", "-u", server.url, PLAIN_QUEUE],
                                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        wait_workers(conn, queue, workers, procs)
        jobs = [Queue.prepare_data("bench.baseline_rq.call", args=(provider, path, body, headers, results_key, line["custom_id"]),
                                   result_ttl=3600)
                for line, (provider, path, body, headers) in zip(lines, calls)]
        limit = timeout or 60 + n / 2
        started = time.monotonic()
        with conn.pipeline() as pipe:
            queue.enqueue_many(jobs, pipeline=pipe)
            pipe.execute()
        while True:
            done = queue.finished_job_registry.get_job_count(cleanup=False)
            failed = queue.failed_job_registry.get_job_count(cleanup=False)
            if failed:
                raise RuntimeError(f"plain RQ: {failed} jobs failed; see {work}/rq-worker*.log")
            if done >= n:
                break
            if time.monotonic() - started > limit:
                raise RuntimeError(f"plain RQ: only {done}/{n} jobs finished after {limit:.0f} s")
            time.sleep(0.05)
        wall = time.monotonic() - started
    finally:
        for proc in procs:
            proc.terminate()  # warm shutdown of idle workers: all at once, then wait for each
        for proc in procs:
            stop_session(proc)
    if conn.hlen(results_key) != n:
        raise RuntimeError(f"plain RQ: {conn.hlen(results_key)} results for {n} jobs")
    check_emulator(emu, n, "plain RQ")
    return {"requests": n, "workers": workers, "wall_s": round(wall, 3), "req_per_s": round(n / wall, 2)}


# -- scenarios -------------------------------------------------------------------------------------
def scenario_latency_bound(work: Path, sizes: Sizes) -> dict[str, Any]:
    lines = chat_lines(sizes.requests)
    with services(work, "s1", sizes.latency_ms) as (server, emu):
        assert emu is not None
        progress(f"1: raw aiohttp, {len(lines)} requests, {sizes.concurrency} in flight, latency {sizes.latency_ms:g} ms")
        ceiling = run_bare(emu, lines, sizes.concurrency, "aiohttp")
        progress(f"1:   {ceiling['req_per_s']} req/s")
        progress(f"1: worker/http.py client alone, {len(lines)} requests, {sizes.concurrency} in flight")
        client = run_bare(emu, lines, sizes.concurrency, "worker_http")
        progress(f"1:   {client['req_per_s']} req/s")
        progress(f"1: opentoken-batch, 1 otb worker {LATENCY_BOUND}, {len(lines)} requests")
        ours = run_otb(server, emu, work / "s1", lines, LATENCY_BOUND, tag="s1-ours")
        progress(f"1:   {ours['req_per_s']} req/s (processing only {ours['processing_req_per_s']})")
        rq_lines = chat_lines(sizes.rq_requests, prefix="p")
        progress(f"1: plain RQ, 4 rq workers, one job per request, {len(rq_lines)} requests")
        plain = run_plain_rq(server, emu, work / "s1", rq_lines)
        progress(f"1:   {plain['req_per_s']} req/s")
    return {"latency_ms": sizes.latency_ms, "ideal_req_per_s": sizes.concurrency * 1000 / sizes.latency_ms,
            "ours": ours, "plain_rq": plain, "aiohttp": ceiling, "worker_http_alone": client,
            "ours_vs_aiohttp": round(ours["req_per_s"] / ceiling["req_per_s"], 3),
            "ours_vs_aiohttp_processing_only": round(ours["processing_req_per_s"] / ceiling["req_per_s"], 3),
            "ours_vs_plain_rq": round(ours["req_per_s"] / plain["req_per_s"], 1),
            "worker_http_alone_vs_aiohttp": round(client["req_per_s"] / ceiling["req_per_s"], 3)}


def scenario_overhead_bound(work: Path, sizes: Sizes) -> dict[str, Any]:
    lines = chat_lines(sizes.overhead_requests)
    with services(work, "s2", 0) as (server, emu):
        assert emu is not None
        progress(f"2: raw aiohttp, {len(lines)} requests, latency 0, median of 3")
        ceiling = run_bare(emu, lines, sizes.concurrency, "aiohttp", repeat=3)
        progress(f"2:   {ceiling['req_per_s']} req/s, {ceiling['cpu_ms_per_req']} CPU ms/req")
        progress(f"2: worker/http.py client alone, {len(lines)} requests, latency 0, median of 3")
        client = run_bare(emu, lines, sizes.concurrency, "worker_http", repeat=3)
        progress(f"2:   {client['req_per_s']} req/s, {client['cpu_ms_per_req']} CPU ms/req")
        progress(f"2: opentoken-batch, 1 otb worker {LATENCY_BOUND}, {len(lines)} requests, latency 0")
        ours = run_otb(server, emu, work / "s2", lines, LATENCY_BOUND, tag="s2-ours")
        progress(f"2:   {ours['req_per_s']} req/s, {ours['cpu_ms_per_req']} CPU ms/req")
    return {"latency_ms": 0, "ours": ours, "aiohttp": ceiling, "worker_http_alone": client,
            "ours_vs_aiohttp": round(ours["req_per_s"] / ceiling["req_per_s"], 3),
            "ours_vs_aiohttp_processing_only": round(ours["processing_req_per_s"] / ceiling["req_per_s"], 3),
            "cpu_ms_per_req_over_aiohttp": round(ours["cpu_ms_per_req"] - ceiling["cpu_ms_per_req"], 3),
            "cpu_ms_per_req_over_worker_http": round(ours["cpu_ms_per_req"] - client["cpu_ms_per_req"], 3)}


def scenario_rate_limited(work: Path, sizes: Sizes) -> dict[str, Any]:
    """Scenario 3: the emulator answers 429 above a per-model RPM; three workers share one limit.

    Each model is limited to `rate_rpm` requests a minute over a sliding window, and OTB_LIMITS tells
    the workers the same figure. Reported: throughput as a fraction of the limit, and 429s.
    """
    n, rpm = sizes.rate_requests, sizes.rate_rpm
    where = work / "s3"
    where.mkdir(parents=True, exist_ok=True)
    limits = where / "limits.json"
    limits.write_text(json.dumps({m: {"rpm": rpm} for m in MODELS}))
    lines = chat_lines(n, prefix="q")
    limit_per_s = rpm * len(MODELS) / 60
    progress(f"3: {n} requests, {len(MODELS)} models at {rpm} RPM each ({limit_per_s:g} req/s in all), 3 otb workers")
    with contextlib.ExitStack() as stack:
        server = RedisServer(where)
        stack.callback(server.stop)
        emu = Emulator(50, where / "emulator.log", ("--rpm-limit", str(rpm)))
        stack.callback(emu.stop)
        env = worker_env(server.url, emu.url, OTB_LIMITS=str(limits), OTB_CONCURRENCY="50", OTB_CHUNK_SIZE="100")
        conn = server.client()
        workers = [WorkerProcess(env, log=where / f"worker{i}.log") for i in range(3)]
        for w in workers:
            stack.callback(w.stop, timeout=10)
        wait_workers(conn, Queue("otb", connection=conn), 3, [w.proc for w in workers])
        sub = otb(["submit", str(write_jsonl(where / "batch.jsonl", lines)), "--json"], env)
        if sub.returncode != 0:
            raise RuntimeError(f"otb submit failed: {sub.stderr.decode()[-2000:]}")
        key = f"otb:batch:{json.loads(sub.stdout)['id']}"
        deadline = time.monotonic() + n / limit_per_s * 3 + 60
        while conn.hget(key, "status") != b"completed":
            if time.monotonic() > deadline:
                raise RuntimeError(f"rate-limited batch not completed: {conn.hgetall(key)}")
            time.sleep(0.05)
        record = {k.decode(): v.decode() for k, v in conn.hgetall(key).items()}
        stats = emu.stats()
    processing = float(record["completed_at"]) - float(record["created_at"])
    achieved = n / processing
    limited = stats.get("rate_limited", 0)
    progress(f"3:   {achieved:.1f} req/s = {achieved / limit_per_s:.1%} of the limit, {limited} calls answered 429")
    return {"requests": n, "rpm_per_model": rpm, "models": len(MODELS), "workers": 3, "limit_req_per_s": limit_per_s,
            "succeeded": int(record["succeeded"]), "processing_s": round(processing, 2),
            "achieved_req_per_s": round(achieved, 1), "fraction_of_limit": round(achieved / limit_per_s, 3),
            "calls": stats["calls"], "calls_429": limited, "share_429": round(limited / max(stats["calls"], 1), 4)}


def scenario_submit(work: Path, sizes: Sizes) -> dict[str, Any]:
    n = sizes.submit_lines
    with services(work, "s4", None) as (server, _):
        path = write_jsonl(work / "s4" / "submit.jsonl", chat_lines(n))
        env = worker_env(server.url, "http://127.0.0.1:9")  # submit sends nothing upstream
        progress(f"4: otb submit of {n} lines ({path.stat().st_size / 1e6:.1f} MB) under /usr/bin/time -v")
        started = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "producer.cli", "submit", str(path), "--json"],
                              env=env, cwd=ROOT, capture_output=True, timeout=600)
        wall = time.monotonic() - started
        stderr = proc.stderr.decode()
        if proc.returncode != 0:
            raise RuntimeError(f"otb submit failed: {stderr[-2000:]}")
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
        user = float(re.search(r"User time \(seconds\): ([\d.]+)", stderr).group(1))
        system = float(re.search(r"System time \(seconds\): ([\d.]+)", stderr).group(1))
        bid = json.loads(proc.stdout)["id"]
        conn = server.client()
        total = int(conn.hget(f"otb:batch:{bid}", "total"))
        chunks = Queue("otb", connection=conn).count
        if total != n or chunks != math.ceil(n / 100):
            raise RuntimeError(f"submit: batch total {total}, {chunks} chunk jobs for {n} lines")
    progress(f"4:   {n / wall:.0f} lines/s, peak RSS {rss_kb / 1024:.0f} MB")
    return {"lines": n, "file_mb": round(path.stat().st_size / 1e6, 1), "wall_s": round(wall, 3),
            "lines_per_s": round(n / wall), "peak_rss_mb": round(rss_kb / 1024, 1),
            "cpu_s": round(user + system, 2), "chunk_jobs": chunks}


def scenario_memory(work: Path, sizes: Sizes) -> dict[str, Any]:
    n, conc = sizes.memory_requests, sizes.memory_concurrency
    env = {"OTB_CONCURRENCY": str(conc), "OTB_CHUNK_SIZE": str(n)}
    with services(work, "s5", sizes.memory_latency_ms) as (server, emu):
        assert emu is not None
        progress(f"5: opentoken-batch {env}, {n} requests, latency {sizes.memory_latency_ms:g} ms, RSS every 100 ms")
        ours = run_otb(server, emu, work / "s5", chat_lines(n), env, tag="s5-ours", sample_rss=True)
    in_flight = ours["processing_req_per_s"] * sizes.memory_latency_ms / 1000
    progress(f"5:   peak RSS {ours['peak_rss_mb']} MB (parent {ours['peak_parent_rss_mb']}, horse {ours['peak_horse_rss_mb']})")
    return {"latency_ms": sizes.memory_latency_ms, "concurrency": conc, "mean_in_flight": round(in_flight), **ours}


SCENARIOS = {1: scenario_latency_bound, 2: scenario_overhead_bound, 3: scenario_rate_limited, 4: scenario_submit,
             5: scenario_memory}
NAMES = {1: "latency_bound", 2: "overhead_bound", 3: "rate_limited", 4: "submit", 5: "memory"}


# -- report ----------------------------------------------------------------------------------------
def verdict(value: float, goal: float, *, at_least: bool) -> str:
    met = value >= goal if at_least else value < goal
    if met:
        return "met"
    gap = (goal - value) / goal if at_least else (value - goal) / goal
    return f"MISSED by {gap:.0%}"


def render(report: dict[str, Any]) -> str:
    out = [f"opentoken-batch throughput  {report['date']}  code {report['code']}",
           f"{report['cpus']} CPUs, load average {report['loadavg_start']} -> {report['loadavg_end']}, "
           f"{report['elapsed_s']} s" + (" (--quick)" if report["quick"] else ""),
           "all on loopback: private redis-server, `otb emulator` (one process), real `otb submit` / `otb worker` / "
           "`rq worker` processes", ""]
    row = "  {:<84} {:>8} {:>8} {:>9}"
    s = report["scenarios"]
    if "latency_bound" in s:
        r = s["latency_bound"]
        ours, plain, ceil, alone = r["ours"], r["plain_rq"], r["aiohttp"], r["worker_http_alone"]
        out += [f"1. Latency-bound: emulator latency {r['latency_ms']:g} ms (ideal at 200 in flight: "
                f"{r['ideal_req_per_s']:.0f} req/s)",
                row.format("system", "requests", "wall s", "req/s"),
                row.format("opentoken-batch: 1 `otb worker`, OTB_CONCURRENCY=200 OTB_CHUNK_SIZE=1000; submit -> completed",
                           ours["requests"], f"{ours['wall_s']:.2f}", f"{ours['req_per_s']:.1f}"),
                row.format(f"  same run without the submit CLI ({ours['submit_cli_s']:.2f} s): created_at -> completed_at",
                           "", f"{ours['processing_s']:.2f}", f"{ours['processing_req_per_s']:.1f}"),
                row.format(f"plain RQ: {plain['workers']} stock `rq worker -S json` (fork per job), 1 job/request, sync httpx",
                           plain["requests"], f"{plain['wall_s']:.2f}", f"{plain['req_per_s']:.2f}"),
                row.format("raw aiohttp: ClientSession, TCPConnector(limit=200), 200 in flight, no queue (ceiling)",
                           ceil["requests"], f"{ceil['wall_s']:.2f}", f"{ceil['req_per_s']:.1f}"),
                row.format("diagnostic: worker/http.py client alone (aiohttp session), 200 in flight, no queue",
                           alone["requests"], f"{alone['wall_s']:.2f}", f"{alone['req_per_s']:.1f}"),
                f"  ours / aiohttp   {r['ours_vs_aiohttp']:.2f}x   target >= {TARGETS['ours_vs_aiohttp']}x   "
                f"{verdict(r['ours_vs_aiohttp'], TARGETS['ours_vs_aiohttp'], at_least=True)}"
                f"   (without the submit CLI: {r['ours_vs_aiohttp_processing_only']:.2f}x)",
                f"  ours / plain RQ  {r['ours_vs_plain_rq']:.1f}x   target >= {TARGETS['ours_vs_plain_rq']:g}x    "
                f"{verdict(r['ours_vs_plain_rq'], TARGETS['ours_vs_plain_rq'], at_least=True)}", ""]
    if "overhead_bound" in s:
        r = s["overhead_bound"]
        ours, ceil, alone = r["ours"], r["aiohttp"], r["worker_http_alone"]
        row2 = "  {:<62} {:>8} {:>8} {:>8} {:>11} {:>9} {:>9}"
        out += ["2. Overhead-bound: emulator latency 0 (client, emulator and Redis share the 2 CPUs)",
                row2.format("system", "requests", "wall s", "req/s", "CPU ms/req", "emu ms", "redis ms"),
                row2.format("opentoken-batch: 1 `otb worker` (200/1000); submit -> completed", ours["requests"],
                            f"{ours['wall_s']:.2f}", f"{ours['req_per_s']:.1f}", f"{ours['cpu_ms_per_req']:.3f}",
                            f"{ours['emulator_cpu_ms_per_req']:.3f}", f"{ours['redis_cpu_ms_per_req']:.3f}"),
                row2.format("  same run, created_at -> completed_at", "", f"{ours['processing_s']:.2f}",
                            f"{ours['processing_req_per_s']:.1f}", "", "", ""),
                row2.format("raw aiohttp, 200 in flight, no queue (median of 3)", ceil["requests"], f"{ceil['wall_s']:.2f}",
                            f"{ceil['req_per_s']:.1f}", f"{ceil['cpu_ms_per_req']:.3f}",
                            f"{ceil['emulator_cpu_ms_per_req']:.3f}", "-"),
                row2.format("diagnostic: worker/http.py client alone (median of 3)", alone["requests"],
                            f"{alone['wall_s']:.2f}", f"{alone['req_per_s']:.1f}", f"{alone['cpu_ms_per_req']:.3f}",
                            f"{alone['emulator_cpu_ms_per_req']:.3f}", "-"),
                f"  ours / aiohttp {r['ours_vs_aiohttp']:.2f}x (without the submit CLI "
                f"{r['ours_vs_aiohttp_processing_only']:.2f}x); worker CPU above the bare client: "
                f"{r['cpu_ms_per_req_over_aiohttp']:.3f} ms per request, above its own HTTP client alone: "
                f"{r['cpu_ms_per_req_over_worker_http']:.3f} ms",
                "  CPU ms/req (ours) = user+sys of the `otb worker` parent and its reaped work horses over the run / requests:",
                "    RQ dequeue, heartbeats and janitor thread, the fork, loading the registry and requests from Redis,",
                "    validation, adapter translation, the aiohttp client, JSON, pricing, the",
                "    result commits (sync redis-py). Not the submit CLI, the emulator or redis-server (shown beside it).",
                "  CPU ms/req (bare clients) = user+sys of the client process (this one) over the run / requests.", ""]
    if "rate_limited" in s:
        r = s["rate_limited"]
        out += [f"3. Rate-limited: the emulator allows {r['rpm_per_model']} requests a minute per model ({r['models']} models, "
                f"{r['limit_req_per_s']:g} req/s in all, sliding window); {r['workers']} otb workers share OTB_LIMITS",
                f"  {r['requests']} requests in {r['processing_s']} s: {r['achieved_req_per_s']} req/s = "
                f"{r['fraction_of_limit']:.1%} of the limit (target >= 90%: "
                f"{verdict(r['fraction_of_limit'], TARGETS['rate_fraction_of_limit'], at_least=True)}), "
                f"{r['calls_429']} of {r['calls']} calls answered 429 = {r['share_429']:.2%} (target < 1%: "
                f"{verdict(r['share_429'], TARGETS['rate_share_429'], at_least=False)})", ""]
    if "submit" in s:
        r = s["submit"]
        out += [f"4. Submit: `otb submit FILE --json` of {r['lines']} short-form chat lines ({r['file_mb']} MB), "
                "validation + enqueue, process start to exit",
                f"  {r['wall_s']:.2f} s, {r['lines_per_s']} lines/s (target >= {TARGETS['submit_lines_per_s']}: "
                f"{verdict(r['lines_per_s'], TARGETS['submit_lines_per_s'], at_least=True)}), "
                f"peak RSS {r['peak_rss_mb']:.0f} MB (target < {TARGETS['submit_peak_rss_mb']}: "
                f"{verdict(r['peak_rss_mb'], TARGETS['submit_peak_rss_mb'], at_least=False)}), "
                f"CPU {r['cpu_s']} s, {r['chunk_jobs']} chunk jobs", ""]
    if "memory" in s:
        r = s["memory"]
        out += [f"5. Memory: 1 `otb worker`, OTB_CONCURRENCY={r['concurrency']} OTB_CHUNK_SIZE={r['requests']}, "
                f"{r['requests']} requests, emulator latency {r['latency_ms']:g} ms",
                f"  peak RSS parent + horse {r['peak_rss_mb']:.0f} MB (target < {TARGETS['worker_peak_rss_mb']}: "
                f"{verdict(r['peak_rss_mb'], TARGETS['worker_peak_rss_mb'], at_least=False)}); peak parent "
                f"{r['peak_parent_rss_mb']:.0f} MB, peak horse {r['peak_horse_rss_mb']:.0f} MB, idle worker "
                f"{r['idle_rss_mb']:.0f} MB; {r['rss_samples']} samples",
                f"  (RSS of parent + horse counts the pages they share since the fork twice; PSS sum at peak "
                f"{r['peak_pss_mb']:.0f} MB)",
                f"  processing {r['processing_s']:.2f} s; calls in flight: peak {r['peak_connections_to_emulator']} open "
                f"connections to the emulator, mean {r['mean_in_flight']} (Little's law)", ""]
    return "\n".join(out).rstrip() + "\n"


def code_version() -> str:
    """The commit measured and whether the checkout differs from it (read-only git; no index refresh)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        changed = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    files = len(changed.stdout.splitlines())
    return head.stdout.strip() + (f" + uncommitted changes in {files} tracked files" if files else "")


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every figure that has a target: value, target, met."""
    s, out = report["scenarios"], {}
    pairs = [("ours_vs_aiohttp", "latency_bound", "ours_vs_aiohttp", True),
             ("ours_vs_plain_rq", "latency_bound", "ours_vs_plain_rq", True),
             ("rate_fraction_of_limit", "rate_limited", "fraction_of_limit", True),
             ("rate_share_429", "rate_limited", "share_429", False),
             ("submit_lines_per_s", "submit", "lines_per_s", True), ("submit_peak_rss_mb", "submit", "peak_rss_mb", False),
             ("worker_peak_rss_mb", "memory", "peak_rss_mb", False)]
    for name, scenario, field_, at_least in pairs:
        if scenario in s:
            value, goal = s[scenario][field_], TARGETS[name]
            out[name] = {"value": value, "target": (">= " if at_least else "< ") + f"{goal:g}",
                         "met": value >= goal if at_least else value < goal}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run (about a minute)")
    ap.add_argument("--only", default="1,2,3,4,5", help="comma-separated scenario numbers (default all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    ap.add_argument("--requests", type=int, help="scenario 1 requests for ours and aiohttp (default 5000)")
    ap.add_argument("--rq-requests", type=int, help="scenario 1 requests for plain RQ (default 300)")
    ap.add_argument("--overhead-requests", type=int, help="scenario 2 requests (default 3000)")
    ap.add_argument("--submit-lines", type=int, help="scenario 4 lines (default 100000, the batch limit)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, JSONL files)")
    args = ap.parse_args()
    try:
        only = sorted({int(x) for x in args.only.split(",") if x.strip()})
    except ValueError:
        ap.error("--only takes scenario numbers such as 1,2,4")
    if not set(only) <= set(SCENARIOS):
        ap.error(f"--only: scenarios are {sorted(SCENARIOS)}")
    sizes = QUICK if args.quick else Sizes()
    overrides = {"requests": args.requests, "rq_requests": args.rq_requests,
                 "overhead_requests": args.overhead_requests, "submit_lines": args.submit_lines}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    work = Path(tempfile.mkdtemp(prefix="otb-throughput-"))
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "code": code_version(), "cpus": os.cpu_count(), "loadavg_start": load_average(),
                              "quick": args.quick,
                              "sizes": sizes.__dict__, "targets": TARGETS, "scenarios": {}}
    started = time.monotonic()
    ok = False
    try:
        for number in only:
            report["scenarios"][NAMES[number]] = SCENARIOS[number](work, sizes)
        ok = True
    finally:
        end_run(report, work, started, ok=ok, keep=args.keep, say=progress)
    report["checks"] = checks(report)
    progress(f"done in {report['elapsed_s']} s")
    print(json.dumps(report) if args.json else render(report), end="\n" if args.json else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
