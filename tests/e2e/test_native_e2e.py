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


def submit(env: dict[str, str], src: Path, *args: str, timeout: float = 180, errored: bool = False) -> dict[str, Any]:
    """`otb submit --wait --json`: its final status (exit 2 when some line errored, as asked)."""
    done = otb(["submit", str(src), "--wait", "--json", *args], env, timeout=timeout)
    assert done.returncode == (2 if errored else 0), done.stderr.decode()
    status: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return status


def results(env: dict[str, str], bid: str) -> dict[str, dict[str, Any]]:
    out = otb(["results", bid], env).stdout.decode().splitlines()
    return {r["custom_id"]: r for r in map(json.loads, out)}


def comparable(line: dict[str, Any]) -> dict[str, Any]:
    """A result without what differs between runs and routes: ids, times, route, tier, price."""
    body = dict(line["response"]["body"])
    body.pop("id", None), body.pop("created", None)
    meta = {k: v for k, v in line["meta"].items()
            if k in ("model", "billed_model", "outcome", "usage", "tags", "dropped_params", "notes")}
    return {"custom_id": line["custom_id"], "body": body, "meta": meta}


def by_hand(usage: dict[str, int], p: dict[str, Decimal]) -> Decimal:
    return (usage["input_tokens"] * p["input"] + usage["output_tokens"] * p["output"]) / Decimal(1_000_000)


def test_anthropic_native_equals_realtime_at_half_price(redis_server, emulator, real_redis, spawn_worker,
                                                        tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, **FAST)
    lines = [chat(cid, CLAUDE, f"question {i}") for i, cid in enumerate(["plain", "with space", "ünïcode/ü", "x" * 80])]
    lines[1]["logit_bias"] = {"50256": -100}  # dropped on the way (--drop-unsupported-params), and said so
    src = write(tmp_path / "claude.jsonl", lines)
    spawn_worker(env)
    realtime = submit(env, src, "--mode", "realtime", "--drop-unsupported-params")
    before = stats(emulator)
    native = submit(env, src, "--mode", "native", "--drop-unsupported-params")
    calls = stats(emulator) - before
    assert native["request_counts"]["succeeded"] == 4 and native["status"] == "completed"
    assert calls["messages.batches.create"] == 1 and calls.get("messages", 0) == 0, calls
    assert native["succeeded_by_route"] == {"realtime": 0, "flex": 0, "native": 4}

    got, want = results(env, native["id"]), results(env, realtime["id"])
    assert [comparable(got[c]) for c in sorted(got)] == [comparable(want[c]) for c in sorted(want)]
    assert got["with space"]["meta"]["dropped_params"] == ["logit_bias"] and got["plain"]["meta"]["dropped_params"] == []
    half, full = prices(CLAUDE, "batch"), prices(CLAUDE)
    for line in got.values():
        meta = line["meta"]
        assert (meta["route"], meta["service_tier"]) == ("native", "batch")
        assert meta["native_batch"].startswith("msgbatch_")
        assert Decimal(line["cost"]["total"]) == by_hand(meta["usage"], half)
        assert Decimal(meta["saved"]) == by_hand(meta["usage"], full) - Decimal(line["cost"]["total"])
    assert Decimal(native["cost"]["total"]) * 2 == Decimal(realtime["cost"]["total"])
    [shown] = json.loads(otb(["status", native["id"], "--json"], env).stdout)["native"]
    assert shown["provider_batch"] == got["plain"]["meta"]["native_batch"] and shown["provider_status"] == "ended"
    assert shown["progress"]["succeeded"] == 4 and shown["requests"] == 4
    human = otb(["status", native["id"]], env).stdout.decode()
    assert f"native    anthropic {shown['provider_batch']}: 4 requests, ended (4 succeeded)" in human, human
    assert "routes    mode native: succeeded 4 native" in human


def wait_status(conn: Any, bid: str, wanted: tuple[str, ...] = ("completed", "cancelled", "expired"),
                limit: float = 90) -> str:
    """Poll the batch record until its status is one of `wanted` (a deadline only to stop a hang)."""
    deadline = time.monotonic() + limit
    while True:
        status = (conn.hget(f"otb:batch:{bid}", "status") or b"").decode()
        if status in wanted:
            return status
        assert time.monotonic() < deadline, f"batch {bid} stayed {status}"
        time.sleep(0.1)


