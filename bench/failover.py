"""Failover run: a batch on a Sentinel-managed Redis whose master is SIGKILLed mid-batch.

    .venv/bin/python -m bench.failover --requests 2000
    .venv/bin/python -m bench.failover --requests 2000 --wait-replicas 1    # WAIT 1 after each commit

Real processes: a master, a replica and three `redis-server --sentinel`, `otb emulator` (no faults),
`otb worker` processes and the `otb submit` CLI, all on `redis+sentinel://`. At the kill it records
how far the replica lagged behind the master (bytes of replication stream not yet copied); at the
end it checks one result per request and the counters, and counts the upstream calls beyond one per
request: each is a request whose committed result died with the old master and was run (and paid)
again. `--wait-replicas` sets OTB_REDIS_WAIT_REPLICAS for the workers, to price what WAIT buys.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.chaos import _check, _wait_final, _wait_http
from bench.harness import ROOT, SentinelTopology, WorkerProcess, free_port, otb, worker_env
from worker.connection import connect


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--latency-ms", type=float, default=200)
    ap.add_argument("--kill-at", type=float, default=0.4, help="share of the requests done when the master dies")
    ap.add_argument("--wait-replicas", type=int, default=0)
    ap.add_argument("--wait-ms", type=int, default=100)
    ap.add_argument("--replica-delay-ms", type=float, default=0, help="one-way delay on the replica's link")
    ap.add_argument("--lease-ttl", type=int, default=15)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otb-failover-"))
    topo = SentinelTopology(work, replica_delay_ms=args.replica_delay_ms,
                            failover_timeout_ms=600_000 if args.replica_delay_ms else 3000)
    emu_port = free_port()
    emu = subprocess.Popen([sys.executable, "-m", "producer.cli", "emulator", "--port", str(emu_port),
                            "--latency-ms", str(args.latency_ms), "--error-rate", "0", "--rate-429", "0"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emu_url = f"http://127.0.0.1:{emu_port}"
    _wait_http(emu_url + "/_emulator/stats")
    extra = {"OTB_REDIS_WAIT_REPLICAS": str(args.wait_replicas), "OTB_REDIS_WAIT_MS": str(args.wait_ms)}
    env = worker_env(topo.url, emu_url, OTB_LEASE_TTL=str(args.lease_ttl), **extra)
    workers: list[WorkerProcess] = []
    try:
        src = work / "batch.jsonl"
        src.write_text("".join(json.dumps({"custom_id": f"r{i}", "model": "google/gemini-3-flash",
                                           "messages": [{"role": "user", "content": f"failover {i}"}]}) + "\n"
                               for i in range(args.requests)))
        started = time.monotonic()
        sub = otb(["submit", str(src), "--json"], env)
        if sub.returncode != 0:
            raise SystemExit(sub.stderr.decode())
        bid = json.loads(sub.stdout)["id"]
        workers = [WorkerProcess(env, "--concurrency", str(args.concurrency), log=work / f"worker{i}.log")
                   for i in range(args.workers)]
        conn = connect(topo.url)
        kill = _kill_mid_batch(topo, conn, bid, int(args.requests * args.kill_at), started)
        resumed = time.monotonic()
        status = _wait_final(conn, bid, started + args.timeout)
        kill["req_per_s_after_failover"] = round((args.requests - kill["counted_on_new_master"])
                                                 / (time.monotonic() - resumed), 1)
        report = _check(conn, bid, args.requests)
        calls = httpx.get(emu_url + "/_emulator/stats").json()["calls"]
        summary = {"requests": args.requests, "wait_replicas": args.wait_replicas, "wait_ms": args.wait_ms,
                   "replica_delay_ms": args.replica_delay_ms, **kill,
                   "upstream_calls": calls, "paid_twice": calls - args.requests, **report,
                   "status": status, "elapsed_s": round(time.monotonic() - started, 1)}
        print(json.dumps(summary) if args.json else "\n".join(f"{k:>22}  {v}" for k, v in summary.items()))
        return 0 if report["lost"] == 0 and report["duplicates"] == 0 and report["counts_match"] else 1
    finally:
        for w in workers:
            w.stop(timeout=5)
        emu.terminate()
        topo.stop()


def _kill_mid_batch(topo: SentinelTopology, conn, bid: str, at: int, started: float) -> dict:  # type: ignore[no-untyped-def]
    """SIGKILL the master once `at` results are in; how far the replica lagged, how long until the
    Sentinels promoted it and until the next result landed."""
    key = f"otb:batch:{bid}"
    while int(conn.hget(key, "succeeded") or 0) < at:
        time.sleep(0.01)
    rate = at / (time.monotonic() - started)  # from the submit on
    master, replica = topo.master.client(), topo.replica.client()
    copied = replica.info("replication")["slave_repl_offset"]  # first: the lag read is never negative
    lag = max(0, master.info("replication")["master_repl_offset"] - copied)
    done = int(master.hget(key, "succeeded") or 0)
    topo.kill_master()
    killed = time.monotonic()
    promoted = topo.wait_promoted(timeout=60)
    survived = int(conn.hget(key, "succeeded") or 0)  # what the promoted replica had (first read after promotion)
    while int(conn.hget(key, "succeeded") or 0) <= survived:
        time.sleep(0.01)
    return {"req_per_s_before_kill": round(rate, 1), "done_at_kill": done, "replica_lag_bytes_at_kill": lag,
            "promoted_after_s": round(promoted, 2), "first_commit_after_s": round(time.monotonic() - killed, 2),
            "counted_on_new_master": survived}


if __name__ == "__main__":
    sys.exit(main())
