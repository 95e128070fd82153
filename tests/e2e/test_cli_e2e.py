"""The CLI as a new user meets it: `otb demo`, `otb run`, `otb emulator`, stdin submission, keyless logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal

import httpx
import pytest

from ..conftest import ROOT, free_port, otb, worker_env

pytestmark = pytest.mark.e2e


def embedded_env() -> dict[str, str]:
    env = worker_env("unused", "unused")
    for name in ("REDIS_URL", "OTB_ANTHROPIC_BASE_URL", "OTB_GOOGLE_BASE_URL", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        env.pop(name)
    return env


def test_demo_runs_on_embedded_defaults():
    proc = otb(["demo"], embedded_env())
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "ERROR model_not_found" in out
    assert "google/gemini-3.5-flash -> google/gemini-3.6-flash" in out  # re-routed id billed as what ran
    assert "requests  9 total, 8 succeeded, 1 errored" in out


def test_run_writes_results_that_add_up_to_the_reported_total(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"custom_id": f"r{i}", "model": m, "messages": [{"role": "user", "content": f"q{i}"}]})
                             for i, m in enumerate(["google/gemini-3-flash", "anthropic/claude-haiku-4-5"] * 3)) + "\n")
    out = tmp_path / "out.jsonl"
    proc = otb(["run", str(src), "-o", str(out), "--emulator"], embedded_env())
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [ln["custom_id"] for ln in lines] == [f"r{i}" for i in range(6)]
    total = sum(Decimal(ln["cost"]["total"]) for ln in lines)
    assert f"cost      ${total}" in proc.stdout.decode()


def test_run_without_keys_fails_each_request_naming_the_variable(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "q"}]}) + "\n")
    env = embedded_env()
    env["OTB_GOOGLE_BASE_URL"] = "http://127.0.0.1:9"  # never reached: the key check comes first
    proc = otb(["run", str(src)], env)
    assert proc.returncode == 2  # the batch ran, and a request errored
    assert "missing_api_key x1" in proc.stdout.decode()


def test_commands_that_need_a_shared_redis_say_so():
    proc = otb(["status", "batch_x"], embedded_env())
    assert proc.returncode == 1
    assert "REDIS_URL is not set" in proc.stderr.decode()


def test_emulator_command_serves_both_wire_formats():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "emulator", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/_emulator/stats")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        msg = httpx.post(url + "/v1/messages", headers={"x-api-key": "k", "anthropic-version": "2026-10-21"},
                         json={"model": "claude-haiku-5-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
        assert msg.status_code == 200 and msg.json()["type"] == "message"
        gen = httpx.post(url + "/v1beta/models/gemini-3-flash-preview:generateContent", headers={"x-goog-api-key": "k"},
                         json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        assert gen.status_code == 200 and "usageMetadata" in gen.json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_submit_from_stdin_and_worker_logs_carry_no_keys_or_prompts(redis_server, emulator, real_redis):
    env = worker_env(redis_server.url, emulator.url)
    line = {"custom_id": "s1", "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "PRIVATE-PROMPT"}]}
    sub = otb(["submit", "-", "--json"], env, input=(json.dumps(line) + "\n").encode())
    assert sub.returncode == 0, sub.stderr.decode()
    bid = json.loads(sub.stdout)["id"]
    work = otb(["-v", "worker", "--burst"], env)  # -v: RQ's line per job, to prove even those carry no secret
    logs = work.stdout.decode() + work.stderr.decode()
    assert work.returncode == 0 and "Job OK" in logs
    for secret in ("SECRET-KEY", "PRIVATE-PROMPT"):
        assert secret not in logs
    status = json.loads(otb(["status", bid, "--json"], env).stdout)
    assert status["request_counts"]["succeeded"] == 1


def test_a_directory_is_refused_as_one_and_a_pipe_is_read(tmp_path):
    """`otb estimate DIR` said "no such file"; `<(...)` and /dev/stdin (not regular files) were refused the same."""
    line = b'{"custom_id":"a","model":"google/gemini-3-flash","messages":[{"role":"user","content":"hi"}]}\n'
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTB_", "REDIS_URL"))}
    done = otb(["estimate", str(tmp_path)], env)
    assert done.returncode == 1 and done.stderr.decode().strip() == f"Error: {tmp_path}: is a directory, not a batch file"
    done = otb(["estimate", "/dev/stdin"], env, input=line)
    assert done.returncode == 0 and "total" in done.stdout.decode(), done.stderr.decode()
    fifo = tmp_path / "lines"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(line,))
    writer.start()
    done = otb(["estimate", str(fifo)], env)
    writer.join(timeout=10)
    assert done.returncode == 0 and "total" in done.stdout.decode(), done.stderr.decode()


def test_a_report_of_a_batch_that_does_not_exist_says_so(redis_server, emulator):
    """It printed an all-zero table and exited 0: a mistyped id read as a $0 batch."""
    done = otb(["report", "--batch", "batch_nope"], worker_env(redis_server.url, emulator.url))
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().strip() == "Error: batch 'batch_nope' not found (wrong id, or its records expired)"


def test_commands_that_never_reach_redis_run_with_a_malformed_redis_url(tmp_path):
    """`otb models` and `otb estimate` stopped at a REDIS_URL meant for the other commands."""
    src = tmp_path / "one.jsonl"
    src.write_text('{"custom_id":"a","model":"google/gemini-3-flash","messages":[{"role":"user","content":"hi"}]}\n')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTB_")}, "REDIS_URL": "127.0.0.1:6379"}
    for args in (["models"], ["estimate", str(src)]):
        done = otb(args, env)
        assert done.returncode == 0, (args, done.stderr.decode())
    done = otb(["status", "batch_x"], env)
    assert done.returncode == 1 and done.stderr.decode().startswith("Error: REDIS_URL must start with redis://")
