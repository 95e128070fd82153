"""What a new user hits, on real processes: a Redis that is not there, a batch no worker listens to,
a Redis restart under `--wait`, Ctrl-C, exit statuses, `| head`, a busy port, quiet workers, the web app."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from producer.client import Client

from ..conftest import ROOT, RedisServer, free_port, otb, worker_env

pytestmark = pytest.mark.e2e

GOOD = {"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}


def jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def texts(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


class Followed:
    """`otb ARGS` in the background, its stdout and stderr collected line by line as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "producer.cli", *args], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, i=into: i.extend(iter(s.readline, "")), daemon=True).start()

    def wait_for(self, check: Callable[[], object], limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while not check():
            assert self.proc.poll() is None or check(), f"exited {self.proc.returncode}: {self.out} {self.err}"
            assert time.monotonic() < deadline, f"not seen in {limit} s: {self.out} {self.err[-5:]}"
            time.sleep(0.1)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.err)

    def batch_id(self) -> str:
        self.wait_for(lambda: self.out)
        return self.out[0].strip()

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.proc.kill()


# -- Redis not there -----------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["status", "batch_x"], ["submit", "FILE"], ["worker", "--burst"], ["batches"],
                                  ["submit", "FILE", "--wait"]])
def test_a_command_says_at_once_that_redis_cannot_be_reached(tmp_path, args):
    src = jsonl(tmp_path / "in.jsonl", [GOOD])
    port = free_port()  # nothing listens there
    env = worker_env(f"redis://otb:hunter2@127.0.0.1:{port}/0", "http://127.0.0.1:9")
    proc = otb([str(src) if a == "FILE" else a for a in args], env, timeout=30)  # before: silent for 143 s
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.count("\n") == 1, texts(proc)
    assert err.startswith(f"Error: cannot reach Redis at redis://***@127.0.0.1:{port}/0: ") and "refused" in err
    assert "hunter2" not in texts(proc)


