"""Past one machine: `otb worker`s in their own network namespaces against one Redis (issue 12, part 2).

    sudo .venv/bin/python -m bench.netns                  # the three parts, about 4 minutes on 2 cores
    sudo .venv/bin/python -m bench.netns --only 3 --json  # some parts; one JSON object on stdout
    sudo .venv/bin/python -m bench.netns --quick          # small sizes: checks that it works

Runs as root (ip netns, veth). Each worker is a real `otb worker` in its own namespace, as on its own
machine (bench/nsfabric.py: a veth pair per namespace on a bridge); a private redis-server and the
emulator (bench/counting_emulator.py: `otb emulator` that also counts each request body) run in the
root namespace and listen on the bridge's address; batches go in through the real `otb submit` CLI.
Nothing leaves the machine. Parts:

  1 shared rate limit  one model limited to RPM requests a minute by the emulator (429 above it) and
                       by OTB_LIMITS; one batch, run by 1 worker, then 2, then 4 (each phase a fixed
                       time, one continuous run, so the provider's 60 s window sees it all): req/s
                       in each phase as a share of the limit (target >= 90%), calls answered 429
                       over the run (target < 1%), and how the work split between namespaces
  2 latency-bound      no limit, emulator at 200 ms, N = 1, 2, 4 workers at the default concurrency:
                       req/s against N as the 2 cores saturate; Redis CPU (/proc of redis-server)
                       and Redis commands per request (INFO commandstats, commands run inside
                       scripts included); from them how many workers one Redis core serves
  3 cut link           mid-batch, `ip link set` down on one namespace's cable while it holds
                       chunks with calls in flight: seconds until other workers run its chunks
                       (target < 30 s; set by OTB_LEASE_TTL), every request exactly one result
                       and one commit event, counters equal the result lines, requests sent
                       upstream twice (allowed for what was in flight), then the link back: the
                       cut-off worker's late commits are refused (counted) and change no result

Progress goes to stderr; the summary table (or --json) to stdout. The exit status is 1 when a
target is missed or a check fails. Every process, namespace and veth is removed on the way out
(also on Ctrl-C, SIGTERM and errors); a run removes what a crashed earlier run left. The machine is
shared: the header gives the load average, and part 2 the whole machine's CPU use.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from bench.chaos import _check, _wait_http
from bench.harness import ROOT, RedisServer, WorkerProcess, chunks_held_by, free_port, load_average, otb, wait_taken_over, end_run, worker_env
from bench.nsfabric import Fabric, terminated_cleanly, unavailable
from bench.throughput import (child_pids, code_version, cpu_seconds, progress, stop_session, wait_no_children, wait_workers,
                              write_jsonl)
from worker.settings import Settings

MODEL = "google/gemini-3-flash"
METRICS_PORT = 9464  # each worker's, on its own namespace address
TARGETS = {"share_of_limit": 0.90, "share_429": 0.01, "takeover_s": 30.0}


@dataclass(frozen=True)
class Sizes:
    rate_rpm: int = 1200  # part 1: the model's limit (20 req/s in all)
    rate_phase_s: float = 30  # part 1: seconds with 1, then 2, then 4 workers
    rate_workers: tuple[int, ...] = (1, 2, 4)
    latency_ms: float = 200  # parts 2 and 3
    scale_workers: tuple[int, ...] = (1, 2, 4)
    scale_requests_per_worker: int = 2500  # part 2
    concurrency: int = 64  # part 2: the default OTB_CONCURRENCY
    cut_workers: int = 4  # part 3
    cut_requests: int = 4000
    cut_concurrency: int = 32
    cut_chunk: int = 100  # the default OTB_CHUNK_SIZE
    lease_ttl: int | None = None  # part 3: OTB_LEASE_TTL (None: the default, worker/settings.py)
    cut_at: float = 0.25  # part 3: share of the batch done before the cut


QUICK = Sizes(rate_phase_s=12, scale_requests_per_worker=500, cut_workers=2, cut_requests=600, cut_concurrency=16,
              cut_chunk=25, lease_ttl=3)


# -- the services in the root namespace and the workers in theirs ------------------------------
class Services:
    """A private redis-server and the counting emulator, both on the bridge's address (and Redis on loopback)."""

    def __init__(self, fabric: Fabric, where: Path, *, latency_ms: float, rpm_limit: int = 0) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.where = where
        password = secrets.token_hex(16)  # other machines reach it: protected mode wants a password, and so would we
        self.redis = RedisServer(where, extra=("--bind", "127.0.0.1", fabric.host, "--requirepass", password),
                                 url_of=lambda port: f"redis://:{password}@127.0.0.1:{port}/0")
        self.redis_url = f"redis://:{password}@{fabric.host}:{self.redis.port}/0"  # as the workers see it
        port = free_port()
        self.emulator_url = f"http://{fabric.host}:{port}"
        with open(where / "emulator.log", "ab") as log:
            self.emulator = subprocess.Popen(
                [sys.executable, "-m", "bench.counting_emulator", "--host", fabric.host, "--port", str(port),
                 "--latency-ms", str(latency_ms), "--rpm-limit", str(rpm_limit)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_http(self.emulator_url + "/_counting/repeats")
        except RuntimeError:
            self.stop()
            raise

    def stats(self) -> dict[str, Any]:
        got: dict[str, Any] = httpx.get(self.emulator_url + "/_emulator/stats", timeout=10).json()
        got["repeats"] = httpx.get(self.emulator_url + "/_counting/repeats", timeout=10).json()
        return got

    def repeated(self) -> list[list[tuple[str, float]]]:
        """For each request body sent more than once: (sender address, CLOCK_MONOTONIC arrival) per send."""
        got: list[list[tuple[str, float]]] = httpx.get(self.emulator_url + "/_counting/sends", timeout=30).json()["repeated"]
        return got

    def env(self, **extra: str) -> dict[str, str]:
        """A worker's environment (Redis and the emulator by the bridge address)."""
        return worker_env(self.redis_url, self.emulator_url, **extra)

    def submit(self, lines: list[dict[str, Any]], name: str) -> str:
        """`otb submit FILE --json` from the root namespace; the batch id."""
        sub = otb(["submit", str(write_jsonl(self.where / f"{name}.jsonl", lines)), "--json"],
                  worker_env(self.redis.url, self.emulator_url))
        if sub.returncode != 0:
            raise RuntimeError(f"otb submit failed: {sub.stderr.decode()[-2000:]}")
        return str(json.loads(sub.stdout)["id"])

    def stop(self) -> None:
        stop_session(self.emulator)
        self.redis.stop()


class Workers:
    """`otb worker`s, worker i in namespace i, each serving its metrics on its own address."""

    def __init__(self, fabric: Fabric, svc: Services, env: dict[str, str], n: int, first: int = 0) -> None:
        self.fabric, self.list = fabric, []
        for i in range(first, first + n):
            self.list.append(WorkerProcess(env, "--metrics-port", str(METRICS_PORT), "--metrics-host", fabric.address(i),
                                           log=svc.where / f"worker{i}.log", prefix=tuple(fabric.exec_prefix(i))))
        self.first = first

    def add(self, svc: Services, env: dict[str, str], n: int) -> None:
        more = Workers(self.fabric, svc, env, n, first=self.first + len(self.list))
        self.list += more.list

    def wait_registered(self, conn: redis.Redis) -> None:
        wait_workers(conn, Queue("otb", connection=conn), len(self.list), [w.proc for w in self.list])

    def metrics(self, i: int) -> dict[str, float]:
        """Worker i's metrics: sample name and sorted labels -> value (`otb_requests_total{outcome=skipped}`)."""
        text = httpx.get(f"http://{self.fabric.address(self.first + i)}:{METRICS_PORT}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "route")
                out[f"{s.name}{{{labels}}}"] = s.value
        return out

    def stop(self) -> None:
        for w in self.list:
            w.stop(timeout=10)


@contextlib.contextmanager
def running(fabric: Fabric, where: Path, n: int, env: dict[str, str], *, latency_ms: float,
            rpm_limit: int = 0) -> Iterator[tuple[Services, Workers, redis.Redis]]:
    """Services, then `n` registered workers; all stopped on the way out."""
    with contextlib.ExitStack() as stack:
        svc = Services(fabric, where, latency_ms=latency_ms, rpm_limit=rpm_limit)
        stack.callback(svc.stop)
        workers = Workers(fabric, svc, svc.env(**env), n)
        stack.callback(workers.stop)
        conn = svc.redis.client()
        workers.wait_registered(conn)
        yield svc, workers, conn


def chat_lines(n: int, tag: str) -> list[dict[str, Any]]:
    """Distinct short chats (distinct bodies: the emulator tells a request sent twice by its body)."""
    return [{"custom_id": f"{tag}{i}", "model": MODEL, "max_tokens": 32,
             "messages": [{"role": "user", "content": f"{tag} question {i}: what is {i} + {i}?"}]} for i in range(n)]


def sum_metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for key, v in samples.items()
               if key.split("{", 1)[0] == name and all(w in key.split("{", 1)[1].rstrip("}").split(",") for w in want))


def wait_status(conn: redis.Redis, bid: str, timeout: float) -> str:
    """The batch status once final, or as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = _text(conn.hget(f"otb:batch:{bid}", "status") or b"")
        if status in ("completed", "cancelled", "expired") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine (/proc/stat): what every helper's load used."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def commandstats(conn: redis.Redis) -> Counter[str]:
    """Calls by command since the last CONFIG RESETSTAT (commands run inside scripts included)."""
    skip = {"info", "config|resetstat"}
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in conn.info("commandstats").items()}
    return Counter({name: n for name, n in calls.items() if name not in skip})


# -- part 1 ------------------------------------------------------------------------------------
def part_rate_limited(fabric: Fabric, work: Path, sizes: Sizes) -> dict[str, Any]:
    """One batch under one limit, run by 1, then 2, then 4 workers, each phase `rate_phase_s` seconds."""
    rpm, phase_s, counts = sizes.rate_rpm, sizes.rate_phase_s, sizes.rate_workers
    limit = rpm / 60
    n = math.ceil(limit * phase_s * len(counts) * 1.2)  # more than the run can do: it never runs dry
    where = work / "part1"
    where.mkdir(parents=True, exist_ok=True)
    limits = where / "limits.json"
    limits.write_text(json.dumps({MODEL: {"rpm": rpm}}))
    progress(f"1: {MODEL} limited to {rpm} RPM ({limit:g} req/s) by the emulator and OTB_LIMITS; "
             f"{phase_s:g} s each with {', '.join(map(str, counts))} workers")
    phases: list[dict[str, Any]] = []
    with running(fabric, where, counts[0], {"OTB_LIMITS": str(limits)}, latency_ms=100, rpm_limit=rpm) as (svc, workers, conn):
        bid = svc.submit(chat_lines(n, "rl"), "batch")
        key = f"otb:batch:{bid}"
        for count in counts:
            if count > len(workers.list):
                workers.add(svc, svc.env(OTB_LIMITS=str(limits)), count - len(workers.list))
                workers.wait_registered(conn)
            began = time.monotonic()
            time.sleep(min(5.0, phase_s / 4))  # new workers take their first chunks; the rate settles
            done0, t0 = int(conn.hget(key, "succeeded") or 0), time.monotonic()
            per0 = [sum_metric(workers.metrics(i), "otb_requests_total", outcome="succeeded") for i in range(count)]
            time.sleep(max(0.0, began + phase_s - time.monotonic()))
            done1, t1 = int(conn.hget(key, "succeeded") or 0), time.monotonic()
            per1 = [sum_metric(workers.metrics(i), "otb_requests_total", outcome="succeeded") for i in range(count)]
            rate = (done1 - done0) / (t1 - t0)
            phases.append({"workers": count, "window_s": round(t1 - t0, 1), "requests": done1 - done0,
                           "req_per_s": round(rate, 2), "share_of_limit": round(rate / limit, 3),
                           "by_namespace": [int(b - a) for a, b in zip(per0, per1)]})
            progress(f"1:   {count} workers: {rate:.2f} req/s = {rate / limit:.1%} of the limit, "
                     f"by namespace {phases[-1]['by_namespace']}")
        stats = svc.stats()
        answered_429 = sum(sum_metric(workers.metrics(i), "otb_upstream_calls_total", code="429")
                           for i in range(len(workers.list)))
    calls, limited = stats["calls"], stats["rate_limited"]
    progress(f"1:   {limited} of {calls} calls answered 429")
    return {"rpm": rpm, "limit_req_per_s": limit, "phase_s": phase_s, "phases": phases, "calls": calls,
            "calls_429": limited, "calls_429_seen_by_workers": int(answered_429),
            "share_429": round(limited / max(calls, 1), 4), "run_s": round(sum(p["window_s"] for p in phases), 1)}


# -- part 2 ------------------------------------------------------------------------------------
def part_latency_bound(fabric: Fabric, work: Path, sizes: Sizes) -> dict[str, Any]:
    """N workers, no limit, 200 ms upstream: req/s, the CPU of each party, Redis commands per request."""
    runs = []
    progress(f"2: no limit, emulator at {sizes.latency_ms:g} ms, concurrency {sizes.concurrency} per worker")
    for count in sizes.scale_workers:
        n = sizes.scale_requests_per_worker * count
        with running(fabric, work / f"part2-n{count}", count, {"OTB_CONCURRENCY": str(sizes.concurrency)},
                     latency_ms=sizes.latency_ms) as (svc, workers, conn):
            lines = chat_lines(n, f"lb{count}-")
            conn.config_resetstat()
            pids = [w.proc.pid for w in workers.list]
            cpu0 = [cpu_seconds(p) for p in pids]
            redis0, emu0, machine0 = cpu_seconds(svc.redis.proc.pid), cpu_seconds(svc.emulator.pid), machine_jiffies()
            load0 = os.getloadavg()[0]
            bid = svc.submit(lines, "batch")
            status = wait_status(conn, bid, timeout=n / 20 + 60)
            redis1, emu1, machine1 = cpu_seconds(svc.redis.proc.pid), cpu_seconds(svc.emulator.pid), machine_jiffies()
            cmds = commandstats(conn)
            for p in pids:
                wait_no_children(p)
            worker_cpu = sum(cpu_seconds(p) - c for p, c in zip(pids, cpu0))
            record = {_text(k): _text(v) for k, v in conn.hgetall(f"otb:batch:{bid}").items()}
            if status != "completed" or int(record["succeeded"]) != n:
                raise RuntimeError(f"part 2, {count} workers: batch {status}: {record}")
        wall = float(record["completed_at"]) - float(record["created_at"])
        busy = (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1) * (os.cpu_count() or 1)
        total_cmds = sum(cmds.values())
        run = {"workers": count, "requests": n, "processing_s": round(wall, 2), "req_per_s": round(n / wall, 1),
               "req_per_s_per_worker": round(n / wall / count, 1),
               "worker_cpu_ms_per_req": round(worker_cpu * 1000 / n, 3),
               "redis_cpu_ms_per_req": round((redis1 - redis0) * 1000 / n, 4),
               "redis_core_share": round((redis1 - redis0) / wall, 3),
               "emulator_cpu_ms_per_req": round((emu1 - emu0) * 1000 / n, 3),
               "machine_cores_busy": round(busy, 2), "loadavg_1m_before": round(load0, 2),
               "redis_commands_per_req": round(total_cmds / n, 2),
               "top_commands_per_req": {k: round(v / n, 2) for k, v in cmds.most_common(8)}}
        runs.append(run)
        progress(f"2:   {count} workers: {run['req_per_s']} req/s, Redis {run['redis_cpu_ms_per_req']} CPU ms/req "
                 f"({run['redis_commands_per_req']} commands/req), machine {busy:.2f} of {os.cpu_count()} cores busy")
    return {"latency_ms": sizes.latency_ms, "concurrency": sizes.concurrency, "runs": runs, "ceiling": ceiling(runs)}


def ceiling(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How many workers one Redis core serves: Redis's CPU per request, against one unsaturated worker's rate.

    Redis runs commands on one core, so it saturates at about 1000 / (Redis CPU ms per request) req/s.
    The per-request figure comes from the run that carried the most requests per second (fixed costs
    such as heartbeats and the janitor spread thinnest there); a worker's rate from the run with one.
    """
    busiest = max(runs, key=lambda r: r["req_per_s"])
    one = min(runs, key=lambda r: r["workers"])
    core_req_per_s = 1000 / busiest["redis_cpu_ms_per_req"]
    return {"redis_cpu_ms_per_req": busiest["redis_cpu_ms_per_req"],
            "redis_commands_per_req": busiest["redis_commands_per_req"],
            "redis_core_req_per_s": round(core_req_per_s),
            "redis_core_commands_per_s": round(core_req_per_s * busiest["redis_commands_per_req"]),
            "one_worker_req_per_s": one["req_per_s_per_worker"],
            "workers_per_redis_core": round(core_req_per_s / one["req_per_s_per_worker"], 1)}


# -- part 3 ------------------------------------------------------------------------------------
def part_cut_link(fabric: Fabric, work: Path, sizes: Sizes) -> dict[str, Any]:
    """Pull namespace 0's cable mid-chunk, wait for its chunks to be taken over, plug it back in."""
    n, count = sizes.cut_requests, sizes.cut_workers
    ttl = sizes.lease_ttl or Settings().lease_ttl
    env = {"OTB_CONCURRENCY": str(sizes.cut_concurrency), "OTB_CHUNK_SIZE": str(sizes.cut_chunk),
           **({"OTB_LEASE_TTL": str(sizes.lease_ttl)} if sizes.lease_ttl else {})}
    progress(f"3: {n} requests, {count} workers ({sizes.cut_concurrency} in flight each, chunks of {sizes.cut_chunk}), "
             f"OTB_LEASE_TTL={ttl:g}{'' if sizes.lease_ttl else ' (the default)'}; the cable of namespace 0 is pulled at {sizes.cut_at:.0%}")
    with running(fabric, work / "part3", count, env, latency_ms=sizes.latency_ms) as (svc, workers, conn):
        victim = workers.list[0]
        bid = svc.submit(chat_lines(n, "cut"), "batch")
        key = f"otb:batch:{bid}"
        deadline = time.monotonic() + 120
        while True:  # mid-chunk: enough done, and the victim holds chunks with calls in flight
            held = chunks_held_by(conn, victim.session_pids())
            if held and int(conn.hget(key, "succeeded") or 0) >= n * sizes.cut_at:
                before = workers.metrics(0)
                if sum_metric(before, "otb_upstream_calls_in_flight") > 0:
                    break
            if time.monotonic() > deadline or conn.hget(key, "status") == b"completed":
                raise RuntimeError("part 3: the victim never held a chunk with calls in flight")
            time.sleep(0.02)
        dead = victim.session_pids()
        fabric.cut(0)
        cut_at = time.monotonic()
        time.sleep(0.3)  # what the victim sent before the cut has landed; from now on it cannot change Redis
        held = chunks_held_by(conn, dead)  # read after the cut: a chunk claimed just before it counts too
        open_in_held = _open_requests(conn, bid, held)
        done_at_cut = int(conn.hget(key, "succeeded") or 0)
        progress(f"3:   cut: namespace 0 held {len(held)} chunks ({open_in_held} requests without a result), "
                 f"{sum_metric(before, 'otb_upstream_calls_in_flight'):.0f} calls in flight")
        takeover = [wait_taken_over(conn, job, dead, cut_at, limit=120) for job in held]
        progress(f"3:   taken over after {max(takeover):.1f} s (slowest of {len(takeover)} chunks)")
        status = wait_status(conn, bid, timeout=180)
        completed_cut_off = status == "completed"
        frozen = {k: v for k, v in conn.hgetall(f"{key}:results").items()}
        frozen_record = conn.hgetall(key)
        fabric.restore(0)
        restored_at = time.monotonic()
        down_s = restored_at - cut_at
        progress(f"3:   batch {status} with namespace 0 cut off; cable back after {down_s:.1f} s")
        quiet_s = _wait_quiet(conn, victim, dead, timeout=150)
        after = workers.metrics(0)
        takers = [workers.metrics(i) for i in range(1, count)]
        changed = sum(1 for k, v in conn.hgetall(f"{key}:results").items() if frozen.get(k) != v)
        record_changed = sorted(_text(k) for k, v in conn.hgetall(key).items()
                                if frozen_record.get(k) != v and k not in (b"spent_pico",))
        report = _check(conn, bid, n)
        events = cast(list[tuple[bytes, dict[bytes, bytes]]], conn.xrange(f"{key}:events"))
        commits = Counter(fields[b"custom_id"] for _, fields in events if fields.get(b"type") == b"request")
        stats, repeated = svc.stats(), svc.repeated()
    sends = {int(k): v for k, v in stats["repeats"]["by_sends"].items()}
    in_flight = sum_metric(before, "otb_upstream_calls_in_flight")
    victim_ip = fabric.address(0)
    out = {
        "requests": n, "workers": count, "lease_ttl_s": ttl, "done_at_cut": done_at_cut,
        "victim_chunks_held": len(held), "victim_open_requests_in_held": open_in_held,
        "victim_calls_in_flight_at_cut": int(in_flight),
        "takeover_s_max": round(max(takeover), 1), "takeover_s": [round(t, 1) for t in takeover],
        "taken_over_by_janitors": int(sum(sum_metric(m, "otb_chunks_taken_over_total") for m in takers)),
        "completed_while_cut_off": completed_cut_off, "link_down_s": round(down_s, 1),
        "victim_quiet_after_s": round(quiet_s, 1), **report,
        "commit_events": sum(commits.values()), "ids_committed_twice": sum(1 for c in commits.values() if c > 1),
        "upstream_calls": stats["calls"], "requests_sent_twice": sends.get(2, 0),
        "requests_sent_more_than_twice": sum(v for k, v in sends.items() if k > 2), "max_sends": max(sends),
        "sent_by_victim_before_cut_then_by_takers": sum(
            1 for times in repeated if times[0][0] == victim_ip and times[0][1] < cut_at
            and any(who != victim_ip for who, _ in times[1:])),
        "victim_calls_after_link_back": sum(1 for times in repeated for who, at in times
                                            if who == victim_ip and at >= restored_at),
        "victim_late_commits_refused": int(sum_metric(after, "otb_requests_total", outcome="skipped")
                                           - sum_metric(before, "otb_requests_total", outcome="skipped")),
        "results_changed_after_link_back": changed, "counters_changed_after_link_back": record_changed,
        "extra_answers_billed": billed_beyond_cost(report),
    }
    progress(f"3:   {out['results']} results, {out['lost']} lost, {out['ids_committed_twice']} committed twice; "
             f"{out['requests_sent_twice']} sent upstream twice; {out['victim_late_commits_refused']} late commits "
             f"of namespace 0 refused, {changed} results changed")
    return out


def billed_beyond_cost(report: dict[str, Any]) -> str:
    """What the provider billed beyond the committed costs: answers that came back for requests sent twice."""
    return format(Decimal(report["spent_usd"]) - Decimal(report["cost_usd"]), "f")


def _open_requests(conn: redis.Redis, bid: str, jobs: list[str]) -> int:
    """Requests of these chunk jobs without a result yet."""
    ids = [cid for job in jobs for cid in Job.fetch(job, connection=conn, serializer=JSONSerializer).args[1]]
    return sum(1 for got in conn.hmget(f"otb:batch:{bid}:results", ids) if got is None) if ids else 0


def _wait_quiet(conn: redis.Redis, victim: WorkerProcess, dead: list[int], timeout: float) -> float:
    """Seconds until the cut-off worker has caught up: no work horse, no chunk held, for a second running."""
    since = time.monotonic()
    quiet_from: float | None = None
    while time.monotonic() - since < timeout:
        busy = child_pids(victim.proc.pid) or chunks_held_by(conn, dead)
        if busy:
            quiet_from = None
        elif quiet_from is None:
            quiet_from = time.monotonic()
        elif time.monotonic() - quiet_from >= 1.0:
            return quiet_from - since
        time.sleep(0.1)
    raise RuntimeError(f"part 3: the cut-off worker was still busy {timeout:.0f} s after its link came back")


# -- the run -----------------------------------------------------------------------------------
PARTS = {1: ("rate_limited", part_rate_limited), 2: ("latency_bound", part_latency_bound), 3: ("cut_link", part_cut_link)}


def checks(parts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every figure with a target or a must: value, target, met."""
    out: dict[str, dict[str, Any]] = {}

    def check(name: str, value: Any, target: str, met: bool) -> None:
        out[name] = {"value": value, "target": target, "met": bool(met)}

    if "rate_limited" in parts:
        p = parts["rate_limited"]
        for phase in p["phases"]:
            check(f"share_of_limit_{phase['workers']}_workers", phase["share_of_limit"],
                  f">= {TARGETS['share_of_limit']:g}", phase["share_of_limit"] >= TARGETS["share_of_limit"])
        check("share_429", p["share_429"], f"< {TARGETS['share_429']:g}", p["share_429"] < TARGETS["share_429"])
    if "cut_link" in parts:
        p = parts["cut_link"]
        check("takeover_s", p["takeover_s_max"], f"< {TARGETS['takeover_s']:g}", p["takeover_s_max"] < TARGETS["takeover_s"])
        check("lost", p["lost"], "0", p["lost"] == 0)
        check("committed_twice", p["ids_committed_twice"], "0",
              p["ids_committed_twice"] == 0 and p["commit_events"] == p["requests"])
        check("counters_equal_results", p["counts_match"], "true", p["counts_match"])
        check("max_sends_per_request", p["max_sends"], "<= 2", p["max_sends"] <= 2)
        check("sent_twice_only_what_it_held", p["requests_sent_twice"], f"<= {p['victim_open_requests_in_held']}",
              p["requests_sent_twice"] <= p["victim_open_requests_in_held"])
        check("victim_calls_after_link_back", p["victim_calls_after_link_back"], "0",
              p["victim_calls_after_link_back"] == 0)
        check("results_changed_after_link_back", p["results_changed_after_link_back"], "0",
              p["results_changed_after_link_back"] == 0 and not p["counters_changed_after_link_back"])
    return out


def render(report: dict[str, Any]) -> str:
    parts, lines = report["parts"], []
    lines += [f"opentoken-batch past one machine (network namespaces)  {report['date']}  code {report['code']}",
              f"{report['cpus']} CPUs, load average {report['loadavg_start']} -> {report['loadavg_end']} "
              f"(a shared machine: other work runs beside this), {report['elapsed_s']} s"
              + (" (--quick)" if report["quick"] else ""), ""]
    rows: list[tuple[str, str, str, str]] = []
    verdict = {k: ("met" if c["met"] else "MISSED") for k, c in report["checks"].items()}
    if "rate_limited" in parts:
        p = parts["rate_limited"]
        for ph in p["phases"]:
            name = f"share_of_limit_{ph['workers']}_workers"
            rows.append((f"1 limit {p['rpm']} RPM, {ph['workers']} namespace(s)",
                         f"{ph['req_per_s']} req/s = {ph['share_of_limit']:.1%} of the limit over {ph['window_s']} s "
                         f"(by namespace {ph['by_namespace']})", "≥ 90%", verdict[name]))
        rows.append(("1 answered 429, whole run", f"{p['calls_429']} of {p['calls']} = {p['share_429']:.2%}", "< 1%",
                     verdict["share_429"]))
    if "latency_bound" in parts:
        p = parts["latency_bound"]
        for r in p["runs"]:
            rows.append((f"2 {p['latency_ms']:g} ms, no limit, {r['workers']} × concurrency {p['concurrency']}",
                         f"{r['req_per_s']} req/s ({r['req_per_s_per_worker']}/worker); Redis "
                         f"{r['redis_cpu_ms_per_req'] * 1000:.0f} µs CPU/req, {r['redis_commands_per_req']} cmds/req; "
                         f"workers {r['worker_cpu_ms_per_req']} ms CPU/req; machine {r['machine_cores_busy']} cores busy",
                         "", ""))
        c = p["ceiling"]
        rows.append(("2 ceiling: one Redis core", f"≈ {c['redis_core_req_per_s']:,} req/s "
                     f"(≈ {c['redis_core_commands_per_s']:,} commands/s) ≈ {c['workers_per_redis_core']} workers "
                     f"of {c['one_worker_req_per_s']} req/s", "", ""))
    if "cut_link" in parts:
        p = parts["cut_link"]
        rows += [
            (f"3 cut 1 of {p['workers']} namespaces mid-chunk", f"{p['victim_chunks_held']} chunks held "
             f"({p['victim_open_requests_in_held']} requests open); taken over after {p['takeover_s_max']} s "
             f"(OTB_LEASE_TTL={p['lease_ttl_s']})", "< 30 s", verdict["takeover_s"]),
            ("3 results", f"{p['results']} of {p['requests']}: {p['lost']} lost, {p['ids_committed_twice']} committed "
             f"twice, counters = result lines: {p['counts_match']}", "0, 0, true",
             "met" if all(report["checks"][k]["met"] for k in ("lost", "committed_twice", "counters_equal_results"))
             else "MISSED"),
            ("3 sent upstream twice", f"{p['requests_sent_twice']} requests ({p['upstream_calls']} calls), of the "
             f"{p['victim_open_requests_in_held']} open in its chunks at the cut: "
             f"{p['sent_by_victim_before_cut_then_by_takers']} in flight then and run again by the others, "
             f"{p['victim_calls_after_link_back']} sent again by the cut-off worker after its link came back; "
             f"billed beyond cost ${p['extra_answers_billed']}", "≤ 2 sends each, only those",
             "met" if report["checks"]["max_sends_per_request"]["met"]
             and report["checks"]["sent_twice_only_what_it_held"]["met"] else "MISSED"),
            ("3 link back", f"{p['victim_late_commits_refused']} late commits refused; "
             f"{p['results_changed_after_link_back']} results changed; "
             f"{p['victim_calls_after_link_back']} requests sent again by the cut-off worker", "0 changed, 0 sent",
             "met" if verdict["results_changed_after_link_back"] == verdict["victim_calls_after_link_back"] == "met"
             else "MISSED"),
        ]
    width = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    lines.append(" | ".join(h.ljust(w) for h, w in zip(("part", "figure", "target", "verdict"), width)))
    lines.append("-+-".join("-" * w for w in width))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    return "\n".join(lines) + "\n"


def part_numbers(text: str) -> list[int]:
    """`--only 1,3`: the parts to run, in order."""
    numbers = sorted({int(x) for x in text.split(",") if x.strip().isdigit()})
    if not numbers or not set(numbers) <= set(PARTS) or len(numbers) != len([x for x in text.split(",") if x.strip()]):
        raise argparse.ArgumentTypeError(f"part numbers among {sorted(PARTS)}, such as 1,3")
    return numbers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=part_numbers, default=sorted(PARTS), help="comma-separated part numbers (default all)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run; part 3 as tests/e2e runs it)")
    ap.add_argument("--lease-ttl", type=int, help="part 3's OTB_LEASE_TTL (default: the worker's default; 3 with --quick)")
    ap.add_argument("--json", action="store_true", help="one JSON object with every figure on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, JSONL files)")
    args = ap.parse_args()
    why = unavailable()
    if why:
        print(f"bench.netns: {why}", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else Sizes()
    if args.lease_ttl:
        sizes = replace(sizes, lease_ttl=args.lease_ttl)
    work = Path(tempfile.mkdtemp(prefix="otb-netns-"))
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "code": code_version(), "cpus": os.cpu_count(), "loadavg_start": load_average(),
                              "quick": args.quick, "sizes": asdict(sizes), "parts": {}}
    started, ok = time.monotonic(), False
    count = max([*sizes.rate_workers, *sizes.scale_workers, sizes.cut_workers])
    try:
        with terminated_cleanly(), Fabric(count) as fabric:
            report["stale_removed"] = fabric.stale_removed
            for number in args.only:
                name, part = PARTS[number]
                report["parts"][name] = part(fabric, work, sizes)
            ok = True
        report["leftover_namespaces"] = fabric.leftovers()
    finally:
        end_run(report, work, started, ok=ok, keep=args.keep, say=progress)
    report["checks"] = checks(report["parts"])
    if report["leftover_namespaces"]:
        report["checks"]["cleaned_up"] = {"value": report["leftover_namespaces"], "target": "none", "met": False}
    progress(f"done in {report['elapsed_s']} s")
    print(json.dumps(report) if args.json else render(report), end="\n" if args.json else "")
    return 0 if all(c["met"] for c in report["checks"].values()) else 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    sys.exit(main())
