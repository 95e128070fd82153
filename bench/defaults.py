"""Fast at the defaults: opentoken-batch as a user runs it, beside raw aiohttp in the same run.

    .venv/bin/python -m bench.defaults                    # the whole bench (about 2 minutes on 2 cores)
    .venv/bin/python -m bench.defaults --sizes 2000       # one size
    .venv/bin/python -m bench.defaults --no-tuned --json  # the defaults only; one JSON object on stdout

Every figure of issue 12 part 1, from one command:
- ours: one `otb worker --concurrency 200` (nothing else set: chunk size, everything at its default),
  `otb submit FILE --wait` timed from process start to exit, against `otb emulator --latency-ms 200`;
- raw aiohttp at 200 in flight, the same wire requests, in this process, just before and just after
  ours (the ceiling is their mean, so a load change during the run hits both sides), on the standard
  event loop as a plain client runs; then once more on uvloop, the loop a work horse runs on by
  default (OTB_EVENT_LOOP), as a diagnostic row: what the same client costs on the horse's loop;
  and the worker's own HTTP client (worker/http.py) alone on uvloop, the same requests, as another:
  what the calls cost the horse before anything else it does;
- worker CPU per request: user+sys of the `otb worker` parent and its reaped work horses, from
  /proc/<pid>/stat, before the submit and after the last horse is gone;
- Redis commands per request: the sum of `calls` in INFO commandstats after minus before (commands
  that Lua scripts run count, as Redis counts them), with the busiest commands named;
- work horses forked and chunks claimed by a running horse; time to the first result;
- `otb --help` and `otb status BATCH`: wall time, median of 5, process start to exit.
A tuned run (OTB_CHUNK_SIZE=1000) follows, labelled as such, unless `--no-tuned`.

The project's modules are byte-compiled first (`compileall`), as an installed package is: with
PYTHONDONTWRITEBYTECODE set (as in some shells and CI) every `otb` process would otherwise compile
~60 modules from source, ~0.2 s of each start.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue

from bench.harness import ROOT, RedisServer, WorkerProcess, load_average, worker_env
from bench.throughput import (Emulator, chat_lines, check_emulator, code_version, cpu_seconds, progress,
                              run_bare, wait_no_children, wait_workers, write_jsonl)

CONCURRENCY = 200
LATENCY_MS = 200.0
TUNED = {"OTB_CHUNK_SIZE": "1000"}
TARGETS = {"ratio": 0.85, "cpu_ms_per_req": 0.4, "redis_commands_per_req": 3.0, "help_s": 0.15, "status_s": 0.3}


def commandstats(conn: redis.Redis) -> dict[str, int]:
    """Calls per command so far (scripts' own commands included, as Redis counts them)."""
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in conn.info("commandstats").items()}


