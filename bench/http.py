"""The HTTP API is "fast enough not to matter" (issue 10): calls against batches, on the emulator at 200 ms.

    .venv/bin/python -m bench.http                 # the whole run (a few minutes on 2 cores); exit 1 if a target fails
    .venv/bin/python -m bench.http --quick         # smaller sizes, a smoke run
    .venv/bin/python -m bench.http --only a,b --json

One run, all real and on loopback: a private redis-server, `otb emulator --latency-ms 200`, one `otb serve`
and one `otb worker` (their defaults: OTB_CONCURRENCY 64, chunk size 100), the official `openai` SDK as
the client (AsyncOpenAI with the SDK's DefaultAioHttpClient, max_retries=0, one client). Scenarios:

  a  throughput   1,000 concurrent `chat.completions.create` calls vs the same 1,000 requests submitted
                  as one batch (producer.client.Client in this process: submit, then wait until completed)
                  target: calls >= 0.7x the batch's req/s
  b  latency      10 concurrent callers, each making calls one after another: the median (and p95) of
                  call time - 200 ms, the upstream's latency. target: median <= 15 ms (p95 reported)
  c  priority     calls made one at a time while a 20,000-request batch runs: the time from a call's start
                  to the worker sending it upstream (its arrival at a timing proxy in front of the emulator)
                  target: p95 <= 1 s
  d  upload       `files.create` of a 100,000-line JSONL file (~20 MB) + `batches.create`: wall time, and
                  the server's peak RSS (VmHWM, reset just before). targets: <= 8 s, < 300 MB.
                  Needs `/v1/batches`: skipped with a note while POST /v1/batches answers 404.

Load-independent figures beside the wall times: the server's CPU ms per call, Redis commands per call
(INFO commandstats) and RQ work-horse forks per call. Progress goes to stderr; the summary (or, with
--json, one JSON object) to stdout. Every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import openai
import redis

from bench.harness import RedisServer, ServerProcess, WorkerProcess, free_port, load_average, otb, worker_env
from bench.throughput import Emulator, cpu_seconds, child_pids, code_version, progress

LATENCY_MS = 200.0
CALL_MODEL = "anthropic/claude-haiku-5-5"  # straight to the emulator
TIMED_MODEL = "google/gemini-3-flash"  # through the timing proxy (scenario c): its arrival is the worker starting it
TARGETS = {"calls_vs_batch": 0.7, "added_latency_median_ms": 15.0, "start_p95_s": 1.0, "upload_create_s": 8.0,
           "upload_peak_rss_mb": 300.0}


@dataclass(frozen=True)
class Sizes:
    calls: int = 1000  # a: concurrent calls, and the batch of the same requests
    latency_callers: int = 10  # b: concurrent callers
    latency_calls: int = 300  # b: calls in all
    priority_batch: int = 20_000  # c: the batch running meanwhile
    priority_calls: int = 30  # c: calls made one at a time while it runs
    upload_lines: int = 100_000  # d


QUICK = Sizes(calls=300, latency_calls=100, priority_batch=5000, priority_calls=10, upload_lines=20_000)


# -- what the processes did, read around each scenario -----------------------------------------------
class Meters:
    """CPU of the server and of the worker (with its horses), Redis commands, RQ jobs the worker forked for."""

    def __init__(self, conn: redis.Redis, server: ServerProcess, worker: WorkerProcess, redis_pid: int) -> None:
        self.conn, self.server, self.worker, self.redis_pid = conn, server, worker, redis_pid

    def read(self) -> dict[str, Any]:
        stats = self.conn.info("commandstats")
        commands = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        return {"server_cpu": cpu_seconds(self.server.proc.pid), "worker_cpu": self._worker_cpu(),
                "redis_cpu": cpu_seconds(self.redis_pid), "commands": commands, "forks": self._jobs_forked(),
                "at": time.monotonic()}

    def _worker_cpu(self) -> float:
        """The worker and its work horses, live (their own CPU) or reaped (folded into the worker's)."""
        pid = self.worker.proc.pid
        total = cpu_seconds(pid)
        for kid in child_pids(pid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                fields = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")
        return total

    def _jobs_forked(self) -> int:
        """RQ jobs the worker process ran: one work horse forked for each (claimed chunks are not counted)."""
        from rq import Worker

        return sum(w.successful_job_count + w.failed_job_count for w in Worker.all(connection=self.conn))

    @staticmethod
    def per(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
        commands = Counter(after["commands"])
        commands.subtract(before["commands"])
        top = {name: round(count / n, 2) for name, count in commands.most_common(12) if count > 0}
        return {"server_cpu_ms_per_call": round((after["server_cpu"] - before["server_cpu"]) * 1000 / n, 3),
                "worker_cpu_ms_per_call": round((after["worker_cpu"] - before["worker_cpu"]) * 1000 / n, 3),
                "redis_cpu_ms_per_call": round((after["redis_cpu"] - before["redis_cpu"]) * 1000 / n, 3),
                "redis_commands_per_call": round(sum(commands.values()) / n, 1),
                "forks_per_call": round((after["forks"] - before["forks"]) / n, 3),
                "top_commands_per_call": top}


# -- a proxy that notes when each call reaches the upstream (scenario c) ------------------------------
class TimingProxy:
    """An aiohttp proxy in front of the emulator, in a thread of this process: it notes the arrival of every
    request (time.monotonic(), the clock the calls are timed on) under the marker in its text, then forwards it."""

    def __init__(self, target: str) -> None:
        self.port, self.target = free_port(), target
        self.url = f"http://127.0.0.1:{self.port}"
        self.arrivals: dict[str, float] = {}
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), name="timing-proxy", daemon=True).start()
        if not started.wait(10):
            raise RuntimeError("the timing proxy did not start")

    def _run(self, started: threading.Event) -> None:
        from aiohttp import ClientSession, TCPConnector, web

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            marker = body.split(b"#t=", 1)[1].split(b" ", 1)[0].decode() if b"#t=" in body else ""
            if marker:
                self.arrivals.setdefault(marker, time.monotonic())
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with self.session.request(request.method, self.target + request.path_qs, data=body,
                                            headers=headers) as answer:
                payload = await answer.read()
                return web.Response(body=payload, status=answer.status,
                                    headers={"Content-Type": answer.headers.get("Content-Type", "application/json")})

        async def start() -> None:
            self.session = ClientSession(connector=TCPConnector(limit=0))
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", forward)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.loop.run_until_complete(start())
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def close() -> None:
            await self.session.close()
            await self.runner.cleanup()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


# -- the stack ------------------------------------------------------------------------------------------
class Stack:
    """redis-server, emulator (200 ms), timing proxy, one `otb worker`, one `otb serve`, and a key."""

    def __init__(self, work: Path, stack: contextlib.ExitStack, key_options: tuple[str, ...] = ()) -> None:
        self.work = work
        self.redis = RedisServer(work)
        stack.callback(self.redis.stop)
        self.emulator = Emulator(LATENCY_MS, work / "emulator.log")
        stack.callback(self.emulator.stop)
        self.proxy = TimingProxy(self.emulator.url)
        stack.callback(self.proxy.stop)
        self.env = worker_env(self.redis.url, self.emulator.url, OTB_GOOGLE_BASE_URL=self.proxy.url)
        self.conn = self.redis.client()
        self.worker = WorkerProcess(self.env, log=work / "worker.log")
        stack.callback(self.worker.stop, timeout=15)
        self.server = ServerProcess(self.env, log=work / "serve.log")
        stack.callback(self.server.stop)
        made = otb(["keys", "create", "bench", "--json", *key_options], self.env)
        if made.returncode != 0:
            raise RuntimeError(f"otb keys create failed: {made.stderr.decode()[-2000:]}")
        self.key = json.loads(made.stdout)["key"]
        self.meters = Meters(self.conn, self.server, self.worker, self.redis.proc.pid)
        self._wait_worker()

    def _wait_worker(self, timeout: float = 60) -> None:
        from rq import Worker

        deadline = time.monotonic() + timeout
        while not Worker.count(connection=self.conn):
            if self.worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"otb worker did not register; see {self.work / 'worker.log'}")
            time.sleep(0.05)

    def client(self) -> Any:
        from producer.client import Client
        from worker.settings import Settings

        return Client(self.conn, Settings.from_env(self.env))

    def async_sdk(self, transport: str = "aiohttp") -> openai.AsyncOpenAI:
        """The SDK's async client; `aiohttp` is its own DefaultAioHttpClient (`pip install openai[aiohttp]`), which
        the SDK offers for many calls in flight: its default httpx transport tops out near 200 req/s at 1,000
        in flight on this machine, whatever the server (reference/performance.md)."""
        http = openai.DefaultAioHttpClient(timeout=600) if transport == "aiohttp" else None
        return openai.AsyncOpenAI(base_url=self.server.base_url, api_key=self.key, max_retries=0, timeout=600,
                                  http_client=http)

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.base_url, api_key=self.key, max_retries=0, timeout=600)

    def wait_idle(self, timeout: float = 120) -> None:
        """Until no chunk is queued or running (a horse may linger, idle)."""
        from rq import Queue
        from rq.registry import StartedJobRegistry

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = 0
            for name in ("otb", "otb:interactive"):
                queue = Queue(name, connection=self.conn)
                busy += queue.count + StartedJobRegistry(queue=queue).count
            busy += self.conn.hlen("otb:claimed")
            if not busy:
                return
            time.sleep(0.1)
        raise RuntimeError("the worker did not go idle")