def part(conn: Any, bid: str, n: int = 0) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in conn.hgetall(f"otb:native:{bid}:part:{n}").items()}


def wait_created(conn: Any, bid: str, n: int = 0) -> None:
    """Until the batch's part `n` has its provider batch (a deadline only to stop a hang)."""
    deadline = time.monotonic() + 30
    while part(conn, bid, n).get("state") != "created":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def submit_only(env: dict[str, str], src: Path, *args: str) -> str:
    done = otb(["submit", str(src), "--json", *args], env)
    assert done.returncode == 0, done.stderr.decode()
    return str(json.loads(done.stdout)["id"])


@pytest.mark.parametrize("how", ["worker exits after the create", "the create's answer is lost"])
def test_a_create_not_recorded_is_found_again_one_paid_batch(redis_server, emulator, real_redis, spawn_worker,
                                                            tmp_path: Path, how: str) -> None:
    env = worker_env(redis_server.url, emulator.url, OTB_LEASE_TTL="2", **FAST)
    marker = " #emu:batch-lost" if "lost" in how else ""
    src = write(tmp_path / "crash.jsonl", [chat(f"r{i}", CLAUDE, f"crash {i}{marker if i == 1 else ''}")
                                           for i in range(3)])
    before = stats(emulator)
    if "exits" in how:
        first = spawn_worker({**env, "OTB_NATIVE_FAULT": "exit-after-create"})
        bid = submit_only(env, src, "--mode", "native")
        assert first.proc.wait(timeout=60) == 3  # killed at exactly that point
        assert part(real_redis, bid)["state"] == "creating" and part(real_redis, bid)["provider_id"] == ""
        spawn_worker(env)
    else:
        spawn_worker(env)
        bid = submit_only(env, src, "--mode", "native")
    assert wait_status(real_redis, bid) == "completed"
    calls = stats(emulator) - before
    assert calls["messages.batches.create"] == 1, calls  # one paid batch, found again by listing
    assert calls["messages.batches.list"] >= 1
    got = results(env, bid)
    assert sorted(got) == ["r0", "r1", "r2"] and {r["meta"]["route"] for r in got.values()} == {"native"}
    assert {r["meta"]["native_batch"] for r in got.values()} == {part(real_redis, bid)["provider_id"]}


def test_gemini_native_file_mode_equals_realtime_at_half_price(redis_server, emulator, real_redis, spawn_worker,
                                                               tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, **FAST)
    lines = [chat(f"g {i}", GEMINI, f"gemini question {i}") for i in range(5)]
    src = write(tmp_path / "gemini.jsonl", lines)
    spawn_worker(env)
    realtime = submit(env, src, "--mode", "realtime")
    before = stats(emulator)
    native = submit(env, src, "--mode", "native")
    calls = stats(emulator) - before
    assert native["request_counts"]["succeeded"] == 5 and native["succeeded_by_route"]["native"] == 5
    assert calls["batchGenerateContent"] == 1 and calls["files.upload.start"] == 1 and calls["files.download"] == 1
    assert calls["files.delete"] == 2  # its input and output files, once imported
    assert calls.get("generateContent", 0) == 0, calls
    got, want = results(env, native["id"]), results(env, realtime["id"])
    assert [comparable(got[c]) for c in sorted(got)] == [comparable(want[c]) for c in sorted(want)]
    half = prices(GEMINI, "batch")
    for line in got.values():
        meta = line["meta"]
        assert (meta["route"], meta["service_tier"]) == ("native", "batch") and meta["native_batch"].startswith("batches/")
        assert Decimal(line["cost"]["total"]) == by_hand(meta["usage"], half)
    assert Decimal(native["cost"]["total"]) * 2 == Decimal(realtime["cost"]["total"])