def test_the_python_api_says_at_once_that_redis_cannot_be_reached(monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot reach Redis at redis://127.0.0.1:"):
        Client.from_env()


# -- following a batch ---------------------------------------------------------------------------
def test_wait_says_no_worker_listens_then_redis_unreachable_then_finishes(tmp_path, emulator, spawn_worker):
    server = RedisServer(tmp_path, appendonly=True)  # keeps the batch across the restart
    try:
        env = worker_env(server.url, emulator.url)
        follow = Followed(["submit", str(jsonl(tmp_path / "in.jsonl", [GOOD] * 3)), "--wait"], env)
        follow.batch_id()
        follow.wait_for(lambda: follow.saw("no worker is listening on queue 'otb': start one with `otb worker`"))
        server.restart(pause=2.5)
        follow.wait_for(lambda: follow.saw("Redis unreachable, retrying ("), limit=10)
        spawn_worker(env)
        assert follow.finish() == 0, follow.err
        assert "3 succeeded, 0 errored" in "".join(follow.out)
    finally:
        server.stop()


def test_ctrl_c_during_wait_says_the_batch_goes_on(tmp_path, redis_server, real_redis, emulator):
    follow = Followed(["submit", str(jsonl(tmp_path / "in.jsonl", [GOOD])), "--wait"],
                      worker_env(redis_server.url, emulator.url))
    bid = follow.batch_id()
    follow.wait_for(lambda: follow.err)  # following: the first progress line is out
    follow.proc.send_signal(signal.SIGINT)
    assert follow.finish() == 130
    said = "".join(follow.err)
    assert "the batch goes on" in said and f"otb status {bid} --watch" in said and "Traceback" not in said
    assert real_redis.hget(f"otb:batch:{bid}", "status") == b"in_progress"


def test_wait_and_run_exit_2_when_a_request_errored(tmp_path, redis_server, real_redis, emulator, spawn_worker):
    env = worker_env(redis_server.url, emulator.url)
    spawn_worker(env)
    failing = {"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "#emu:fail=400"}]}
    src = jsonl(tmp_path / "in.jsonl", [GOOD, failing])
    waited = otb(["submit", str(src), "--wait"], env, timeout=60)
    assert waited.returncode == 2 and "1 succeeded, 1 errored" in waited.stdout.decode(), texts(waited)
    ok = otb(["submit", str(jsonl(tmp_path / "ok.jsonl", [GOOD])), "--wait"], env, timeout=60)
    assert ok.returncode == 0, texts(ok)


# -- everyday commands -----------------------------------------------------------------------------
def test_batches_lists_them_and_cancel_and_retry_speak_json(tmp_path, redis_server, real_redis, emulator):
    env = worker_env(redis_server.url, emulator.url)
    src = jsonl(tmp_path / "in.jsonl", [GOOD])
    first, second = (json.loads(otb(["submit", str(src), "--json"], env).stdout)["id"] for _ in range(2))
    listed = json.loads(otb(["batches", "--json"], env).stdout)
    assert [b["id"] for b in listed["data"]] == [second, first]
    table = otb(["batches", "--limit", "1"], env).stdout.decode()
    assert second in table and first not in table
    cancelled = json.loads(otb(["cancel", first, "--json"], env).stdout)
    assert cancelled["id"] == first and cancelled["status"].startswith("cancel")
    assert cancelled["object"] == "otb.batch_status"
    assert json.loads(otb(["retry", second, "--json"], env).stdout) == {"id": second, "retried": 0}


def test_results_into_head_is_quiet(tmp_path, redis_server, real_redis, emulator):
    env = worker_env(redis_server.url, emulator.url)
    bad = [{"custom_id": f"bad{i}", "model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]}
           for i in range(3000)]  # errored results at once, far more than a pipe holds
    sub = otb(["submit", str(jsonl(tmp_path / "in.jsonl", [GOOD, *bad])), "--keep-valid"], env)
    assert sub.returncode == 0 and sub.stderr.decode().count("\n") < 25  # the bad lines listed: 20, then a count
    bid = sub.stdout.decode().strip()
    proc = subprocess.run(f"{sys.executable} -m producer.cli results {bid} | head -n 1", shell=True, env=env,
                          cwd=ROOT, capture_output=True, timeout=60)
    assert json.loads(proc.stdout)["custom_id"] == "bad0"
    assert proc.stderr.decode() == ""


def test_the_emulator_on_a_busy_port_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = otb(["emulator", "--port", str(port)], worker_env("redis://127.0.0.1:1/0", "x"), timeout=30)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.count("\n") == 1, err
    assert f"port {port} on 127.0.0.1 is already in use" in err


def test_a_worker_logs_nothing_per_job_by_default(tmp_path, redis_server, real_redis, emulator):
    env = worker_env(redis_server.url, emulator.url)
    assert otb(["submit", str(jsonl(tmp_path / "in.jsonl", [GOOD] * 3))], env).returncode == 0
    work = otb(["worker", "--burst"], env, timeout=60)
    assert work.returncode == 0 and real_redis.llen("rq:queue:otb") == 0
    logs = texts(work).splitlines()
    assert logs[0].startswith("otb worker: queue 'otb' on redis://127.0.0.1:")
    assert not [line for line in logs[1:] if "Redis keeps nothing on disk" not in line], logs


# -- the web app ---------------------------------------------------------------------------------
def test_the_web_app_answers_bad_requests_with_one_clear_400(redis_server, real_redis, emulator):
    port = free_port()
    app = subprocess.Popen([sys.executable, "producer/examples/webapp.py", "--port", str(port)], cwd=ROOT,
                           env=worker_env(redis_server.url, emulator.url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert json.loads(app.stdout.readline()) == {"listening": port}
        url = f"http://127.0.0.1:{port}/ask"
        cases = [(b"not json", "the body must be JSON"), (b'{"customer": "acme"}', "'prompt' is required"),
                 (b'["a"]', "'prompt' is required"),
                 (b'{"prompt": "hi", "model": "openai/gpt-4o"}', 'model \\"openai/gpt-4o\\" not found')]
        for body, needle in cases:
            r = httpx.post(url, content=body, timeout=30)
            assert r.status_code == 400 and needle in r.text, (body, r.status_code, r.text)
            assert set(r.json()["error"]) >= {"message", "type", "code"}
    finally:
        app.terminate()
        app.wait(timeout=10)


def test_the_web_app_without_redis_url_says_so():
    env = worker_env("unused", "unused")
    env.pop("REDIS_URL")
    proc = subprocess.run([sys.executable, "producer/examples/webapp.py", "--port", str(free_port())], cwd=ROOT, env=env,
                          capture_output=True, timeout=30)
    assert proc.returncode == 1 and proc.stderr.decode().startswith("error: REDIS_URL is not set")


# -- the test harness itself -------------------------------------------------------------------------
def test_a_redis_server_that_never_answers_is_not_left_running(tmp_path, monkeypatch):
    from bench import harness

    started: list[subprocess.Popen] = []

    class Recorded(RedisServer):
        def _start(self, *args: object, **kwargs: object) -> None:
            try:
                super()._start(*args, **kwargs)
            finally:
                started.append(self.proc)

    monkeypatch.setattr(harness.time, "sleep", lambda _s: None)  # the 200 tries, without their pauses
    with pytest.raises(RuntimeError, match="did not"):
        Recorded(tmp_path, url_of=lambda _port: f"redis://127.0.0.1:{free_port()}/0")  # pings where nothing listens
    try:
        assert started[0].poll() is not None, "redis-server still running after its start-up timed out"
    finally:
        started[0].kill()
        started[0].wait()
