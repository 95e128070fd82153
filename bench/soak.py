"""Soak: one long-running `otb worker` through many requests; its memory and throughput must stay flat.

    .venv/bin/python -m bench.soak --requests 100000          # about 3 minutes on 2 cores
    .venv/bin/python -m bench.soak --requests 10000 --json    # a quick look

Everything is real and on loopback: a private redis-server, `otb emulator` (latency 0 by default, so
the worker's own cost per request is what is measured), one `otb worker` and its work horse. The
requests are submitted first, in batches, then the worker runs them all: one work horse keeps claiming
chunk after chunk, so a per-request leak adds up in that one process. Each window of `--window`
requests gives its throughput and the RSS of the worker and its horse at its end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, worker_env
from bench.throughput import chat_lines, child_pids, rss_bytes, services, stop_session
from producer.client import Client
from worker.registry import load_registry
from worker.settings import Settings

MB = 1024 * 1024


def submit_all(client: Client, total: int, per_batch: int) -> list[str]:
    """The requests as batches of `per_batch`, all queued before the worker starts."""
    return [client.submit(chat_lines(min(per_batch, total - start), prefix=f"s{start}-"))
            for start in range(0, total, per_batch)]


def finished(conn: Any, batches: list[str]) -> int:
    with conn.pipeline(transaction=False) as pipe:
        for bid in batches:
            pipe.hmget(f"otb:batch:{bid}", "succeeded", "errored")
        return sum(int(s or 0) + int(e or 0) for s, e in pipe.execute())


def soak(total: int, window: int, per_batch: int, latency_ms: float, concurrency: int, timeout: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="otb-soak-"))
    with services(work, "soak", latency_ms) as (server, emu):
        assert emu is not None
        settings = Settings(redis_url=server.url)
        client = Client(server.client(), settings, load_registry(settings.registry_path))
        batches = submit_all(client, total, per_batch)
        env = worker_env(server.url, emu.url, OTB_CONCURRENCY=str(concurrency))
        with open(work / "worker.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "worker"], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        windows: list[dict[str, Any]] = []
        try:
            started = last_t = time.monotonic()
            last_done, mark, horse_rss, horses = 0, window, 0, []
            while last_done < total and time.monotonic() - started < timeout:
                time.sleep(0.2)
                if child_pids(proc.pid):  # the horse's last size before it exits at the very end
                    horses = child_pids(proc.pid)
                    horse_rss = sum(rss_bytes(h) for h in horses) or horse_rss
                done = finished(client.conn, batches)
                if done < mark and done < total:
                    continue
                now = time.monotonic()
                windows.append({"requests": done, "req_per_s": round((done - last_done) / (now - last_t), 1),
                                "worker_rss_mb": round(rss_bytes(proc.pid) / MB, 1),
                                "horse_rss_mb": round(horse_rss / MB, 1), "horses": horses})
                last_done, last_t, mark = done, now, (done // window + 1) * window
        finally:
            stop_session(proc)
        calls = emu.stats()["calls"]
    return {"requests": total, "window": window, "latency_ms": latency_ms, "concurrency": concurrency,
            "upstream_calls": calls, "windows": windows, **verdict(windows)}


def verdict(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth from the second window (warmed up) to the last, in memory and in throughput."""
    if len(windows) < 3:
        return {}
    first, last = windows[1], windows[-1]
    grown = last["horse_rss_mb"] - first["horse_rss_mb"]
    steady = [w["req_per_s"] for w in windows[1:-1]] or [first["req_per_s"]]
    return {"horse_rss_growth_mb": round(grown, 1),
            "bytes_per_request": round(grown * MB / max(last["requests"] - first["requests"], 1), 1),
            "throughput_first_last": [steady[0], steady[-1]],
            "throughput_ratio_last_first": round(steady[-1] / steady[0], 2) if steady[0] else None}


def render(report: dict[str, Any]) -> str:
    rows = [f"{'requests':>9} {'req/s':>8} {'horse MB':>9} {'worker MB':>10}"]
    rows += [f"{w['requests']:>9} {w['req_per_s']:>8} {w['horse_rss_mb']:>9} {w['worker_rss_mb']:>10}" for w in report["windows"]]
    if "horse_rss_growth_mb" in report:
        rows.append(f"horse RSS grew {report['horse_rss_growth_mb']} MB ({report['bytes_per_request']} bytes/request); "
                    f"throughput {report['throughput_first_last'][0]} -> {report['throughput_first_last'][1]} req/s "
                    f"(x{report['throughput_ratio_last_first']}); {report['upstream_calls']} upstream calls")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=10_000, help="requests per measured window")
    ap.add_argument("--batch", type=int, default=10_000, help="requests per submitted batch")
    ap.add_argument("--latency-ms", type=float, default=0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = soak(args.requests, args.window, args.batch, args.latency_ms, args.concurrency, args.timeout)
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