def test_gemini_missing_key_and_errored_lines(redis_server, emulator, real_redis, spawn_worker, tmp_path: Path) -> None:
    """A key missing from the output is not committed from it: the line runs in real time; an errored
    line keeps its HTTP status and error body."""
    env = worker_env(redis_server.url, emulator.url, **FAST)
    src = write(tmp_path / "keys.jsonl", [chat("kept", GEMINI, "fine"), chat("lost", GEMINI, "gone #emu:drop-key"),
                                          chat("boom", GEMINI, "#emu:fail=500 boom")])
    spawn_worker(env)
    status = submit(env, src, "--mode", "native", errored=True)
    got = results(env, status["id"])
    assert got["kept"]["meta"]["route"] == "native"
    assert got["lost"]["meta"]["route"] == "realtime" and got["lost"]["meta"]["outcome"] == "succeeded"
    assert got["boom"]["meta"]["route"] == "native" and got["boom"]["meta"]["outcome"] == "errored"
    assert got["boom"]["response"]["status_code"] == 500 and got["boom"]["cost"]["total"] == "0"
    assert status["request_counts"] == {**status["request_counts"], "succeeded": 2, "errored": 1}
    again = otb(["retry", status["id"]], env)  # only the errored line runs again, native as its mode says
    assert again.returncode == 0, again.stderr.decode()
    assert wait_status(real_redis, status["id"]) == "completed"
    after = results(env, status["id"])
    assert routes_of(after) == {"kept": "native/succeeded", "lost": "realtime/succeeded", "boom": "native/errored"}
    assert after["boom"]["meta"]["native_batch"] != got["boom"]["meta"]["native_batch"]  # a provider batch of its own
    assert [p["requests"] for p in json.loads(otb(["status", status["id"], "--json"], env).stdout)["native"]] == [3, 1]
    assert after["kept"] == got["kept"]


