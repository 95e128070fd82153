"""`otb serve` and `otb keys`: the HTTP API's commands (the app itself is producer/api).

Both need the shared Redis and stop at once, in one line, when `REDIS_URL` is unset or nothing
answers (the same check as every other command). API keys are printed once by `otb keys create`
and never again: Redis keeps only their hash.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

from typing import TYPE_CHECKING

import click

from .common import friendly, registry_of, safe_url, settings_from_env, shared_redis
from worker.errors import ConfigError

from producer.api import NO_AUTH_TENANT

if TYPE_CHECKING:  # imported where used: `otb --help` loads neither redis nor the API
    import redis

    from worker.settings import Settings

def _shared(**connect: Any) -> tuple[Settings, redis.Redis]:
    """Settings, a registry that loads, and the shared Redis, checked at once (as `otb worker` does)."""
    settings = settings_from_env()
    registry_of(settings)
    return settings, shared_redis(settings, **connect)


# -- otb serve ---------------------------------------------------------------------------------------
@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface, as in the Procfile).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--no-auth", is_flag=True,
              help=f"No API key checked: every request is tenant {NO_AUTH_TENANT!r}. Loopback hosts only.")
@click.option("--max-file-mb", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Largest upload in MiB (OpenAI's batch file limit is 200 MB); larger is refused with 413.")
@click.option("--call-timeout", default=600.0, show_default=True, type=click.FloatRange(0.1, 86_400),
              help="Seconds a chat or embedding call waits for a worker's answer (then 504, or 503 with no worker).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One line per request (method, path, status; never a key).")
@click.option("--emulator", is_flag=True,
              help="Try it with REDIS_URL unset: an embedded Redis, a worker and the provider emulator in this "
                   "process, no key checked, loopback only (README, Try it).")
@friendly
def serve(host: str, port: int, no_auth: bool, max_file_mb: int, call_timeout: float, access_log: bool,
          emulator: bool) -> None:
    """Serve the OpenAI-compatible HTTP API (base URL http://HOST:PORT/v1, docs at /docs) over REDIS_URL."""
    import uvicorn

    from producer.api import redact
    from producer.api.app import ServeOptions, create_app
    from producer.api.tenants import is_loopback

    from . import tryout

    if no_auth and not is_loopback(host):
        raise click.ClickException(f"--no-auth is only allowed on a loopback host (127.0.0.1, ::1, localhost), "
                                   f"not {host}: anyone who can reach it would use the API without a key")
    with ExitStack() as stack:
        embedded = tryout.start(stack, host) if emulator else None
        # An HTTP caller waits on a Redis that went away for about 30 s (a Sentinel failover fits in
        # it), then gets a 503 its SDK retries: not the two minutes a worker rides out a restart for.
        from worker.connection import SERVE_RETRIES

        settings, conn = (embedded.settings, embedded.conn) if embedded else _shared(retries=SERVE_RETRIES)
        sock = _listen(host, port)
        where = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
        if embedded:
            tryout.announce(where, embedded)
        else:
            click.echo(f"otb serve: {where}/v1 (docs {where}/docs) on {safe_url(settings.redis_url or '')}", err=True)
        if no_auth:
            click.echo(f"otb serve: --no-auth: no API key is checked; every request is tenant {NO_AUTH_TENANT!r} "
                       "(allowed on loopback only)", err=True)
        options = ServeOptions(no_auth=no_auth or emulator, max_file_bytes=max_file_mb * 1024 * 1024,
                               call_timeout=call_timeout)
        app = create_app(settings, conn, options, async_redis=embedded.async_redis if embedded else None)
        level = "info" if logging.getLogger().level <= logging.INFO or access_log else "warning"
        config = uvicorn.Config(app, log_level=level, access_log=access_log, server_header=False)
        redact.install()  # (after Config, which sets up uvicorn's loggers): no key in a logged URL
        uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """Bind here, so a busy port is one clear line instead of uvicorn's traceback.

    The socket is made with proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so
    (socket.create_server leaves proto 0), and without it every answer on a kept-alive connection
    waits 40 ms for the client's delayed ACK (headers and body are two writes).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(f"port {port} on {host} is already in use (another otb serve?): "
                                       "stop it, or pick another with --port") from None
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


# -- otb keys ----------------------------------------------------------------------------------------
@click.group("keys")
def keys() -> None:
    """API keys for `otb serve`: one per tenant (its NAME); Redis keeps only their hashes."""


def _usd(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
    from producer.api.tenants import parse_usd

    if value is None:
        return None
    try:
        return parse_usd(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("--max-cost ")) from exc


@keys.command("create")
@click.argument("name")
@click.option("--max-cost", callback=_usd, metavar="USD", help="The key's total spend over its batches and calls.")
@click.option("--rpm", default=0, type=click.IntRange(0, 1_000_000), help="Requests per minute over every server (0: no cap).")
@click.option("--webhook-url", metavar="URL", help="Where its batch events are sent (signed; the secret is shown once).")
@click.option("--json", "as_json", is_flag=True, help='Print {"name", "key", ...} as JSON.')
@friendly
def keys_create(name: str, max_cost: Decimal | None, rpm: int, webhook_url: str | None, as_json: bool) -> None:
    """Create the key of tenant NAME and print it once (it cannot be shown again)."""
    from producer.api.tenants import KeyStore

    settings, conn = _shared()
    created = KeyStore(conn, settings.key_prefix).create(name, rpm=rpm, max_cost=max_cost,
                                                                     webhook_url=webhook_url)
    if as_json:
        click.echo(json.dumps(created.public()))
        return
    for label, value in created.public().items():
        if value is not None and label != "created_at":
            click.echo(f"{label + ':':<16}{value}")
    click.echo("The key is shown only now: store it (Redis keeps only its hash).", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help='Print {"object": "list", "data": [...]}.')
@friendly
def keys_list(as_json: bool) -> None:
    """Every key's name, status, spend so far (USD, its committed results) and limits (never the key itself)."""
    from producer.api.tenants import KeyStore

    settings, conn = _shared()
    rows = KeyStore(conn, settings.key_prefix).list()
    if as_json:
        click.echo(json.dumps({"object": "list", "data": rows}))
        return
    if not rows:
        click.echo("no keys yet: otb keys create NAME", err=True)
    for row in rows:
        limits = ", ".join(f"{k} {row[k]}" for k in ("rpm", "max_cost", "webhook_url", "webhooks_failed") if row[k])
        limits = f"spent ${row['spent']}" + (f", {limits}" if limits else "")
        click.echo(f"{row['name']:<24} {row['status']:<8} {limits}".rstrip())


@keys.command("revoke")
@click.argument("name")
@friendly
def keys_revoke(name: str) -> None:
    """Refuse NAME's key from now on, on every server (its files and batches stay; create NAME again to rotate)."""
    from producer.api.tenants import KeyStore

    settings, conn = _shared()
    KeyStore(conn, settings.key_prefix).revoke(name)
    click.echo(f"revoked the key of {name!r}", err=True)

