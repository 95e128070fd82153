"""Native-route benchmark: one 10,000-request batch through the providers' batch APIs, against the
same batch in real time, on the emulator.

    .venv/bin/python -m bench.native                # 10,000 requests (half Claude, half Gemini)
    .venv/bin/python -m bench.native --requests 2000 --json
    .venv/bin/python -m bench.native --embeddings   # every third request a Gemini embeddings line (2 inputs)

Measured: the upstream HTTP calls the native run made (the emulator's own counts, by endpoint;
target: a few dozen), the worker's CPU per request (parent and work horses, from /proc; target
<= 0.3 ms), and that every result equals the real-time run's apart from route, tier and price
(ids and timestamps aside). Everything is real and on loopback: a private redis-server, `otb emulator`
and one `otb worker` as subprocesses, the `otb submit` CLI. Every process started here is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rq import Queue

from bench.harness import RedisServer, WorkerProcess, otb, worker_env
from bench.throughput import Emulator, cpu_seconds, wait_no_children, wait_workers, write_jsonl

MODELS = ("anthropic/claude-haiku-5-5", "google/gemini-3-flash")
TARGETS = {"upstream_calls": 50, "cpu_ms_per_request": 0.3}
ENV = {"OTB_NATIVE_POLL_INTERVAL": "1", "OTB_CONCURRENCY": "200", "OTB_CHUNK_SIZE": "1000"}


def progress(message: str) -> None:
    print(f"[native] {message}", file=sys.stderr, flush=True)


EMBED = "google/gemini-embedding-001"


def lines_of(n: int, embeddings: bool = False) -> list[dict[str, Any]]:
    """Chat lines alternating Claude and Gemini; with `embeddings`, every third an embeddings line."""
    return [{"custom_id": f"req {i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": EMBED, "input": [f"item {i} title", f"item {i} text"]}} if embeddings and i % 3 == 2
            else {"custom_id": f"req {i}", "model": MODELS[i % 2], "max_tokens": 64,
                  "messages": [{"role": "user", "content": f"Summarise item {i} in one line."}]} for i in range(n)]


def run(server: RedisServer, emu: Emulator, work: Path, path: Path, mode: str, n: int) -> dict[str, Any]:
    """One `otb worker`, `otb submit FILE --mode MODE`; until the batch is completed: CPU, calls, results."""
    env = worker_env(server.url, emu.url, **ENV)
    conn = server.client()
    emu.reset()
    with contextlib.ExitStack() as cleanup:
        worker = WorkerProcess(env, log=work / f"{mode}-worker.log")
        cleanup.callback(worker.stop, timeout=10)
        wait_workers(conn, Queue("otb", connection=conn), 1, [worker.proc])
        cpu0 = cpu_seconds(worker.proc.pid)
        started = time.monotonic()
        sub = otb(["submit", str(path), "--json", "--mode", mode], env)
        if sub.returncode != 0:
            raise RuntimeError(f"otb submit failed: {sub.stderr.decode()[-2000:]}")
        bid = json.loads(sub.stdout)["id"]
        key = f"otb:batch:{bid}"
        while conn.hget(key, "status") != b"completed":
            if worker.proc.poll() is not None:
                raise RuntimeError(f"otb worker exited; see {work / (mode + '-worker.log')}")
            if time.monotonic() - started > 600:
                raise RuntimeError(f"batch {bid} not completed after 600 s: {conn.hgetall(key)}")
            time.sleep(0.05)
        wall = time.monotonic() - started
        wait_no_children(worker.proc.pid)
        cpu = cpu_seconds(worker.proc.pid) - cpu0
    by_path = Counter(emu.stats()["by_path"])
    out = otb(["results", bid], env, timeout=300)
    results = {r["custom_id"]: r for r in map(json.loads, out.stdout.decode().splitlines())}
    if len(results) != n or any(r["meta"]["outcome"] != "succeeded" for r in results.values()):
        raise RuntimeError(f"{mode}: expected {n} succeeded results, got {len(results)}")
    return {"batch": bid, "wall_s": wall, "cpu_s": cpu, "calls": sum(by_path.values()), "by_path": dict(by_path),
            "results": results, "cost": conn.hget(key, "cost_output_pico")}


def comparable(line: dict[str, Any]) -> dict[str, Any]:
    body = dict(line["response"]["body"])
    body.pop("id", None), body.pop("created", None)
    meta = {k: v for k, v in line["meta"].items() if k in ("model", "billed_model", "outcome", "usage", "tags")}
    return {"body": body, "meta": meta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--embeddings", action="store_true", help="Every third request a Gemini embeddings line.")
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="otb-native-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        server = RedisServer(work)
        stack.callback(server.stop)
        emu = Emulator(0, work / "emulator.log", ("--batch-delay", "2"))
        stack.callback(emu.stop)
        path = write_jsonl(work / "batch.jsonl", lines_of(n, args.embeddings))
        progress(f"{n} requests, native mode")
        native = run(server, emu, work, path, "native", n)
        progress(f"native: {native['wall_s']:.1f} s, {native['calls']} upstream calls; now the same in real time")
        realtime = run(server, emu, work, path, "realtime", n)
    differ = [cid for cid, line in native["results"].items() if comparable(line) != comparable(realtime["results"][cid])]
    routes = Counter((r["meta"]["route"], r["meta"]["service_tier"]) for r in native["results"].values())
    native_cost = sum(float(r["cost"]["total"]) for r in native["results"].values())
    realtime_cost = sum(float(r["cost"]["total"]) for r in realtime["results"].values())
    figures = {
        "requests": n,
        "native_upstream_calls": native["calls"], "native_calls_by_endpoint": native["by_path"],
        "native_cpu_ms_per_request": round(native["cpu_s"] * 1000 / n, 4),
        "realtime_upstream_calls": realtime["calls"],
        "realtime_cpu_ms_per_request": round(realtime["cpu_s"] * 1000 / n, 4),
        "native_wall_s": round(native["wall_s"], 1), "realtime_wall_s": round(realtime["wall_s"], 1),
        "results_differing_beyond_route_tier_price": len(differ),
        "native_routes": {f"{r}/{t}": c for (r, t), c in routes.items()},
        "cost_native_vs_realtime": round(native_cost / realtime_cost, 4) if realtime_cost else None,
        "targets": TARGETS,
    }
    figures["meets_targets"] = (figures["native_upstream_calls"] <= TARGETS["upstream_calls"]
                                and figures["native_cpu_ms_per_request"] <= TARGETS["cpu_ms_per_request"]
                                and not differ)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        print(f"{name:45} {value}")


if __name__ == "__main__":
    main()
