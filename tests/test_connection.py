"""REDIS_URL forms that name Sentinels, and masking of every password a REDIS_URL can carry.

The failover itself is proven on real processes in tests/e2e/test_sentinel_e2e.py; these tests pin
what the URL means (which login goes where, TLS, defaults) and what a message may show of it.
"""

from __future__ import annotations

import pytest
from redis.connection import SSLConnection
from redis.sentinel import SentinelConnectionPool

from bench.harness import free_port
from worker.connection import (FollowingConnection, FollowingSSLConnection, RedisUnreachable, SentinelURL, TransientRetry, connect, ensure_reachable, is_sentinel,
                               mask_url)
from worker.errors import ConfigError
from worker.settings import Settings


def test_a_sentinel_url_names_its_sentinels_master_db_and_the_masters_login() -> None:
    parsed = SentinelURL.parse("redis+sentinel://app:pa%40ss@h1:26380,h2,[::1]:26381/mymaster/3")
    assert parsed.sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert parsed.service == "mymaster" and not parsed.tls
    assert parsed.master_kwargs == {"username": "app", "password": "pa@ss", "db": 3}
    assert parsed.sentinel_login == {}


def test_the_db_defaults_to_0_and_sentinels_get_their_own_login_from_options() -> None:
    parsed = SentinelURL.parse("redis+sentinel://:m@h1:26379/mymaster?sentinel_password=s3&socket_timeout=5")
    assert parsed.master_kwargs == {"password": "m", "db": 0, "socket_timeout": 5.0}
    assert parsed.sentinel_login == {"password": "s3"}


@pytest.mark.parametrize("url", [
    "redis+sentinel://h1:26379",                  # no master name
    "redis+sentinel:///mymaster/0",               # no Sentinel
    "redis+sentinel://h1:26379/mymaster/0/extra",
    "redis+sentinel://:pw@h1:port/mymaster",
    "redis+sentinel://:pw@h1/mymaster/zero",
])
def test_an_unusable_sentinel_url_is_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        SentinelURL.parse(url)
    message = str(err.value)
    assert "\n" not in message and "pw" not in message and message.startswith("REDIS_URL ")


def test_the_masters_client_keeps_the_restart_patience_and_asks_the_sentinels() -> None:
    conn = connect("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/2")
    pool = conn.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_class is FollowingConnection
    assert isinstance(pool.connection_kwargs["retry"], TransientRetry)
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["db"] == 2
    assert [s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels] == [1, 2]


def test_rediss_sentinel_speaks_tls_to_the_master_and_to_the_sentinels() -> None:
    conn = connect("rediss+sentinel://h1:26379/mymaster?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem")
    pool = conn.connection_pool
    assert pool.connection_class is FollowingSSLConnection and issubclass(FollowingSSLConnection, SSLConnection)
    assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool
    assert sentinel.connection_class.__name__ == "SSLConnection"
    assert sentinel.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_settings_take_sentinel_urls() -> None:
    for url in ("redis+sentinel://h1:26379/mymaster/0", "rediss+sentinel://h1/mymaster"):
        assert Settings.from_env({"REDIS_URL": url}).redis_url == url
        assert is_sentinel(url)
    assert not is_sentinel("redis://h1:6379/0")


@pytest.mark.parametrize("url, shown", [
    ("redis+sentinel://app:p@ss@h1:26379,h2:26379/mymaster/0", "redis+sentinel://***@h1:26379,h2:26379/mymaster/0"),
    ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=***"),
    ("redis+sentinel://h1/m?sentinel_password=s3cret&db=1", "redis+sentinel://h1/m?sentinel_password=***&db=1"),
    ("rediss://u:pw@h:6380/0?ssl_cert_reqs=none", "rediss://***@h:6380/0?ssl_cert_reqs=none"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_every_password_in_a_url_is_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_sentinels_that_do_not_answer_are_said_at_once_naming_them_not_the_password() -> None:
    port = free_port()
    url = f"redis+sentinel://:s3cret@127.0.0.1:{port}/mymaster/0"
    with pytest.raises(RedisUnreachable) as err:
        ensure_reachable(url, timeout=1)
    message = str(err.value)
    assert message.startswith(f"cannot reach Redis at redis+sentinel://***@127.0.0.1:{port}/mymaster/0: "
                              "no Sentinel answered"), message
    assert "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"<html>\r\n"])
def test_a_server_that_is_not_redis_is_said_in_one_line(reply: bytes) -> None:
    """REDIS_URL pointing at an HTTP server (a wrong port) gave a 70-line traceback ending in redis-py's
    InvalidResponse; now one line naming the server."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(reply)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(RedisUnreachable) as exc:
            ensure_reachable(f"redis://:s3cret@127.0.0.1:{port}/0", timeout=3)
    finally:
        listener.close()
    message = str(exc.value)
    assert f"127.0.0.1:{port}/0 is not a Redis server" in message and "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize("url", ["redis://127.0.0.1:99999/0", "redis://:s3cret@127.0.0.1:port/0"])
def test_a_redis_url_with_a_bad_port_is_one_line(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"REDIS_URL": url})
    assert str(exc.value).startswith("REDIS_URL has a bad port") and "s3cret" not in str(exc.value)
