"""Routes end to end: a real redis-server, a real `otb worker`, the CLI and the emulator.

`otb estimate --mode flex` shows the saving before anything is sent; `otb submit --mode flex` runs the
Gemini lines in flex (one shed and retried) at half the standard price, each result saying its route
and tier; `otb status` and `otb report --by route` show what was saved. Costs are worked by hand from
registry.json's flex and standard prices.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from ..conftest import ROOT, otb, worker_env

pytestmark = pytest.mark.e2e

GEMINI = "google/gemini-3-flash"
CLAUDE = "anthropic/claude-haiku-5-5"


def prices(model: str, tier: str | None = None) -> dict[str, Decimal]:
    raw = json.loads((ROOT / "registry.json").read_text())
    pricing = next(m for m in raw["models"] if m["id"] == model)["pricing"]
    listed = pricing[tier] if tier else pricing
    return {k: Decimal(str(v)) for k, v in listed.items() if k in ("input", "output", "cache_read")}


def by_hand(usage: dict[str, int], p: dict[str, Decimal]) -> Decimal:
    return (usage["input_tokens"] * p["input"] + usage["cache_read_tokens"] * p["cache_read"]
            + usage["output_tokens"] * p["output"]) / Decimal(1_000_000)


def write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_flex_mode_runs_gemini_at_half_price_and_every_view_says_so(redis_server, emulator, real_redis,
                                                                    spawn_worker, tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url)
    lines = [{"custom_id": f"g{i}", "model": GEMINI, "max_tokens": 100,
              "messages": [{"role": "user", "content": f"question {i}" + (" #emu:shed-first=1" if i == 0 else "")}]}
             for i in range(6)]
    src = write(tmp_path / "flex.jsonl", lines)

    est = json.loads(otb(["estimate", str(src), "--mode", "flex", "--json"], env).stdout)
    plain = json.loads(otb(["estimate", str(src), "--json"], env).stdout)
    assert [r["route"] for r in est["rows"]] == ["flex"] and plain["rows"][0]["route"] == "realtime"
    assert Decimal(est["total"]["cost_expected"]) * 2 == Decimal(plain["total"]["cost_expected"])
    assert Decimal(est["total"]["saved_expected"]) == Decimal(est["total"]["cost_expected"]) > 0
    shown = otb(["estimate", str(src), "--mode", "flex"], env).stdout.decode()
    assert f"mode flex: expected ${est['total']['cost_expected']}, saving ${est['total']['saved_expected']}" in shown

    spawn_worker(env)
    done = otb(["submit", str(src), "--mode", "flex", "--wait", "--json"], env, timeout=180)
    assert done.returncode == 0, done.stderr.decode()
    status = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert status["mode"] == "flex" and status["succeeded_by_route"] == {"realtime": 0, "flex": 6, "native": 0}

    results = [json.loads(x) for x in otb(["results", status["id"]], env).stdout.decode().splitlines()]
    flex_prices, standard = prices(GEMINI, "flex"), prices(GEMINI)
    assert flex_prices["input"] * 2 == standard["input"] and flex_prices["output"] * 2 == standard["output"]
    for line in results:
        meta = line["meta"]
        assert (meta["route"], meta["service_tier"]) == ("flex", "flex")
        assert Decimal(line["cost"]["total"]) == by_hand(meta["usage"], flex_prices)
        assert Decimal(meta["saved"]) == by_hand(meta["usage"], standard) - Decimal(line["cost"]["total"])
    assert next(r for r in results if r["custom_id"] == "g0")["meta"]["attempts"] == 2  # shed once, then flex
    total = sum(Decimal(r["cost"]["total"]) for r in results)
    saved = sum(Decimal(r["meta"]["saved"]) for r in results)
    assert Decimal(status["cost"]["total"]) == total == saved and Decimal(status["saved"]) == saved

    human = otb(["status", status["id"]], env).stdout.decode()
    assert "routes    mode flex: succeeded 6 flex" in human and f"saved     ${status['saved']} vs real time" in human
    report = json.loads(otb(["report", "--batch", status["id"], "--by", "route", "--format", "json"], env).stdout)
    assert [(r["group"]["route"], r["requests"], Decimal(r["saved"])) for r in report["rows"]] == [("flex", 6, saved)]
    table = otb(["report", "--batch", status["id"], "--by", "route"], env).stdout.decode()
    assert table.splitlines()[2].startswith("flex") and f"saved vs real time: ${report['total']['saved']}" in table


def test_auto_with_a_window_sends_claude_to_message_batches_and_gemini_to_flex(redis_server, emulator, real_redis,
                                                                               spawn_worker, tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, OTB_NATIVE_POLL_INTERVAL="0.2")
    src = write(tmp_path / "mixed.jsonl", [
        {"custom_id": "c", "model": CLAUDE, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
        {"custom_id": "g", "model": GEMINI, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}])

    refused = otb(["submit", str(src), "--mode", "flex"], env)
    assert refused.returncode == 1 and "--mode flex: anthropic/claude-haiku-5-5 has no flex tier" in refused.stderr.decode()

    worker = spawn_worker(env)
    try:
        done = otb(["submit", str(src), "--completion-window", "2h", "--wait", "--json"], env, timeout=180)
    except subprocess.TimeoutExpired:  # seen once in a full run, never alone: say what the worker saw
        status = otb(["status", "--json", *[b.decode() for b in real_redis.zrange("otb:batches", 0, -1)]], env)
        raise AssertionError(f"no end in 180 s; status: {status.stdout.decode()} {status.stderr.decode()}; "
                             f"worker log: {worker.stop(timeout=5)}") from None
    assert done.returncode == 0, done.stderr.decode()
    status = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert status["mode"] == "auto" and status["succeeded_by_route"] == {"realtime": 0, "flex": 1, "native": 1}
    results = {r["custom_id"]: r for r in map(json.loads, otb(["results", status["id"]], env).stdout.decode().splitlines())}
    claude = results["c"]["meta"]
    assert (claude["route"], claude["service_tier"]) == ("native", "batch")
    assert Decimal(results["c"]["cost"]["total"]) == by_hand(claude["usage"], prices(CLAUDE, "batch"))
    assert results["g"]["meta"]["route"] == "flex"
    human = otb(["status", status["id"]], env).stdout.decode()
    assert "mode auto: succeeded 1 flex, 1 native" in human, human