def run_ours(server: RedisServer, emu: Emulator, work: Path, lines: list[dict[str, Any]], extra_env: dict[str, str],
             tag: str) -> dict[str, Any]:
    """One `otb worker --concurrency 200`; `otb submit FILE --wait --json` timed from start to exit."""
    n = len(lines)
    path = write_jsonl(work / f"{tag}.jsonl", lines)
    env = worker_env(server.url, emu.url, **extra_env)
    conn = server.client()
    conn.flushall()
    emu.reset()
    with contextlib.ExitStack() as cleanup:
        worker = WorkerProcess(env, "--concurrency", str(CONCURRENCY), log=work / f"{tag}-worker.log")
        cleanup.callback(worker.stop, timeout=10)
        wait_workers(conn, Queue("otb", connection=conn), 1, [worker.proc])
        time.sleep(0.5)  # the worker's start-up writes are not the batch's
        stats0 = commandstats(conn)
        cpu0, redis0, emu0 = cpu_seconds(worker.proc.pid), cpu_seconds(server.proc.pid), cpu_seconds(emu.proc.pid)
        wall0, started = time.time(), time.monotonic()
        sub = subprocess.run([sys.executable, "-m", "producer.cli", "submit", str(path), "--wait", "--json"], env=env,
                             cwd=ROOT, capture_output=True, timeout=600)
        wall = time.monotonic() - started
        if sub.returncode != 0:
            raise RuntimeError(f"otb submit --wait exited {sub.returncode}: {sub.stderr.decode()[-2000:]}")
        status = json.loads(sub.stdout)
        wait_no_children(worker.proc.pid)
        cpu = cpu_seconds(worker.proc.pid) - cpu0
        redis_cpu, emu_cpu = cpu_seconds(server.proc.pid) - redis0, cpu_seconds(emu.proc.pid) - emu0
        stats1 = commandstats(conn)
        horses = sum(int(conn.hget(key, "successful_job_count") or 0) + int(conn.hget(key, "failed_job_count") or 0)
                     for key in conn.smembers("rq:workers"))
    bid = status["id"]
    if status["status"] != "completed" or status["request_counts"]["succeeded"] != n:
        raise RuntimeError(f"ours: expected {n} succeeded, got {status['request_counts']}")
    check_emulator(emu, n, "ours")
    commands = {name: stats1.get(name, 0) - stats0.get(name, 0) for name in stats1}
    commands = {name: c for name, c in sorted(commands.items(), key=lambda kv: -kv[1]) if c > 0 and name != "info"}
    total = sum(commands.values())  # the bench's own INFO left out; it sends nothing else in the window
    first = conn.xrange(f"otb:batch:{bid}:events", count=1)
    first_ms = int(first[0][0].decode().split("-")[0]) if first else 0
    landed, ended = status["created_at"] - wall0, status["completed_at"] - wall0
    chunks = conn.scard(f"otb:batch:{bid}:jobs")
    return {"requests": n, "wall_s": round(wall, 3), "req_per_s": round(n / wall, 1),
            "cpu_ms_per_req": round(cpu * 1000 / n, 3), "redis_commands": total,
            "redis_commands_per_req": round(total / n, 2), "top_commands": commands,
            "redis_cpu_ms_per_req": round(redis_cpu * 1000 / n, 3), "emulator_cpu_ms_per_req": round(emu_cpu * 1000 / n, 3),
            "first_result_s": round(first_ms / 1000 - wall0, 3) if first_ms else None,
            "landed_s": round(landed, 3), "last_result_s": round(ended, 3),
            "chunks": chunks, "horses_forked": horses, "env": extra_env, "batch": bid, "status_env": env}


