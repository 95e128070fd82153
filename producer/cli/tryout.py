"""`otb serve --emulator`: the one command a newcomer runs to try the HTTP API (README, Try it).

The stack runs in this process (producer/standalone.py): nothing else can reach its Redis, so no
key is checked, and it serves loopback hosts only. Startup says where it listens, which key to give
the SDKs (they insist on one) and a snippet to paste.
"""

from __future__ import annotations

from contextlib import ExitStack

import click

from producer.api.tenants import is_loopback
from producer.standalone import Standalone, standalone
from worker.connection import mask_url

from .common import registry_of, settings_from_env

TRY_KEY = "otb-try"  # what the snippets send: any string passes, the SDKs just refuse to start without one
REFUSED = 2  # exit status of a refused combination (as a usage error)


class Refused(click.ClickException):
    exit_code = REFUSED


def start(stack: ExitStack, host: str) -> Standalone:
    """The embedded stack, stopped when `stack` closes; one line and exit 2 where --emulator cannot
    do what it says (a REDIS_URL it would not use, a host others can reach)."""
    settings = settings_from_env()
    if settings.redis_url:
        raise Refused(f"--emulator runs its own embedded Redis and does not use REDIS_URL "
                      f"({mask_url(settings.redis_url)}): unset REDIS_URL to try it, or drop --emulator to serve "
                      "the shared Redis")
    if not is_loopback(host):
        raise Refused(f"--emulator checks no API key, so it serves only a loopback host (127.0.0.1, ::1, "
                      f"localhost), not {host}")
    return stack.enter_context(standalone(settings, registry_of(settings)))


def announce(where: str, stack: Standalone) -> None:
    """Where it listens and what to paste: the status on stderr, the snippet on stdout."""
    base = f"{where}/v1"
    click.echo(f"otb serve --emulator: {base} (docs {where}/docs), with an embedded Redis, an in-process worker "
               f"and the provider emulator ({stack.emulator_url}) in this process; nothing is kept after it stops",
               err=True)
    click.echo(f"otb serve --emulator: no API key is checked (loopback only); the SDKs need one: use {TRY_KEY}",
               err=True)
    click.echo(f"Try it (any OpenAI SDK works with base URL {base} and API key {TRY_KEY}):\n"
               f"  curl -s {base}/chat/completions -H \"Authorization: Bearer {TRY_KEY}\" "
               "-H \"Content-Type: application/json\" "
               "-d '{\"model\": \"google/gemini-3-flash\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'")
