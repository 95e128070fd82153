"""Chaos run: a mixed batch against a faulty emulator while workers are SIGKILLed and Redis restarts.

    .venv/bin/python -m bench.chaos --requests 2000 --kills 6 --redis-restarts 2

Everything is real: redis-server with AOF, `otb emulator` with random 5xx/529/429 and marker faults,
`otb worker` processes (killed with their work horses), the `otb submit` CLI. At the end it checks
that every request has exactly one result, that the counters and cost totals match the results,
and prints the figures (add --json for one machine-readable line).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from bench.harness import ROOT, RedisServer, WorkerProcess, chunks_held_by, free_port, otb, wait_taken_over, worker_env
from worker.keys import Keys

FAST = {"OTB_LEASE_TTL": "3", "OTB_CHUNK_SIZE": "25", "OTB_CONCURRENCY": "16", "OTB_STOP_GRACE": "5",
        "OTB_MAX_ATTEMPTS": "6"}
MODELS = ["google/gemini-3-flash", "anthropic/claude-haiku-5-5", "anthropic/claude-sonnet-5-5", "google/gemini-3.8-flash"]


def batch(n: int, rng: random.Random) -> list[dict]:
    lines = []
    for i in range(n):
        fault = rng.random()
        text = f"chaos question {i}"
        if fault < 0.01:
            text += " #emu:fail=400"  # a request the provider refuses: must end errored, once
        elif fault < 0.02:
            text += " #emu:fail-first=2:503"  # transient: must end succeeded
        if i % 10 == 9:
            lines.append({"custom_id": f"e{i}", "model": "google/gemini-embedding-001", "input": [text, text + "!"]})
        else:
            lines.append({"custom_id": f"c{i}", "model": MODELS[i % len(MODELS)],
                          "messages": [{"role": "user", "content": text}], "max_tokens": 64})
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--redis-restarts", type=int, default=2)
    ap.add_argument("--latency-ms", type=float, default=150)
    ap.add_argument("--error-rate", type=float, default=0.03)
    ap.add_argument("--rate-429", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="otb-chaos-"))
    server = RedisServer(work, appendonly=True)
    emu_port = free_port()
    emu = subprocess.Popen([sys.executable, "-m", "producer.cli", "emulator", "--port", str(emu_port),
                            "--latency-ms", str(args.latency_ms), "--jitter-ms", str(args.latency_ms / 2),
                            "--error-rate", str(args.error_rate), "--rate-429", str(args.rate_429),
                            "--retry-after", "0.2", "--seed", str(args.seed)],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emu_url = f"http://127.0.0.1:{emu_port}"
    _wait_http(emu_url + "/_emulator/stats")
    env = worker_env(server.url, emu_url, **FAST)
    workers: list[WorkerProcess] = []
    try:
        src = work / "batch.jsonl"
        src.write_text("".join(json.dumps(line) + "\n" for line in batch(args.requests, rng)))
        started = time.monotonic()
        sub = otb(["submit", str(src), "--json"], env)
        if sub.returncode != 0:
            raise SystemExit(sub.stderr.decode())
        bid = json.loads(sub.stdout)["id"]
        workers = [WorkerProcess(env, log=work / f"worker{i}.log") for i in range(args.workers)]
        conn = redis.Redis.from_url(server.url)
        kills, mid_chunk, restarts, recoveries = 0, 0, 0, []
        events = sorted([("kill", rng.uniform(1.5, 3.0) * (k + 1)) for k in range(args.kills)]
                        + [("redis", rng.uniform(2.0, 4.0) * (r + 1) + 1) for r in range(args.redis_restarts)],
                        key=lambda e: e[1])
        for kind, at in events:
            _sleep_until(started + at)
            if _final(conn, bid):
                break
            if kind == "kill":
                victim = rng.randrange(len(workers))
                dead = workers[victim].session_pids()
                held = chunks_held_by(conn, dead)
                workers[victim].kill_all()
                kills += 1
                mid_chunk += bool(held)
                killed_at = time.monotonic()
                workers[victim] = WorkerProcess(env, log=work / f"worker{victim}.log")
                for job_id in held:
                    recoveries.append(wait_taken_over(conn, job_id, dead, killed_at))
            else:
                server.restart(pause=1.0)
                restarts += 1
        status = _wait_final(conn, bid, started + args.timeout)
        elapsed = time.monotonic() - started
        report = _check(conn, bid, args.requests)
        stats = httpx.get(emu_url + "/_emulator/stats").json()
        faults = sum(n for code, n in stats["by_status"].items() if code != "200")
        summary = {"requests": args.requests, "workers": args.workers, "kills": kills, "kills_mid_chunk": mid_chunk,
                   "redis_restarts": restarts,
                   "upstream_calls": stats["calls"], "faults_injected": faults, **report,
                   "recovery_s_max": round(max(recoveries), 1) if recoveries else None,
                   "chunks_recovered": len(recoveries), "status": status, "elapsed_s": round(elapsed, 1)}
        print(json.dumps(summary) if args.json else "\n".join(f"{k:>18}  {v}" for k, v in summary.items()))
        if report["lost"]:
            print(_diagnose(conn, bid, work), file=sys.stderr)
        return 0 if report["lost"] == 0 and report["duplicates"] == 0 and report["counts_match"] else 1
    finally:
        for w in workers:
            w.stop(timeout=5)
        emu.terminate()
        server.stop()


def _check(conn: redis.Redis, bid: str, n: int) -> dict:
    ids = [i.decode() for i in conn.lrange(f"otb:batch:{bid}:ids", 0, -1)]
    raw = conn.hgetall(f"otb:batch:{bid}:results")
    lines = {k.decode(): json.loads(v) for k, v in raw.items()}
    record = {k.decode(): v.decode() for k, v in conn.hgetall(f"otb:batch:{bid}").items()}
    outcomes: dict[str, int] = {}
    for line in lines.values():
        o = line["meta"]["outcome"]
        outcomes[o] = outcomes.get(o, 0) + 1
    cost = sum((Decimal(line["cost"]["total"]) for line in lines.values()), Decimal(0))
    stored = sum(int(record.get(f"cost_{b}_pico", 0)) for b in ("input", "cache_read", "cache_write", "output"))
    counts_match = all(int(record.get(o, 0)) == outcomes.get(o, 0) for o in ("succeeded", "errored", "canceled", "expired"))
    return {"results": len(lines), "lost": len(set(ids) - set(lines)), "duplicates": len(ids) - len(set(ids)),
            "succeeded": outcomes.get("succeeded", 0), "errored": outcomes.get("errored", 0),
            "counts_match": counts_match and cost == Decimal(stored) / Decimal(10**12) and len(ids) == n,
            "cost_usd": format(cost, "f"), "spent_usd": format(Decimal(int(record.get("spent_pico", 0))) / Decimal(10**12), "f")}


def _diagnose(conn: redis.Redis, bid: str, work: Path) -> str:
    """Where the requests without a result are stuck: their chunk jobs' RQ state, lease and claim."""
    keys = Keys("otb")
    ids = {i.decode() for i in conn.lrange(keys.ids(bid), 0, -1)}
    lost = ids - {k.decode() for k in conn.hkeys(keys.results(bid))}
    queues = [Queue(name, connection=conn, serializer=JSONSerializer) for name in ("otb", "otb:interactive")]
    started = {q.name: set(StartedJobRegistry(queue=q).get_job_ids(cleanup=False)) for q in queues}
    queued = {q.name: set(q.get_job_ids()) for q in queues}
    out = [f"lost: {len(lost)} requests (worker and Redis logs in {work}); record {conn.hgetall(keys.batch(bid))}"]
    for raw in sorted(conn.smembers(keys.jobs(bid))):
        job_id = raw.decode()
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            out.append(f"job {job_id}: gone")
            continue
        stuck = sorted(lost & set(job.args[1]))
        if not stuck:
            continue
        out.append(f"job {job_id}: {len(stuck)} lost {stuck[:3]} status={job.get_status()} origin={job.origin} "
                   f"enqueued={job.enqueued_at} started={job.started_at} ended={job.ended_at} worker={job.worker_name} "
                   f"lease={conn.get(keys.lease(job_id))!r} claimed={conn.hget(keys.claimed, job_id)!r} "
                   f"started_in={[q for q, s in started.items() if job_id in s]} "
                   f"queued_in={[q for q, s in queued.items() if job_id in s]} ttl={conn.ttl(job.key)}")
    return "\n".join(out)


def _final(conn: redis.Redis, bid: str) -> bool:
    try:
        return conn.hget(f"otb:batch:{bid}", "status") in (b"completed", b"cancelled", b"expired")
    except redis.ConnectionError:
        return False


def _wait_final(conn: redis.Redis, bid: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        if _final(conn, bid):
            return conn.hget(f"otb:batch:{bid}", "status").decode()
        time.sleep(0.2)
    return "timed out"


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def _wait_http(url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


if __name__ == "__main__":
    sys.exit(main())