def time_cli(args: list[str], env: dict[str, str], runs: int = 5) -> float:
    """Median wall seconds of `python -m producer.cli ARGS`, process start to exit."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env, cwd=ROOT, capture_output=True,
                              timeout=60)
        times.append(time.monotonic() - started)
        if done.returncode != 0:
            raise RuntimeError(f"otb {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-1000:]}")
    return round(statistics.median(times), 3)


def compare(server: RedisServer, emu: Emulator, work: Path, n: int, extra_env: dict[str, str], tag: str) -> dict[str, Any]:
    """Raw aiohttp, ours, raw aiohttp again: the ratio against the mean of the two."""
    lines = chat_lines(n)
    label = "defaults" if not extra_env else " ".join(f"{k}={v}" for k, v in extra_env.items())
    progress(f"{tag}: raw aiohttp, {n} requests, {CONCURRENCY} in flight, latency {LATENCY_MS:g} ms")
    before = run_bare(emu, lines, CONCURRENCY, "aiohttp")
    progress(f"{tag}:   {before['req_per_s']} req/s, {before['cpu_ms_per_req']} CPU ms/req")
    progress(f"{tag}: opentoken-batch ({label}): otb worker --concurrency {CONCURRENCY}; otb submit --wait")
    ours = run_ours(server, emu, work, lines, extra_env, tag)
    progress(f"{tag}:   {ours['req_per_s']} req/s, {ours['cpu_ms_per_req']} CPU ms/req, "
             f"{ours['redis_commands_per_req']} Redis commands/req, {ours['horses_forked']} horses")
    after = run_bare(emu, lines, CONCURRENCY, "aiohttp")
    progress(f"{tag}: raw aiohttp again: {after['req_per_s']} req/s")
    on_uvloop = run_bare(emu, lines, CONCURRENCY, "aiohttp", loop="uvloop")  # a diagnostic: the horse runs on uvloop
    progress(f"{tag}: raw aiohttp on uvloop: {on_uvloop['req_per_s']} req/s, {on_uvloop['cpu_ms_per_req']} CPU ms/req")
    ours_http = run_bare(emu, lines, CONCURRENCY, "worker_http", loop="uvloop")  # a diagnostic: our client alone
    progress(f"{tag}: worker/http.py alone on uvloop: {ours_http['req_per_s']} req/s, {ours_http['cpu_ms_per_req']} CPU ms/req")
    ceiling = (before["req_per_s"] + after["req_per_s"]) / 2
    return {"requests": n, "config": label, "ours": ours, "aiohttp": [before, after], "aiohttp_uvloop": on_uvloop,
            "worker_http_uvloop": ours_http,
            "aiohttp_req_per_s": round(ceiling, 1),
            "aiohttp_cpu_ms_per_req": round((before["cpu_ms_per_req"] + after["cpu_ms_per_req"]) / 2, 3),
            "ratio": round(ours["req_per_s"] / ceiling, 3)}


def verdict(value: float, goal: float, *, at_least: bool) -> str:
    return "met" if (value >= goal if at_least else value <= goal) else "MISSED"


def render(report: dict[str, Any]) -> str:
    out = [f"opentoken-batch at the defaults  {report['date']}  code {report['code']}",
           f"{report['cpus']} CPUs, load average {report['loadavg_start']} -> {report['loadavg_end']}, "
           f"{report['elapsed_s']} s; emulator latency {LATENCY_MS:g} ms; one `otb worker --concurrency {CONCURRENCY}`;"
           " `otb submit FILE --wait` start to exit",
           "  (landed: the batch's created_at, 1st res / last: its first and last result, all in s from the submit's start;"
           " CPU ms: per request, worker parent + work horses)", ""]
    head = "  {:<30} {:>6} {:>7} {:>6} {:>6} {:>7} {:>8} {:>7} {:>7} {:>7} {:>6} {:>6}"
    out.append(head.format("run", "reqs", "wall s", "req/s", "x raw", "CPU ms", "cmds/req", "landed", "1st res",
                           "last", "horses", "chunks"))
    for run in report["runs"]:
        o = run["ours"]
        out.append(head.format(run["config"], run["requests"], f"{o['wall_s']:.2f}", f"{o['req_per_s']:.0f}",
                               f"{run['ratio']:.2f}", f"{o['cpu_ms_per_req']:.3f}", f"{o['redis_commands_per_req']:.2f}",
                               f"{o['landed_s']:.2f}",
                               f"{o['first_result_s']:.2f}" if o["first_result_s"] is not None else "-",
                               f"{o['last_result_s']:.2f}", o["horses_forked"], o["chunks"]))
        raw = run["aiohttp"]
        out.append(head.format("  raw aiohttp before, after", run["requests"],
                               f"{raw[0]['wall_s']:.2f},{raw[1]['wall_s']:.2f}",
                               f"{raw[0]['req_per_s']:.0f},{raw[1]['req_per_s']:.0f}", "",
                               f"{run['aiohttp_cpu_ms_per_req']:.3f}", "", "", "", "", "", ""))
        uv = run["aiohttp_uvloop"]
        out.append(head.format("  raw aiohttp on uvloop (diag.)", run["requests"], f"{uv['wall_s']:.2f}",
                               f"{uv['req_per_s']:.0f}", "", f"{uv['cpu_ms_per_req']:.3f}", "", "", "", "", "", ""))
        mine = run.get("worker_http_uvloop")
        if mine:
            out.append(head.format("  worker/http.py alone (diag.)", run["requests"], f"{mine['wall_s']:.2f}",
                                   f"{mine['req_per_s']:.0f}", "", f"{mine['cpu_ms_per_req']:.3f}", "", "", "", "", "",
                                   ""))
    out.append("")
    for run in report["runs"]:
        o = run["ours"]
        out.append(f"  {run['config']}, {run['requests']}: redis-server {o['redis_cpu_ms_per_req']} CPU ms/req, "
                   f"emulator {o['emulator_cpu_ms_per_req']}; busiest commands "
                   + ", ".join(f"{k} {v}" for k, v in list(o["top_commands"].items())[:6]))
    cli = report["cli"]
    out += ["", f"  otb --help {cli['help_s']:.3f} s, otb status {cli['status_s']:.3f} s (median of 5, start to exit)", "",
            "targets (the default runs):"]
    for name, check in report["checks"].items():
        out.append(f"  {name:<34} {check['value']:>8} {check['target']:>8}   {'met' if check['met'] else 'MISSED'}")
    return "\n".join(out) + "\n"


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for run in report["runs"]:
        if run["config"] != "defaults":
            continue
        n, o = run["requests"], run["ours"]
        out[f"ratio at {n}"] = {"value": run["ratio"], "target": f">= {TARGETS['ratio']}", "met": run["ratio"] >= TARGETS["ratio"]}
        out[f"CPU ms/request at {n}"] = {"value": o["cpu_ms_per_req"], "target": f"<= {TARGETS['cpu_ms_per_req']}",
                                         "met": o["cpu_ms_per_req"] <= TARGETS["cpu_ms_per_req"]}
        out[f"Redis commands/request at {n}"] = {"value": o["redis_commands_per_req"],
                                                 "target": f"<= {TARGETS['redis_commands_per_req']:g}",
                                                 "met": o["redis_commands_per_req"] <= TARGETS["redis_commands_per_req"]}
    cli = report["cli"]
    out["otb --help s"] = {"value": cli["help_s"], "target": f"<= {TARGETS['help_s']}", "met": cli["help_s"] <= TARGETS["help_s"]}
    out["otb status s"] = {"value": cli["status_s"], "target": f"<= {TARGETS['status_s']}",
                           "met": cli["status_s"] <= TARGETS["status_s"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,10000", help="requests per run, comma-separated (default 2000,10000)")
    ap.add_argument("--no-tuned", action="store_true", help=f"skip the tuned run ({TUNED})")
    ap.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, JSONL files)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    for package in ("worker", "producer"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="otb-defaults-"))
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "code": code_version(), "cpus": os.cpu_count(), "loadavg_start": load_average(),
                              "concurrency": CONCURRENCY, "latency_ms": LATENCY_MS, "runs": []}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        server = RedisServer(work)
        stack.callback(server.stop)
        emu = Emulator(LATENCY_MS, work / "emulator.log")
        stack.callback(emu.stop)
        for n in sizes:
            report["runs"].append(compare(server, emu, work, n, {}, f"defaults {n}"))
        env = report["runs"][-1]["ours"]["status_env"]
        progress("CLI: otb --help, otb status BATCH (median of 5 each)")
        report["cli"] = {"help_s": time_cli(["--help"], env),
                         "status_s": time_cli(["status", report["runs"][-1]["ours"]["batch"]], env)}
        if not args.no_tuned:
            n = max(sizes)
            report["runs"].append(compare(server, emu, work, n, TUNED, f"tuned {n}"))
        for run in report["runs"]:
            run["ours"].pop("status_env", None)
    report["loadavg_end"] = load_average()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["checks"] = checks(report)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report) if args.json else render(report), end="\n" if args.json else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
