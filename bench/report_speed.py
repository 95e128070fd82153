"""How fast is `otb report` over a large batch? Aggregates versus reading every result line.

    .venv/bin/python -m bench.report_speed --results 100000

Commits N synthetic results through the real commit script (so the aggregates are the ones
workers write) into a private redis-server, then times build_report (aggregates) against the
baseline a report without aggregates needs: reading and summing every result line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from bench.harness import RedisServer
from producer.report import Query, build_report, total_of_lines
from worker.schemas import Cost, Usage
from worker.results import success_line
from worker.settings import Settings
from worker.store import Store

MODELS = ["anthropic/claude-haiku-5-5", "google/gemini-3-flash", "anthropic/claude-sonnet-5-5", "google/gemini-3.8-flash"]


def fill(store: Store, bid: str, n: int) -> None:
    ids = [f"r{i}" for i in range(n)]
    pipe = store.conn.pipeline(transaction=False)
    store.write_requests(pipe, bid, [(cid, {"url": "/v1/chat/completions", "body": {}, "line": i}) for i, cid in enumerate(ids)])
    store.write_batch(pipe, bid, {"id": bid, "status": "in_progress", "created_at": time.time()}, [], ids)
    pipe.execute()
    for i, cid in enumerate(ids):
        usage = Usage(input_tokens=100 + i % 50, output_tokens=200 + i % 70)
        cost = Cost(input=Decimal("0.00001") * (i % 7 + 1), output=Decimal("0.0001"), total=Decimal("0.0001") + Decimal("0.00001") * (i % 7 + 1))
        model = MODELS[i % len(MODELS)]
        line = success_line(bid, cid, {"object": "chat.completion"}, request_id=None, usage=usage, cost=cost,
                            meta={"model": model, "billed_model": model, "tags": {"customer": f"c{i % 5}"}})
        store.commit(bid, cid, line, "succeeded")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = RedisServer(Path(tempfile.mkdtemp(prefix="otb-report-")))
    try:
        conn = server.client()
        store = Store.of(conn, Settings())
        t0 = time.perf_counter()
        fill(store, "batch_bench", args.results)
        filled = time.perf_counter() - t0
        timings = {}
        for name, query in {"by model": Query(group_by=["model"], batch="batch_bench"),
                            "by day and model": Query(group_by=["day", "model"]),
                            "by tag:customer": Query(group_by=["tag:customer"])}.items():
            t = time.perf_counter()
            report = build_report(conn, "otb", query)
            timings[name] = time.perf_counter() - t
        t = time.perf_counter()
        baseline_total = total_of_lines(store.iter_results("batch_bench", page=2000))
        baseline = time.perf_counter() - t
        assert Decimal(report["total"]["cost"]["total"]) == baseline_total, "aggregates disagree with the results"
        summary = {"results": args.results, "commit_rate_per_s": round(args.results / filled),
                   **{f"report_{k.replace(' ', '_')}_ms": round(v * 1000, 1) for k, v in timings.items()},
                   "baseline_read_all_results_ms": round(baseline * 1000, 1),
                   "speedup_vs_baseline": round(baseline / max(timings["by model"], 1e-9), 1),
                   "totals_agree": True}
        print(json.dumps(summary) if args.json else "\n".join(f"{k:>34}  {v}" for k, v in summary.items()))
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
