"""REDIS_URL with a password, an ACL user and TLS (`rediss://`) through the real CLI, never echoing the password."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness import real_clock_env

from ..conftest import ROOT, RedisServer, otb, worker_env

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-pass"
ACL_PASSWORD = "acl-pass"
TLS_PASSWORD = "tls-s3cret"
MODELS = ["google/gemini-3-flash", "anthropic/claude-haiku-5-5", "google/gemini-3-flash"]


@pytest.fixture
def start_redis(tmp_path):  # type: ignore[no-untyped-def]
    """Private redis-servers with extra (auth / TLS) arguments, stopped after the test."""
    started: list[RedisServer] = []

    def start(extra: list[str], url_of, *, tls: bool = False) -> tuple[RedisServer, str]:  # type: ignore[no-untyped-def]
        server = RedisServer(tmp_path, extra=tuple(extra), tls=tls, url_of=url_of)
        started.append(server)
        return server, server.url

    yield start
    for server in started:
        server.stop()


def _texts(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


def run_batch(tmp_path: Path, env: dict[str, str], secret: str) -> None:
    """submit, drain with one `otb worker --burst`, check `otb status` and `otb results`; the secret is in no output."""
    src = tmp_path / "batch.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"r{i}", "model": m, "messages": [{"role": "user", "content": f"q{i}"}]})
                           + "\n" for i, m in enumerate(MODELS)))
    outputs = []
    sub = otb(["submit", str(src), "--json"], env, timeout=30)
    outputs.append(_texts(sub))
    assert sub.returncode == 0, _texts(sub)
    bid = json.loads(sub.stdout)["id"]

    worker = subprocess.run([sys.executable, "-m", "producer.cli", "worker", "--burst"], env=env, cwd=ROOT,
                            capture_output=True, timeout=30)
    outputs.append(_texts(worker))
    assert worker.returncode == 0, _texts(worker)
    assert "***@" in worker.stderr.decode() or "@" not in env["REDIS_URL"]  # the banner names Redis, password masked

    st = otb(["status", bid, "--json"], env, timeout=30)
    outputs.append(_texts(st))
    assert st.returncode == 0, _texts(st)
    status = json.loads(st.stdout)
    assert status["status"] == "completed"
    assert status["request_counts"]["total"] == 3 and status["request_counts"]["succeeded"] == 3

    res = otb(["results", bid], env, timeout=30)
    outputs.append(_texts(res))
    assert [json.loads(x)["custom_id"] for x in res.stdout.decode().splitlines()] == ["r0", "r1", "r2"]
    for text in outputs:
        assert secret not in text


def assert_refused(env: dict[str, str], secret: str, reason: str) -> None:
    """Exit 1 with one clear `Error: cannot reach Redis at <masked url>: <reason>`, no traceback, no password."""
    for args in (["status", "batch_x"], ["worker", "--burst"]):
        proc = otb(args, env, timeout=30)  # a refused login is never retried: it answers at once
        err = proc.stderr.decode()
        assert proc.returncode == 1, _texts(proc)
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith("Error: cannot reach Redis at ") and "://***@127.0.0.1:" in err, err
        assert reason in err, err
        assert secret not in _texts(proc)


def test_password_url(tmp_path, emulator, start_redis):
    _, url = start_redis(["--requirepass", PASSWORD], lambda p: f"redis://:{PASSWORD}@127.0.0.1:{p}/0")
    run_batch(tmp_path, worker_env(url, emulator.url), PASSWORD)
    assert_refused(worker_env(url.replace(PASSWORD, "wrong-pass-123"), emulator.url), "wrong-pass-123",
                   "invalid username-password pair")


def test_refused_login_fails_fast(tmp_path, emulator, start_redis):
    _, url = start_redis(["--requirepass", PASSWORD], lambda p: f"redis://:{PASSWORD}@127.0.0.1:{p}/0")
    urls = [url.replace(PASSWORD, "wrong-pass-123"), url.replace(f":{PASSWORD}@", "")]
    procs = [subprocess.Popen([sys.executable, "-m", "producer.cli", "status", "batch_x"], env=worker_env(u, emulator.url),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for u in urls]
    try:
        deadline = time.monotonic() + 5
        for proc in procs:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            assert proc.returncode == 1 and err.decode().startswith("Error: cannot reach Redis at "), err
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_acl_user_url(tmp_path, emulator, start_redis):
    _, url = start_redis(["--user", "default", "off", "--user", "otb", "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"],
                         lambda p: f"redis://otb:{ACL_PASSWORD}@127.0.0.1:{p}/0")
    run_batch(tmp_path, worker_env(url, emulator.url), ACL_PASSWORD)
    assert_refused(worker_env(url.replace(ACL_PASSWORD, "wrong-acl-456"), emulator.url), "wrong-acl-456",
                   "invalid username-password pair")


def _certs(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (CN and subjectAltName IP) signed by it."""
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = d / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "3650", "-subj", "/CN=otb-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "3650",
         "-extfile", ext],
    ):
        # on the real clock, like the processes that check the certificate (README, Testing: faketime)
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True, timeout=30, env=real_clock_env())
    return ca, cert, key


def test_tls_url(tmp_path, emulator, start_redis):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test CA")
    ca, cert, key = _certs(tmp_path)
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
           "--tls-auth-clients", "no", "--requirepass", TLS_PASSWORD]
    try:
        _, url = start_redis(tls, lambda p: f"rediss://:{TLS_PASSWORD}@127.0.0.1:{p}/0?ssl_ca_certs={ca}", tls=True)
    except RuntimeError as exc:
        if any(m in str(exc) for m in ("Bad directive", "not compiled", "not supported", "Missing implement")):
            pytest.skip(f"the installed redis-server was built without TLS support: {exc}")
        raise
    run_batch(tmp_path, worker_env(url, emulator.url), TLS_PASSWORD)
    # the same server without trusting our CA: refused with a clear message, no password shown
    assert_refused(worker_env(url.split("?")[0], emulator.url), TLS_PASSWORD, "certificate verify failed")
