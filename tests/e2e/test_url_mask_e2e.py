"""A Redis password that holds an `@` is masked whole in what `otb` prints (real redis-server with that password)."""

from __future__ import annotations

import pytest

from ..conftest import RedisServer, otb, worker_env

pytestmark = pytest.mark.e2e

PASSWORD = "p@tP4ss"


def test_a_password_with_an_at_sign_is_masked_whole(tmp_path, emulator):
    server = RedisServer(tmp_path, extra=("--requirepass", PASSWORD),
                         url_of=lambda port: f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    try:
        env = worker_env(server.url, emulator.url)
        worker = otb(["worker", "--burst"], env, timeout=60)
        banner = worker.stderr.decode()
        assert worker.returncode == 0 and "otb worker: queue" in banner, banner
        assert "redis://***@127.0.0.1:" in banner and "tP4ss" not in banner, banner
        refused = otb(["status", "batch_x"], worker_env(server.url.replace(PASSWORD, "n0@pe"), emulator.url))
        assert "redis://***@127.0.0.1:" in refused.stderr.decode() and "pe@" not in refused.stderr.decode()
    finally:
        server.stop()
