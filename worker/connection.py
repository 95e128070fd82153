"""Redis clients that ride out a Redis restart, and start-up checks: is Redis there, does it keep our data.

Every command retries on connection errors with capped exponential backoff for about two minutes,
so a restarting Redis (with AOF on) pauses workers and producers instead of failing their work.
Retried writes are safe: result commits are once-only (HSETNX) and re-runs skip committed requests.
That patience is for a Redis that was up and restarts: a Redis that cannot be reached when a
command starts (wrong URL, not running) is said at once by `ensure_reachable`.

REDIS_URL may also name Sentinels (`redis+sentinel://[user:pass@]h1:26379,h2:26379/mymaster/0`,
`rediss+sentinel://` for TLS): the client asks them for the master before each new connection, and
on a dropped connection or a READONLY reply (the old master demoted) it drops its connections and
asks again, inside the same retry, so a failover is one more pause of the kind a restart is.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import Pipeline
from redis.connection import parse_url
from redis.retry import Retry
from redis.connection import SSLConnection
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

from .errors import ConfigError

RETRIES = 40  # with the backoff below: about two minutes of waiting in all
BACKOFF_CAP, BACKOFF_BASE = 4.0, 0.05
SERVE_RETRIES = 13  # `otb serve`: about 30 s of waiting, then the HTTP caller gets a 503
PATIENCE = sum(min(BACKOFF_CAP, BACKOFF_BASE * 2**n) for n in range(RETRIES))  # seconds a restart may take
START_TIMEOUT = 3.0  # seconds to reach Redis at start before saying it cannot be reached
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
SENTINEL_TIMEOUT = 2.0  # seconds per question to one Sentinel: a dead one is skipped, not waited on
SENTINEL_AUTH = ("sentinel_username", "sentinel_password")  # query options: the Sentinels' own login


class RedisUnreachable(ConfigError):
    """Redis did not answer when a command started: a wrong URL or a Redis that is not running."""


class TransientRetry(Retry):
    """Retry dropped connections, never a refused login or certificate: those will not heal by waiting.

    (redis-py makes AuthenticationError a ConnectionError, so plain Retry waits minutes on a typo.)
    """

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):  # type: ignore[no-untyped-def]
        def transient(error: Exception) -> bool:
            return not _permanent(error) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, transient, with_failure_count)


def _permanent(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (redis.AuthenticationError, ssl.SSLCertVerificationError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return "certificate verify failed" in str(error)


class ScriptPipeline(Pipeline):
    """A pipeline whose resend after a dropped connection loads its scripts first.

    redis-py loads a pipeline's scripts once, before sending it; when the connection drops mid-way,
    its retry sends the commands again to the server it reconnects to: after a failover (or a
    restart) one that never saw the scripts (SCRIPT LOAD is not replicated), so EVALSHA answers
    NOSCRIPT while the other commands of the pipeline run. Checking the scripts again on each
    resend makes the resend what the first send was.
    (Hooks redis-py's Pipeline internals; tests/e2e/test_sentinel_e2e.py fails if they change.)
    """

    _resent = False

    def _disconnect_raise_on_watching(self, conn: Any, error: Exception, *args: Any, **kwargs: Any) -> None:
        super()._disconnect_raise_on_watching(conn, error, *args, **kwargs)
        self._resent = True

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        self._scripts_again()
        return super()._execute_transaction(connection, commands, raise_on_error)

    def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        self._scripts_again()
        return super()._execute_pipeline(connection, commands, raise_on_error)  # type: ignore[no-untyped-call,no-any-return]

    def _scripts_again(self) -> None:
        if self._resent and self.scripts:
            self.load_scripts()  # type: ignore[no-untyped-call]  # on this pipeline's connection: the server the resend goes to
        self._resent = False


class Client(redis.Redis):
    """redis.Redis with ScriptPipeline pipelines (a single EVALSHA already loads its script again on NOSCRIPT)."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> ScriptPipeline:
        return ScriptPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def connect(url: str, *, retries: int = RETRIES) -> redis.Redis:
    """A client for REDIS_URL (`redis://`, `rediss://`, `unix://`, `redis+sentinel://`,
    `rediss+sentinel://`; user:password and ACLs work).

    `retries=0` gives a client that fails at once, for a caller that shows its own retrying.
    """
    patience: dict[str, Any] = dict(
        retry=TransientRetry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=15,
        socket_keepalive=True,
    )
    if is_sentinel(url):
        return SentinelURL.parse(url).master(**patience)
    return Client.from_url(url, **patience)


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelURL:
    """`redis+sentinel://[user:pass@]host[:port][,host[:port]...]/master-name[/db][?options]`.

    The login (and the db) are the master's; Sentinels that need their own login get it from the
    `sentinel_username` / `sentinel_password` options. `rediss+sentinel://` speaks TLS to both, with
    the `ssl_*` options of a `rediss://` URL. Ports default to 26379.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    tls: bool
    master_kwargs: dict[str, Any] = field(default_factory=dict)  # db, login, ssl_* options
    sentinel_login: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> "SentinelURL":
        """ConfigError, in one line that never repeats the password, for a URL that cannot be used."""
        scheme, _, rest = url.partition("://")
        rest, _, query = rest.partition("?")
        login, at, place = rest.rpartition("@")
        hosts, _, path = place.partition("/")
        parts = [p for p in path.split("/") if p]
        if not hosts or not parts or len(parts) > 2 or not (len(parts) == 1 or parts[1].isdigit()):
            raise ConfigError(f"REDIS_URL {mask_url(url)} must name Sentinels and a master: "
                              f"{scheme}://[user:password@]host:26379[,host:26379]/mymaster[/0]")
        tls = scheme.lower() == "rediss+sentinel"
        options = parse_qsl(query)
        sentinel_login = {k: v for k, v in options if k in SENTINEL_AUTH}
        rebuilt = (f"{'rediss' if tls else 'redis'}://{login}{at}localhost/{parts[1] if len(parts) > 1 else 0}"
                   f"?{urlencode([(k, v) for k, v in options if k not in SENTINEL_AUTH])}")
        try:
            kwargs = parse_url(rebuilt)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL {mask_url(url)}: {exc}") from None
        for placed in ("host", "port", "connection_class"):
            kwargs.pop(placed, None)
        return cls(tuple(_host_port(h, url) for h in hosts.split(",")), parts[0], tls, kwargs,
                   {k.removeprefix("sentinel_"): v for k, v in sentinel_login.items()})

    def sentinel(self, timeout: float = SENTINEL_TIMEOUT) -> Sentinel:
        """The Sentinels, asked once each with a short timeout and no retry (the master's client retries)."""
        tls = {k: v for k, v in self.master_kwargs.items() if k.startswith("ssl")} | ({"ssl": True} if self.tls else {})
        return Sentinel(list(self.sentinels), sentinel_kwargs=dict(  # type: ignore[no-untyped-call]
            socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0),
            **self.sentinel_login, **tls))

    def master(self, *, sentinel_timeout: float = SENTINEL_TIMEOUT, **kwargs: Any) -> redis.Redis:
        """A client of the current master that asks the Sentinels again after a failover."""
        return self.sentinel(sentinel_timeout).master_for(  # type: ignore[no-untyped-call,no-any-return]
            self.service, redis_class=Client, connection_class=FollowingSSLConnection if self.tls else FollowingConnection,
            **self.master_kwargs, **kwargs)

    def masked(self, scheme: str) -> str:
        login = "***@" if self.master_kwargs.get("username") or self.master_kwargs.get("password") else ""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        return f"{scheme}://{login}{hosts}/{self.service}/{self.master_kwargs.get('db', 0)}"


class FollowingConnection(SentinelManagedConnection):
    """A connection to the master that asks the Sentinels again whenever it reconnects.

    redis-py's retry re-sends a command whose connection dropped through `send_packed_command`,
    which reconnects to the address the connection last had (redis-py #3874): after the master dies,
    every retry would dial the dead master until the retries run out. Reconnecting through
    `connect()` asks the Sentinels first, so the retry reaches the new master.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    pass


def _host_port(text: str, url: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` of one Sentinel."""
    host, port = text, ""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host or (port and not port.isdigit()):
        raise ConfigError(f"REDIS_URL {mask_url(url)}: {text!r} is not host:port")
    return host, int(port or SENTINEL_PORT)


def mask_url(url: str) -> str:
    """REDIS_URL for messages and logs: everything before the host (user and password) masked, and
    the value of any `...password=` option.

    The credentials end at the *last* `@` (as URL parsers read it), so a password that itself holds
    an `@` is masked whole: `redis://:p@ss@host` -> `redis://***@host`.
    """
    url, mark, query = url.partition("?")
    if query:
        query = "&".join(f"{k}=***" if "password" in k.lower() else f"{k}{eq}{v}"
                         for k, eq, v in (part.partition("=") for part in query.split("&")))
    if "@" in url:
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        url = f"{scheme}://***@{rest.rpartition('@')[2]}"
    return f"{url}{mark}{query}"


def ensure_reachable(url: str, timeout: float = START_TIMEOUT) -> None:
    """Ping once, without the restart patience; RedisUnreachable names the server (never the password)."""
    once: dict[str, Any] = dict(socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
    if is_sentinel(url):
        probe = SentinelURL.parse(url).master(sentinel_timeout=timeout, **once)
    else:
        probe = redis.Redis.from_url(url, **once)
    try:
        probe.ping()
    except MasterNotFoundError as exc:
        raise RedisUnreachable(f"cannot reach Redis at {server_of(url, probe)}: {_no_master(exc)}") from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnreachable(f"cannot reach Redis at {server_of(url, probe)}: {exc}") from exc
    except redis.ResponseError as exc:  # e.g. NOAUTH: the server is there, the login is wrong
        raise RedisUnreachable(f"Redis at {server_of(url, probe)} refused us: {exc}") from exc
    except redis.exceptions.InvalidResponse as exc:  # something answered, in another protocol (HTTP, TLS, ...)
        raise RedisUnreachable(f"the server at {server_of(url, probe)} is not a Redis server (or speaks TLS: "
                               f"use rediss://): {exc}") from exc
    except ValueError as exc:  # a port past 65535 and the like, found as the socket is made
        raise RedisUnreachable(f"cannot reach Redis at {server_of(url, probe)}: {exc}") from exc
    finally:
        probe.close()


def _no_master(exc: MasterNotFoundError) -> str:
    """redis-py lists each Sentinel's client repr; say instead whether any of them answered."""
    text = str(exc)
    if " : " not in text:
        return f"no Sentinel knows a master named {text.split(' for ', 1)[-1]} (or it is down)"
    return "no Sentinel answered (" + text.rpartition(" - ")[2] + ")"


def server_of(url: str, client: redis.Redis) -> str:
    """scheme://***@host:port/db (or unix://path) of a client: the URL with its user and password hidden."""
    scheme = url.split("://", 1)[0]
    if is_sentinel(url):
        return SentinelURL.parse(url).masked(scheme)
    kw = client.connection_pool.connection_kwargs
    login = "***@" if kw.get("username") or kw.get("password") else ""
    where = kw["path"] if "path" in kw else f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"
    return f"{scheme}://{login}{where}"


def durability_warnings(conn: redis.Redis) -> list[str]:
    """What could make Redis lose our queue or results; empty when CONFIG is not allowed (managed Redis)."""
    try:
        config = conn.config_get("maxmemory-policy") | conn.config_get("appendonly") | conn.config_get("save")
    except redis.ResponseError:
        return []
    warnings = []
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is {policy!r}: it may evict queued jobs and results; "
                        "set maxmemory-policy noeviction")
    if config.get("appendonly") != "yes" and not config.get("save"):
        warnings.append("Redis keeps nothing on disk (appendonly no, no save points): a Redis restart loses "
                        "every batch; run it with --appendonly yes")
    return warnings
