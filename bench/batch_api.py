"""The Batch API's own costs, through the real SDK against a real `otb serve` and redis-server.

    .venv/bin/python -m bench.batch_api                       # 100,000-line upload + create; 20,000-line run
    .venv/bin/python -m bench.batch_api --lines 20000 --run 0 # the create alone

1. create: upload a JSONL file of `--lines` chat requests (about 200 bytes each) and create a batch
   from it: seconds for each, the server's peak RSS (VmHWM), Redis memory before and after.
2. finalize (`--run N`, with one `otb worker` and the in-process emulator at 0 ms): a batch of N
   requests run to `completed`: seconds from the engine's end to the batch being final (the output
   file written), the server's peak RSS, and the output file's size.

Every process started here is stopped at the end. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from bench.harness import RedisServer, ServerProcess, WorkerProcess, otb, real_clock_env, worker_env


def lines(n: int, tag: str) -> bytes:
    body = '{"custom_id": "%s-%d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": ' \
           '"anthropic/claude-haiku-5-5", "max_tokens": 20, "messages": [{"role": "user", "content": "Say hi %d"}]}}\n'
    return "".join(body % (tag, i, i) for i in range(n)).encode()


def used_memory(redis: RedisServer) -> int:
    return int(redis.client().info("memory")["used_memory"])


def create_run(client: openai.OpenAI, redis: RedisServer, server: ServerProcess, n: int) -> dict[str, Any]:
    data = lines(n, "c")
    before = used_memory(redis)
    t0 = time.monotonic()
    file_id = client.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="batch").id
    t1 = time.monotonic()
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    t2 = time.monotonic()
    assert batch.status == "in_progress", batch
    client.batches.cancel(batch.id)  # no worker here: its requests end batch_cancelled at once
    return {"lines": n, "bytes": len(data), "upload_s": round(t1 - t0, 2), "create_s": round(t2 - t1, 2),
            "server_peak_rss_mb": round(server.peak_rss_mb(), 1),
            "redis_used_mb_added": round((used_memory(redis) - before) / 2**20, 1)}


def finalize_run(client: openai.OpenAI, redis: RedisServer, server: ServerProcess, n: int) -> dict[str, Any]:
    file_id = client.files.create(file=("run.jsonl", io.BytesIO(lines(n, "r"))), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    conn = redis.client()
    while conn.hget(f"otb:batch:{batch.id}", "status") != b"completed":
        time.sleep(0.05)
    ended = time.monotonic()
    while (got := client.batches.retrieve(batch.id)).status != "completed":
        time.sleep(0.05)
    final = time.monotonic()
    out = client.files.retrieve(got.output_file_id or "")
    return {"requests": n, "engine_end_to_final_s": round(final - ended, 2), "output_mb": round(out.bytes / 2**20, 1),
            "server_peak_rss_mb": round(server.peak_rss_mb(), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--run", type=int, default=20_000, help="requests run to completion (0: skip)")
    args = parser.parse_args(argv)
    from worker.emulator import EmulatorConfig, start_background

    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        env = {**real_clock_env(), "REDIS_URL": redis.url, "PYTHONUNBUFFERED": "1"}
        server = worker = emulator = None
        try:
            key = json.loads(otb(["keys", "create", "bench", "--json"], env).stdout)["key"]
            server = ServerProcess(env, "--no-access-log", log=Path(tmp) / "serve.log")
            client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=600)
            result: dict[str, Any] = {"create": create_run(client, redis, server, args.lines)}
            if args.run:
                emulator = start_background(EmulatorConfig())
                worker = WorkerProcess(worker_env(redis.url, emulator.url))
                result["finalize"] = finalize_run(client, redis, server, args.run)
            print(json.dumps(result))
        finally:
            for proc in (worker, server):
                if proc is not None:
                    proc.stop()
            if emulator is not None:
                emulator.stop()
            redis.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
