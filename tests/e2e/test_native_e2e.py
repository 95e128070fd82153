"""The native route end to end: a real redis-server, real `otb worker` processes, the CLI and the
emulator's Message Batches and Batch Mode over HTTP.

Results of a native batch equal those of the same lines in real time apart from the route, the tier
and the price; a worker killed between the create and its record leaves one paid provider batch; a
stalled provider batch gives way to real time at the window's margin; expired, failed, unknown (404)
and cancelled provider batches end every line once. Polls are fast here (OTB_NATIVE_POLL_INTERVAL).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import ROOT, otb, worker_env

pytestmark = pytest.mark.e2e

CLAUDE = "anthropic/claude-haiku-5-5"
GEMINI = "google/gemini-3-flash"
FAST = {"OTB_NATIVE_POLL_INTERVAL": "0.2"}


def prices(model: str, tier: str | None = None) -> dict[str, Decimal]:
    raw = json.loads((ROOT / "registry.json").read_text())
    pricing = next(m for m in raw["models"] if m["id"] == model)["pricing"]
    listed = pricing[tier] if tier else pricing
    return {k: Decimal(str(v)) for k, v in listed.items() if k in ("input", "output")}


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def chat(cid: str, model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"custom_id": cid, "model": model, "max_tokens": 60, "messages": [{"role": "user", "content": text}],
            **extra}


def stats(emulator: Any) -> Counter[str]:
    return Counter(httpx.get(f"{emulator.url}/_emulator/stats").json()["by_path"])


def submit(env: dict[str, str], src: Path, *args: str, timeout: float = 180) -> dict[str, Any]:
    done = otb(["submit", str(src), "--wait", "--json", *args], env, timeout=timeout)
    assert done.returncode == 0, done.stderr.decode()
    status: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return status


def results(env: dict[str, str], bid: str) -> dict[str, dict[str, Any]]:
    out = otb(["results", bid], env).stdout.decode().splitlines()
    return {r["custom_id"]: r for r in map(json.loads, out)}


def comparable(line: dict[str, Any]) -> dict[str, Any]:
    """A result without what differs between runs and routes: ids, times, route, tier, price."""
    body = dict(line["response"]["body"])
    body.pop("id", None), body.pop("created", None)
    meta = {k: v for k, v in line["meta"].items() if k in ("model", "billed_model", "outcome", "usage", "tags")}
    return {"custom_id": line["custom_id"], "body": body, "meta": meta}


def by_hand(usage: dict[str, int], p: dict[str, Decimal]) -> Decimal:
    return (usage["input_tokens"] * p["input"] + usage["output_tokens"] * p["output"]) / Decimal(1_000_000)


def test_anthropic_native_equals_realtime_at_half_price(redis_server, emulator, real_redis, spawn_worker,
                                                        tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, **FAST)
    lines = [chat(cid, CLAUDE, f"question {i}") for i, cid in enumerate(["plain", "with space", "ünïcode/ü", "x" * 80])]
    src = write(tmp_path / "claude.jsonl", lines)
    spawn_worker(env)
    realtime = submit(env, src, "--mode", "realtime")
    before = stats(emulator)
    native = submit(env, src, "--mode", "native")
    calls = stats(emulator) - before
    assert native["request_counts"]["succeeded"] == 4 and native["status"] == "completed"
    assert calls["messages.batches.create"] == 1 and calls.get("messages", 0) == 0, calls
    assert native["succeeded_by_route"] == {"realtime": 0, "flex": 0, "native": 4}

    got, want = results(env, native["id"]), results(env, realtime["id"])
    assert [comparable(got[c]) for c in sorted(got)] == [comparable(want[c]) for c in sorted(want)]
    half, full = prices(CLAUDE, "batch"), prices(CLAUDE)
    for line in got.values():
        meta = line["meta"]
        assert (meta["route"], meta["service_tier"]) == ("native", "batch")
        assert meta["native_batch"].startswith("msgbatch_")
        assert Decimal(line["cost"]["total"]) == by_hand(meta["usage"], half)
        assert Decimal(meta["saved"]) == by_hand(meta["usage"], full) - Decimal(line["cost"]["total"])
    assert Decimal(native["cost"]["total"]) * 2 == Decimal(realtime["cost"]["total"])