def routes_of(got: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {cid: f'{r["meta"]["route"]}/{r["meta"]["outcome"]}' for cid, r in got.items()}


def test_a_stalled_batch_gives_way_to_real_time_at_the_margin_and_finishes_in_its_window(
        redis_server, emulator, real_redis, spawn_worker, tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, OTB_NATIVE_MARGIN="40%", **FAST)
    src = write(tmp_path / "stall.jsonl", [chat(f"s{i}", CLAUDE, f"stall {i}" + (" #emu:batch-stall=0.5" if i == 0 else ""))
                                           for i in range(4)])
    spawn_worker(env)
    before = stats(emulator)
    status = submit(env, src, "--mode", "native", "--completion-window", "10s")
    calls = stats(emulator) - before
    assert status["status"] == "completed" and status["request_counts"]["succeeded"] == 4
    assert status["completed_at"] < status["expires_at"]  # within its window, through the fallback
    got = results(env, status["id"])
    assert sorted(routes_of(got).values()) == ["native/succeeded"] * 2 + ["realtime/succeeded"] * 2
    assert calls["messages.batches.cancel"] == 1 and calls["messages.batches.create"] == 1
    fell = [r for r in got.values() if r["meta"]["route"] == "realtime"]
    assert all(r["meta"]["route_note"].startswith("sent in real time: its native batch") for r in fell)
    info = part(real_redis, status["id"])
    assert info["state"] == "done" and "margin" in info["note"]


@pytest.mark.parametrize("model, marker, word", [
    (CLAUDE, "#emu:batch-delay=1 #emu:batch-expire=0.5", "ended"),
    (GEMINI, "#emu:batch-delay=1 #emu:batch-fail", "failed"),
    (GEMINI, "#emu:batch-delay=1 #emu:batch-expire", "expired"),
    (CLAUDE, "#emu:batch-404=4", None),
])
def test_expired_failed_and_late_visible_batches_lose_no_line(redis_server, emulator, real_redis, spawn_worker,
                                                              tmp_path: Path, model: str, marker: str,
                                                              word: str | None) -> None:
    env = worker_env(redis_server.url, emulator.url, **FAST)
    src = write(tmp_path / "faults.jsonl", [chat(f"f{i}", model, f"fault {i}" + (f" {marker}" if i == 0 else ""))
                                            for i in range(4)])
    spawn_worker(env)
    status = submit(env, src, "--mode", "native")
    assert status["status"] == "completed" and status["request_counts"]["succeeded"] == 4
    got = routes_of(results(env, status["id"]))
    if word is None:  # 404s right after the create are waited out
        assert set(got.values()) == {"native/succeeded"}
    else:
        assert "realtime/succeeded" in got.values() and word in part(real_redis, status["id"])["note"].lower()
        if model == GEMINI:  # no results at all: everything again in real time
            assert set(got.values()) == {"realtime/succeeded"}


def test_cancel_cancels_the_provider_batch_and_ends_what_it_left(redis_server, emulator, real_redis, spawn_worker,
                                                                 tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, **FAST)
    src = write(tmp_path / "cancel.jsonl", [chat(f"c{i}", CLAUDE, f"cancel {i}" + (" #emu:batch-stall" if i == 0 else ""))
                                            for i in range(3)])
    spawn_worker(env)
    before = stats(emulator)
    bid = submit_only(env, src, "--mode", "native")
    wait_created(real_redis, bid)
    assert otb(["cancel", bid], env).returncode == 0
    assert wait_status(real_redis, bid) == "cancelled"
    calls = stats(emulator) - before
    assert calls["messages.batches.cancel"] == 1 and calls.get("messages", 0) == 0
    got = results(env, bid)
    assert {r["meta"]["outcome"] for r in got.values()} == {"canceled"}
    assert {r["error"]["code"] for r in got.values()} == {"batch_cancelled"}


def test_a_worker_without_the_key_ends_the_lines_with_the_reason(redis_server, emulator, real_redis, spawn_worker,
                                                                 tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, **FAST)
    keyless = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    src = write(tmp_path / "nokey.jsonl", [chat(f"k{i}", CLAUDE, f"key {i}") for i in range(2)])
    spawn_worker(keyless)
    status = submit(env, src, "--mode", "native", errored=True)
    got = results(env, status["id"])
    assert status["request_counts"]["errored"] == 2
    assert all("ANTHROPIC_API_KEY is not set" in json.dumps(r) for r in got.values())


def test_polling_survives_a_redis_restart_and_a_killed_worker(emulator, spawn_worker, tmp_path: Path) -> None:
    from bench.harness import RedisServer

    server = RedisServer(tmp_path, appendonly=True)
    try:
        conn = server.client()
        env = worker_env(server.url, emulator.url, OTB_LEASE_TTL="2", **FAST)
        src = write(tmp_path / "survive.jsonl", [chat(f"v{i}", CLAUDE, f"survive {i}" + (" #emu:batch-delay=4" if i == 0
                                                                                       else "")) for i in range(5)])
        first = spawn_worker(env)
        before = stats(emulator)
        bid = submit_only(env, src, "--mode", "native")
        wait_created(conn, bid)
        server.restart(pause=1)  # the worker rides it out; the state is on disk (appendonly)
        assert part(conn, bid)["state"] == "created"
        first.kill_all()  # and then it dies mid-poll: another worker takes the batch over
        spawn_worker(env)
        assert wait_status(conn, bid) == "completed"
        calls = stats(emulator) - before
        assert calls["messages.batches.create"] == 1 and calls.get("messages", 0) == 0
        got = results(env, bid)
        assert sorted(got) == [f"v{i}" for i in range(5)] and set(routes_of(got).values()) == {"native/succeeded"}
        events = [e for _, e in conn.xrange(f"otb:batch:{bid}:events") if e.get(b"type") == b"request"]
        assert len(events) == 5  # every line committed once
    finally:
        server.stop()


EMBED = "google/gemini-embedding-001"


def embed(cid: str, inputs: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
            "body": {"model": EMBED, "input": inputs, **extra}}


def test_gemini_native_embeddings_equal_realtime_at_the_batch_price(redis_server, emulator, real_redis, spawn_worker,
                                                                     tmp_path: Path) -> None:
    """Embedding lines (one input or many, dimensions, base64) go to asyncBatchEmbedContent in one job,
    one file line per input, joined back on their keys; usage is the inputs' tokenCount, exact."""
    env = worker_env(redis_server.url, emulator.url, **FAST)
    lines = [embed("one", "a single text"), embed("many", [f"text number {i}" for i in range(130)]),
             embed("small", ["x y z", "w"], dimensions=128), embed("b64", "packed", encoding_format="base64"),
             embed("bad", "#emu:fail=400 refused")]
    src = write(tmp_path / "embed.jsonl", lines)
    spawn_worker(env)
    realtime = submit(env, src, "--mode", "realtime", errored=True)
    before = stats(emulator)
    native = submit(env, src, "--mode", "native", errored=True)
    calls = stats(emulator) - before
    assert calls["asyncBatchEmbedContent"] == 1 and calls["files.upload.start"] == 1, calls
    assert calls.get("batchEmbedContents", 0) == 0 and calls.get("countTokens", 0) == 0, calls
    got, want = results(env, native["id"]), results(env, realtime["id"])
    assert native["request_counts"] == {**native["request_counts"], "succeeded": 4, "errored": 1}, routes_of(got)
    ok = sorted(c for c in got if c != "bad")
    assert [comparable(got[c]) for c in ok] == [comparable(want[c]) for c in ok], (routes_of(got), routes_of(want))
    assert len(got["many"]["response"]["body"]["data"]) == 130 and got["many"]["meta"]["usage"]["input_tokens"] > 0
    assert got["bad"]["meta"]["route"] == "native" and got["bad"]["response"]["status_code"] == 400
    half, full = prices(EMBED, "batch"), prices(EMBED)
    for cid in ok:
        meta, cost = got[cid]["meta"], Decimal(got[cid]["cost"]["total"])
        assert (meta["route"], meta["service_tier"]) == ("native", "batch") and meta["native_batch"].startswith("batches/")
        assert not meta["usage"].get("estimated")
        assert cost == by_hand(meta["usage"], half) and cost * 2 == Decimal(want[cid]["cost"]["total"])
        assert Decimal(meta["saved"]) == by_hand(meta["usage"], full) - cost
    [shown] = json.loads(otb(["status", native["id"], "--json"], env).stdout)["native"]
    assert shown["requests"] == 1 + 130 + 2 + 1 + 1  # one request per input text


def test_native_embeddings_fall_back_to_real_time_when_the_job_fails(redis_server, emulator, real_redis,
                                                                      spawn_worker, tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, **FAST)
    src = write(tmp_path / "embed-fail.jsonl", [embed("e0", ["first #emu:batch-delay=1 #emu:batch-fail", "second"]),
                                                embed("e1", "third")])
    spawn_worker(env)
    status = submit(env, src, "--mode", "native")
    got = results(env, status["id"])
    assert routes_of(got) == {"e0": "realtime/succeeded", "e1": "realtime/succeeded"}
    assert got["e0"]["meta"]["route_note"] == "sent in real time: its native batch did not take or answer it in time"
    assert "failed" in part(real_redis, status["id"])["note"]


def test_a_burst_worker_polls_open_native_batches_until_they_end(redis_server, emulator, real_redis, spawn_worker,
                                                                 tmp_path: Path) -> None:
    """`otb worker --burst` with an empty queue but open provider batches: it says so, polls them, runs
    what they hand back (a failed Gemini job's lines come back to the queue), and only then exits."""
    env = worker_env(redis_server.url, emulator.url, **FAST)
    src = write(tmp_path / "burst.jsonl", [chat("c0", CLAUDE, "slow #emu:batch-delay=2"), chat("c1", CLAUDE, "also"),
                                           chat("g0", GEMINI, "#emu:batch-delay=1 #emu:batch-fail"), chat("g1", GEMINI, "x")])
    bid = submit_only(env, src, "--mode", "native")
    worker = spawn_worker(env, "--burst")
    assert worker.proc.wait(timeout=120) == 0
    output = worker.stop()
    assert "burst: the queue is empty, but 1 batch(es) have native provider batches open" in output, output
    assert (real_redis.hget(f"otb:batch:{bid}", "status") or b"").decode() == "completed"
    got = routes_of(results(env, bid))
    assert got == {"c0": "native/succeeded", "c1": "native/succeeded", "g0": "realtime/succeeded",
                   "g1": "realtime/succeeded"}
    assert real_redis.zcard("otb:native:due") == 0


def test_retry_expired_reruns_cancelled_native_lines_in_a_new_provider_batch(redis_server, emulator, real_redis,
                                                                             spawn_worker, tmp_path: Path) -> None:
    """A native batch cancelled while its provider batch ran: every line ends canceled. `otb retry
    --expired` opens it again and sends them native again (its mode and window allow it): one new
    provider batch, each line answered once."""
    env = worker_env(redis_server.url, emulator.url, **FAST)
    src = write(tmp_path / "again.jsonl", [chat(f"a{i}", CLAUDE, f"again {i} #emu:batch-delay=6") for i in range(3)])
    spawn_worker(env)
    before = stats(emulator)
    bid = submit_only(env, src, "--mode", "native", "--completion-window", "2h")
    wait_created(real_redis, bid)
    assert otb(["cancel", bid], env).returncode == 0
    assert wait_status(real_redis, bid) == "cancelled"
    plain = otb(["retry", bid], env)
    assert plain.returncode == 1 and "otb retry --expired" in plain.stderr.decode()
    first = results(env, bid)
    cancelled = sorted(c for c, r in first.items() if r["meta"]["outcome"] == "canceled")
    assert cancelled and all(first[c]["meta"]["outcome"] == "succeeded" for c in first if c not in cancelled)
    done = otb(["retry", bid, "--expired", "--json"], env)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == {"id": bid, "retried": len(cancelled)}
    assert wait_status(real_redis, bid, ("completed",)) == "completed"
    calls = stats(emulator) - before
    assert calls["messages.batches.create"] == 2 and calls.get("messages", 0) == 0, calls
    got = results(env, bid)
    assert set(routes_of(got).values()) == {"native/succeeded"} and len(got) == 3
    assert {got[c]["meta"]["native_batch"] for c in cancelled} == {part(real_redis, bid, 1)["provider_id"]}
    assert all(got[c] == first[c] for c in first if c not in cancelled)  # what was answered is kept as it was
    assert int(part(real_redis, bid, 1)["sent"]) == len(cancelled)  # the new provider batch: those lines only
    status = json.loads(otb(["status", bid, "--json"], env).stdout)
    assert status["request_counts"] == {**status["request_counts"], "succeeded": 3, "canceled": 0}
    events = [e for _, e in real_redis.xrange(f"otb:batch:{bid}:events") if e.get(b"type") == b"request"]
    assert Counter(e[b"outcome"] for e in events) == {b"succeeded": 3, b"canceled": len(cancelled)}
    assert [p["state"] for p in status["native"]] == ["done", "done"]


def test_an_embeddings_job_created_but_not_recorded_is_found_by_its_display_name(redis_server, emulator, real_redis,
                                                                                 spawn_worker, tmp_path: Path) -> None:
    env = worker_env(redis_server.url, emulator.url, OTB_LEASE_TTL="2", **FAST)
    src = write(tmp_path / "embed-crash.jsonl", [embed(f"k{i}", [f"crash {i}", "twice"]) for i in range(3)])
    before = stats(emulator)
    first = spawn_worker({**env, "OTB_NATIVE_FAULT": "exit-after-create"})
    bid = submit_only(env, src, "--mode", "native")
    assert first.proc.wait(timeout=60) == 3  # killed between the create and its record
    assert part(real_redis, bid)["state"] == "creating" and part(real_redis, bid)["provider_id"] == ""
    spawn_worker(env)
    assert wait_status(real_redis, bid) == "completed"
    calls = stats(emulator) - before
    assert calls["asyncBatchEmbedContent"] == 1 and calls["batches.list"] >= 1, calls  # one paid job
    got = results(env, bid)
    assert set(routes_of(got).values()) == {"native/succeeded"} and len(got) == 3
    assert {r["meta"]["native_batch"] for r in got.values()} == {part(real_redis, bid)["provider_id"]}


def test_a_poller_that_lost_its_lease_creates_nothing(redis_server, emulator, real_redis, registry) -> None:  # type: ignore[no-untyped-def]
    """A poller stalled (or cut off from Redis) past its lease on a batch: another poller has the batch now.
    It stops before its next part, and before recording a create's intent if the lease lapsed while it
    spooled the lines, so a part's provider batch is never created twice (each would be paid)."""
    from producer.options import SubmitOptions
    from producer.submit import submit as submit_lines
    from worker.native.poller import Runner
    from worker.native.state import CREATED, PLANNED, native_state
    from worker.settings import Settings

    settings = Settings.from_env(worker_env(redis_server.url, emulator.url))
    lines = [json.dumps({"custom_id": f"n{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": CLAUDE, "max_tokens": 20, "messages": [{"role": "user", "content": f"q{i}"}]}}
                        ).encode() for i in range(3)]
    bid = submit_lines(real_redis, settings, registry, lines, SubmitOptions(mode="native", completion_window=86400)).batch_id
    state, before = native_state(real_redis, settings), stats(emulator)
    with httpx.Client(timeout=30) as client:
        runner = Runner(real_redis, settings, client)
        runner.advance(bid, lambda: False)  # lost before its first part: the plan is made, nothing is sent
        assert [p.state for p in state.parts(bid)] == [PLANNED]
        answers = iter([True, False])  # held at the part, lapsed while the lines were spooled
        runner.advance(bid, lambda: next(answers))
        assert [p.state for p in state.parts(bid)] == [PLANNED] and stats(emulator) == before
        runner.advance(bid)  # the poller that holds the batch creates its one provider batch
    assert [p.state for p in state.parts(bid)] == [CREATED]
    created = stats(emulator) - before
    assert created == Counter({"messages.batches.create": 1}), created
