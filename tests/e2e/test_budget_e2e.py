"""--max-cost on real processes: a batch that fits is never stopped; one that does not ends close to its limit.

Each request below costs about $0.0002 on the emulator (24 output tokens of Sonnet 5.5 at $10 per 1M)
but may cost up to $0.00403 (its 400-token output limit): 300 of them cost $0.062, the probe's batch.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from ..conftest import otb, worker_env

pytestmark = pytest.mark.e2e

N = 300
WORST = Decimal("0.00403")


def run_with_budget(tmp_path: Path, redis_url: str, emulator, max_cost: str) -> tuple[dict, list[dict], int]:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    src = tmp_path / "b.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"q{i}", "model": "anthropic/claude-sonnet-5-5", "max_tokens": 400,
                                       "messages": [{"role": "user", "content": f"#emu:slow=200 budget {tag} {i}"}]}) + "\n"
                           for i in range(N)))
    env = worker_env(redis_url, emulator.url, OTB_CONCURRENCY="64", OTB_CHUNK_SIZE="100")
    sub = otb(["submit", str(src), "--json", "--max-cost", max_cost], env)
    assert sub.returncode == 0, sub.stderr.decode()
    bid = json.loads(sub.stdout)["id"]
    calls = emulator.stats()["calls"]
    assert otb(["worker", "--burst"], env, timeout=300).returncode == 0
    status = json.loads(otb(["status", bid, "--json"], env).stdout)
    lines = [json.loads(x) for x in otb(["results", bid], env).stdout.decode().splitlines()]
    return status, lines, emulator.stats()["calls"] - calls


def test_a_batch_that_fits_its_budget_is_never_stopped(tmp_path, redis_server, real_redis, emulator):
    status, lines, sent = run_with_budget(tmp_path, redis_server.url, emulator, "0.1")
    refused = sum(1 for ln in lines if (ln["error"] or {}).get("code") == "budget_exceeded")
    assert status["request_counts"]["succeeded"] == N, f"{refused} refused, ${status['spent']} spent"
    assert Decimal(status["spent"]) == Decimal(status["cost"]["total"]) and sent == N, (status["spent"], status["cost"])


def test_a_batch_over_its_budget_ends_close_to_the_limit_and_never_past_it(tmp_path, redis_server, real_redis,
                                                                            emulator):
    limit = Decimal("0.03")
    status, lines, sent = run_with_budget(tmp_path, redis_server.url, emulator, str(limit))
    spent = Decimal(status["spent"])
    counts = status["request_counts"]
    refused = [ln for ln in lines if (ln["error"] or {}).get("code") == "budget_exceeded"]
    assert counts["succeeded"] + len(refused) == N and sent == counts["succeeded"]  # refused ones never sent
    assert limit - WORST < spent <= limit, f"${spent} spent of ${limit}: {counts['succeeded']} sent, {len(refused)} refused"