def messages(i: int, marker: str = "") -> list[dict[str, str]]:
    text = f"Benchmark question {i}: in one sentence, what is {i} + {i}?"
    return [{"role": "user", "content": f"#t={marker} {text}" if marker else text}]


def check_answer(completion: Any) -> None:
    if not completion.choices or not completion.choices[0].message.content:
        raise RuntimeError(f"an empty answer: {completion}")


# -- a: calls against a batch --------------------------------------------------------------------------
async def concurrent_calls(stack: Stack, n: int, offset: int = 0, transport: str = "aiohttp") -> list[float]:
    client = stack.async_sdk(transport)
    try:
        async def one(i: int) -> float:
            begun = time.monotonic()
            check_answer(await client.chat.completions.create(model=CALL_MODEL, messages=messages(i), max_tokens=64))
            return time.monotonic() - begun
        return list(await asyncio.gather(*(one(offset + i) for i in range(n))))
    finally:
        await client.close()


def scenario_throughput(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    n = sizes.calls
    progress(f"a: {n} requests as one batch (Client.submit, then until completed)")
    client = stack.client()
    lines = [{"custom_id": f"r{i}", "model": CALL_MODEL, "messages": messages(i), "max_tokens": 64} for i in range(n)]
    before = stack.meters.read()
    started = time.monotonic()
    bid = client.submit(lines)
    status = client.wait(bid, timeout=600)
    batch_s = time.monotonic() - started
    if status["request_counts"]["succeeded"] != n:
        raise RuntimeError(f"the batch did not succeed whole: {status['request_counts']}")
    batch_meters = Meters.per(before, stack.meters.read(), n)
    stack.wait_idle()
    time.sleep(3)  # a lingering horse goes idle
    progress(f"a:   batch {n / batch_s:.0f} req/s; now {n} concurrent chat.completions.create calls")
    before = stack.meters.read()
    started = time.monotonic()
    durations = asyncio.run(concurrent_calls(stack, n))
    calls_s = time.monotonic() - started
    call_meters = Meters.per(before, stack.meters.read(), n)
    ratio = (n / calls_s) / (n / batch_s)
    progress(f"a:   calls {n / calls_s:.0f} req/s = {ratio:.2f}x the batch; again with the SDK's default httpx transport")
    stack.wait_idle()
    started = time.monotonic()
    asyncio.run(concurrent_calls(stack, n, transport="httpx"))
    httpx_s = time.monotonic() - started
    return {"calls_httpx_req_per_s": round(n / httpx_s, 1),"requests": n, "batch_s": round(batch_s, 3), "batch_req_per_s": round(n / batch_s, 1),
            "calls_s": round(calls_s, 3), "calls_req_per_s": round(n / calls_s, 1), "calls_vs_batch": round(ratio, 3),
            "call_median_ms": round(statistics.median(durations) * 1000, 1),
            "call_max_ms": round(max(durations) * 1000, 1), "batch_meters": batch_meters, "call_meters": call_meters}


# -- b: added latency at 10 concurrent ----------------------------------------------------------------
async def closed_loop(stack: Stack, callers: int, total: int) -> list[float]:
    """`callers` callers, each making its next call when its last is answered, `total` calls in all."""
    client = stack.async_sdk()
    durations: list[float] = []
    counter = iter(range(total))
    try:
        async def caller() -> None:
            for i in counter:
                begun = time.monotonic()
                check_answer(await client.chat.completions.create(model=CALL_MODEL, messages=messages(i), max_tokens=64))
                durations.append(time.monotonic() - begun)
        await asyncio.gather(*(caller() for _ in range(callers)))
    finally:
        await client.close()
    return durations


def scenario_latency(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    progress(f"b: {sizes.latency_callers} concurrent callers, {sizes.latency_calls} calls in all")
    asyncio.run(closed_loop(stack, sizes.latency_callers, sizes.latency_callers))  # warm: connections, a horse
    before = stack.meters.read()
    durations = asyncio.run(closed_loop(stack, sizes.latency_callers, sizes.latency_calls))
    meters = Meters.per(before, stack.meters.read(), len(durations))
    added = sorted((d * 1000 - LATENCY_MS) for d in durations)
    median, p95 = statistics.median(added), added[int(len(added) * 0.95) - 1]
    progress(f"b:   added latency median {median:.1f} ms, p95 {p95:.1f} ms")
    return {"callers": sizes.latency_callers, "calls": len(durations), "added_latency_median_ms": round(median, 1),
            "added_latency_p95_ms": round(p95, 1), "added_latency_min_ms": round(added[0], 1),
            "added_latency_max_ms": round(added[-1], 1), "meters": meters}


# -- c: a call during a big batch ----------------------------------------------------------------------
def scenario_priority(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    n = sizes.priority_batch
    progress(f"c: a {n}-request batch, then {sizes.priority_calls} calls one at a time while it runs")
    client = stack.client()
    bid = client.submit([{"custom_id": f"big{i}", "model": CALL_MODEL, "messages": messages(i), "max_tokens": 64}
                         for i in range(n)])
    sdk = stack.sdk()
    starts, totals, done_at = [], [], []
    try:
        time.sleep(2)  # the batch is well under way
        for i in range(sizes.priority_calls):
            done_at.append(client.status(bid)["request_counts"]["succeeded"])
            marker = f"c{i}"
            begun = time.monotonic()
            check_answer(sdk.chat.completions.create(model=TIMED_MODEL, messages=messages(i, marker), max_tokens=64))
            totals.append(time.monotonic() - begun)
            arrived = stack.proxy.arrivals.get(marker)
            if arrived is None:
                raise RuntimeError(f"call {marker} never reached the timing proxy")
            starts.append(arrived - begun)
            time.sleep(0.2)
        still_running = client.status(bid)["request_counts"]
    finally:
        client.cancel(bid)
    if still_running["succeeded"] >= n:
        raise RuntimeError("the batch had finished before the calls did: make it bigger")
    stack.wait_idle(timeout=300)
    starts.sort()
    p95 = starts[max(0, int(len(starts) * 0.95) - 1)]
    progress(f"c:   call start median {statistics.median(starts) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    return {"batch_requests": n, "calls": len(starts), "start_median_s": round(statistics.median(starts), 3),
            "start_p95_s": round(p95, 3), "start_max_s": round(starts[-1], 3),
            "call_median_s": round(statistics.median(totals), 3),
            "batch_done_when_calls_started": [done_at[0], done_at[-1]]}


# -- d: upload and batch create ------------------------------------------------------------------------
def batch_file(path: Path, n: int) -> Path:
    """`n` Batch API lines of about 200 bytes (100,000 of them: about 20 MB, the issue's size)."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            out.write(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
                "model": CALL_MODEL, "messages": [{"role": "user", "content": f"Question {i}: what is {i} + 1?"}],
                "max_tokens": 64}}, separators=(",", ":")) + "\n")
    return path


def reset_peak_rss(pid: int) -> None:
    """VmHWM back to the current RSS (writing 5 to clear_refs), so the peak is this scenario's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def scenario_upload(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    import httpx

    probe = httpx.post(f"{stack.server.base_url}/batches", json={}, timeout=30,
                       headers={"Authorization": f"Bearer {stack.key}"})
    path = batch_file(stack.work / "upload.jsonl", sizes.upload_lines)
    mb = path.stat().st_size / 1e6
    sdk = stack.sdk()
    reset_peak_rss(stack.server.proc.pid)
    progress(f"d: files.create of {sizes.upload_lines} lines ({mb:.1f} MB)" +
             (" + batches.create" if probe.status_code != 404 else " (POST /v1/batches answers 404: upload only)"))
    started = time.monotonic()
    with path.open("rb") as fh:
        uploaded = sdk.files.create(file=fh, purpose="batch")
    upload_s = time.monotonic() - started
    out: dict[str, Any] = {"lines": sizes.upload_lines, "file_mb": round(mb, 1), "upload_s": round(upload_s, 3)}
    if probe.status_code == 404:
        out.update(skipped="POST /v1/batches answers 404: this checkout has no /v1/batches yet (upload only)",
                   upload_peak_rss_mb=round(stack.server.peak_rss_mb(), 1))
        progress(f"d:   upload {upload_s:.2f} s; batch create skipped (no /v1/batches)")
        return out
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    created_s = time.monotonic() - started
    out.update(upload_create_s=round(created_s, 3), status_at_create=batch.status)
    while batch.status == "validating" and time.monotonic() - started < 300:
        time.sleep(0.1)
        batch = sdk.batches.retrieve(batch.id)
    out.update(validated_s=round(time.monotonic() - started, 3), status_after=batch.status,
               upload_peak_rss_mb=round(stack.server.peak_rss_mb(), 1))
    with contextlib.suppress(openai.APIError):
        sdk.batches.cancel(batch.id)
    progress(f"d:   upload + create {created_s:.2f} s, peak RSS {out['upload_peak_rss_mb']} MB")
    return out


SCENARIOS = {"b": scenario_latency, "a": scenario_throughput, "c": scenario_priority, "d": scenario_upload}
NAMES = {"a": "throughput", "b": "latency", "c": "priority", "d": "upload"}


# -- report ----------------------------------------------------------------------------------------------
def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    s, out = report["scenarios"], {}
    pairs = [("calls_vs_batch", "throughput", True), ("added_latency_median_ms", "latency", False),
             ("start_p95_s", "priority", False), ("upload_create_s", "upload", False),
             ("upload_peak_rss_mb", "upload", False)]
    for name, scenario, at_least in pairs:
        if scenario in s and name in s[scenario]:
            value, goal = s[scenario][name], TARGETS[name]
            met = value >= goal if at_least else value <= goal
            if name == "upload_peak_rss_mb":
                met = value < goal
            out[name] = {"value": value, "target": (">= " if at_least else "<= ") + f"{goal:g}", "met": met}
    return out


def meters_line(m: dict[str, Any]) -> str:
    top = ", ".join(f"{k} {v:g}" for k, v in list(m["top_commands_per_call"].items())[:8])
    return (f"server CPU {m['server_cpu_ms_per_call']:.2f} ms/call, worker CPU {m['worker_cpu_ms_per_call']:.2f}, "
            f"redis CPU {m['redis_cpu_ms_per_call']:.2f}; Redis commands {m['redis_commands_per_call']:g}/call "
            f"({top}); work-horse forks {m['forks_per_call']:g}/call")


def render(report: dict[str, Any]) -> str:
    s, c = report["scenarios"], report["checks"]
    out = [f"opentoken-batch HTTP API bench  {report['date']}  code {report['code']}",
           f"{report['cpus']} CPUs, load average {report['loadavg_start']} -> {report['loadavg_end']}, "
           f"{report['elapsed_s']} s" + (" (--quick)" if report["quick"] else ""),
           f"emulator latency {LATENCY_MS:g} ms; one `otb serve`, one `otb worker` (defaults); the openai SDK "
           f"{openai.__version__} (AsyncOpenAI + DefaultAioHttpClient, max_retries=0, one client); private redis-server",
           *([f"LABELLED RUN: the key has --max-cost {report['key_max_cost']} (every request holds against its budget)"]
             if report.get("key_max_cost") else []), ""]

    def verdict(name: str) -> str:
        return "met" if c[name]["met"] else "MISSED"

    if "throughput" in s:
        r = s["throughput"]
        out += [f"a. {r['requests']} concurrent calls vs the same requests as one batch",
                f"   batch (Client.submit -> completed)  {r['batch_s']:.2f} s  {r['batch_req_per_s']:.1f} req/s",
                f"   calls (chat.completions.create)     {r['calls_s']:.2f} s  {r['calls_req_per_s']:.1f} req/s  "
                f"(a call took median {r['call_median_ms']:.0f} ms, max {r['call_max_ms']:.0f} ms)",
                f"   calls / batch = {r['calls_vs_batch']:.2f}x   target >= {TARGETS['calls_vs_batch']}x   "
                f"{verdict('calls_vs_batch')}",
                f"   (the calls again through the SDK's default httpx transport instead of DefaultAioHttpClient: "
                f"{r['calls_httpx_req_per_s']:.1f} req/s)",
                f"   calls: {meters_line(r['call_meters'])}",
                f"   batch: {meters_line(r['batch_meters'])}", ""]
    if "latency" in s:
        r = s["latency"]
        out += [f"b. {r['callers']} concurrent callers, {r['calls']} calls: time over the upstream's {LATENCY_MS:g} ms",
                f"   median {r['added_latency_median_ms']:.1f} ms (target <= {TARGETS['added_latency_median_ms']:g}: "
                f"{verdict('added_latency_median_ms')}), p95 {r['added_latency_p95_ms']:.1f} ms, "
                f"min {r['added_latency_min_ms']:.1f}, max {r['added_latency_max_ms']:.1f}",
                f"   {meters_line(r['meters'])}", ""]
    if "priority" in s:
        r = s["priority"]
        out += [f"c. {r['calls']} calls one at a time while a {r['batch_requests']}-request batch runs "
                f"({r['batch_done_when_calls_started'][0]} -> {r['batch_done_when_calls_started'][1]} of it done meanwhile)",
                f"   call start -> sent upstream: median {r['start_median_s'] * 1000:.0f} ms, p95 "
                f"{r['start_p95_s'] * 1000:.0f} ms (target <= {TARGETS['start_p95_s'] * 1000:.0f} ms: "
                f"{verdict('start_p95_s')}), max {r['start_max_s'] * 1000:.0f} ms; whole call median "
                f"{r['call_median_s'] * 1000:.0f} ms", ""]
    if "upload" in s:
        r = s["upload"]
        if "skipped" in r:
            out += [f"d. upload of {r['lines']} lines ({r['file_mb']} MB): {r['upload_s']:.2f} s, server peak RSS "
                    f"{r['upload_peak_rss_mb']:.0f} MB; batch create SKIPPED: {r['skipped']}", ""]
        else:
            out += [f"d. files.create + batches.create of {r['lines']} lines ({r['file_mb']} MB)",
                    f"   {r['upload_create_s']:.2f} s (upload {r['upload_s']:.2f} s; target <= "
                    f"{TARGETS['upload_create_s']:g} s: {verdict('upload_create_s')}); status {r['status_at_create']} "
                    f"-> {r['status_after']} at {r['validated_s']:.2f} s",
                    f"   server peak RSS {r['upload_peak_rss_mb']:.0f} MB (target < {TARGETS['upload_peak_rss_mb']:g}: "
                    f"{verdict('upload_peak_rss_mb')})", ""]
    failed = [name for name, v in c.items() if not v["met"]]
    out.append("all targets met" if not failed else f"targets MISSED: {', '.join(failed)}")
    return "\n".join(out) + "\n"


def run(only: list[str], sizes: Sizes, work: Path, key_max_cost: str | None = None) -> dict[str, Any]:
    """Every scenario asked for, on one stack (stopped on the way out, whatever happens)."""
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "code": code_version(), "cpus": os.cpu_count(), "loadavg_start": load_average(),
                              "sizes": sizes.__dict__, "targets": TARGETS, "scenarios": {},
                              "key_max_cost": key_max_cost}
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        progress("starting redis-server, emulator (200 ms), otb worker, otb serve")
        stack = Stack(work, cleanup, ("--max-cost", key_max_cost) if key_max_cost else ())
        asyncio.run(concurrent_calls(stack, 5))  # warm: imports, connections, scripts, a work horse
        stack.wait_idle()
        for name in only:
            report["scenarios"][NAMES[name]] = SCENARIOS[name](stack, sizes)
    report.update(loadavg_end=load_average(), elapsed_s=round(time.monotonic() - started, 1))
    report["checks"] = checks(report)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    ap.add_argument("--only", default="b,a,c,d", help="scenarios to run, in this order (default b,a,c,d)")
    ap.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, files)")
    ap.add_argument("--key-max-cost", metavar="USD", help="a labelled run: the bench's key has this --max-cost, so "
                    "every call and batch line also holds its worst case against the key's budget")
    args = ap.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not set(only) <= set(SCENARIOS):
        ap.error(f"--only: scenarios are {', '.join(SCENARIOS)}")
    work = Path(tempfile.mkdtemp(prefix="otb-http-bench-"))
    try:
        report = run(only, QUICK if args.quick else Sizes(), work, args.key_max_cost)
    except BaseException:
        progress(f"failed; work directory kept: {work}")
        raise
    report["quick"] = args.quick
    if args.keep:
        progress(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report) if args.json else render(report), end="\n" if args.json else "")
    return 0 if all(v["met"] for v in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
