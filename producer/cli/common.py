"""What every `otb` command shares: settings, registry and Redis at the edge, one-line errors, JSON
and status text, the listing of bad lines."""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from worker.errors import ConfigError, ModelNotFound, OTBError

if TYPE_CHECKING:  # the rest is imported where it is used: `otb --help` loads only click and this package
    import redis

    from producer.batchfile import LineError
    from producer.client import Client
    from worker.registry import Registry
    from worker.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
MAX_LISTED = 20  # bad lines listed one by one; the rest are counted
SOME_FAILED = 2  # exit status of `submit --wait` and `run` when the batch ended with errored or expired requests


class LazyChoice(click.Choice):  # type: ignore[type-arg]
    """A choice among the values of `module.name` (a provider, a mode), read when the option is checked or
    its help shown, not when `otb` starts: those modules bring pydantic and the registry."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> Sequence[str]:
        values = getattr(importlib.import_module(self.module), self.name)
        return sorted(values) if isinstance(values, dict) else list(values)  # a dict's keys, sorted (ADAPTERS)

    @choices.setter
    def choices(self, _value: Sequence[str]) -> None:
        pass  # click's __init__ sets them; they come from the module


def friendly(fn: F) -> F:
    """Turn expected failures into `error: ...` on stderr and exit status 1 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise  # the reader stopped (`otb results B | head`): click exits quietly
        except (OTBError, LookupError, TimeoutError, OSError) as exc:
            message = exc.args[0] if isinstance(exc, LookupError) and exc.args else str(exc)
            raise click.ClickException(message) from exc

    return wrapper  # type: ignore[return-value]


def settings_from_env(*, redis: bool = True) -> Settings:
    """The settings; with `redis=False` (a command that never reaches Redis: models, estimate, the
    emulator), a malformed REDIS_URL meant for the others does not stop it."""
    import os

    from worker.settings import Settings

    try:
        return Settings.from_env(None if redis else {k: v for k, v in os.environ.items() if k != "REDIS_URL"})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def registry_of(settings: Settings) -> Registry:
    from worker.registry import load_registry

    try:
        return load_registry(settings.registry_path)
    except ConfigError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc


def shared_redis(settings: Settings, **kwargs: Any) -> redis.Redis:
    """The Redis the workers share; one clear line within seconds if REDIS_URL is unset or nothing answers."""
    from producer.local import connect_shared

    try:
        return connect_shared(settings, **kwargs)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def client() -> Client:
    """The Python API on the shared Redis, for commands that read or steer a batch."""
    from producer.client import Client

    settings = settings_from_env()
    return Client(shared_redis(settings), settings, registry_of(settings))


def safe_url(url: str) -> str:
    """REDIS_URL without its password, for messages."""
    from worker.connection import mask_url

    return mask_url(url)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=lambda o: float(o) if isinstance(o, Decimal) else str(o))


def status_text(s: dict[str, Any]) -> str:
    c, cost = s["request_counts"], s["cost"]
    return "\n".join([
        f"{s['id']}  {s['status']}",
        f"requests  {c['total']} total, {c['succeeded']} succeeded, {c['errored']} errored, "
        f"{c['canceled']} canceled, {c['expired']} expired, {c['processing']} processing",
        f"cost      ${cost['total']}  (input {cost['input']}, cache_read {cost['cache_read']}, "
        f"cache_write {cost['cache_write']}, output {cost['output']})",
        f"spent     ${s['spent']}  (billed by providers for every answer received, repeats included)",
        *([f"budget    ${s['max_cost']}"] if s.get("max_cost") else []),
        *_route_lines(s),
        *_native_lines(s),
        *([f"parked    {count(s['parked']['requests'], 'request')} until "
           f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(s['parked']['until']))}: {s['parked']['reason']}"]
          if s.get("parked") else []),
    ])


def _route_lines(s: dict[str, Any]) -> list[str]:
    """How the batch's lines ran and what that saved, once it is not a plain real-time batch."""
    mode, by_route = s.get("mode") or "realtime", s.get("succeeded_by_route") or {}
    if mode == "realtime" and not any(n for route, n in by_route.items() if route != "realtime"):
        return []
    from worker.routes import mode_note  # (here: a plain batch's status loads no pricing, registry or pydantic)
    ran = ", ".join(f"{n} {route}" for route, n in by_route.items() if n) or "none yet"
    note = mode_note(mode)
    return [f"routes    mode {mode}: succeeded {ran}" + (f" ({note})" if note else ""),
            f"saved     ${s.get('saved', '0')} vs real time (these answers at standard prices, less their cost)"]


def _native_lines(s: dict[str, Any]) -> list[str]:
    """Each provider batch of the native route: where the provider says it is, and its counts."""
    out = []
    for part in s.get("native") or []:
        if part["state"] == "planning":
            out.append(f"native    {count(part['requests'], 'request')} being planned into provider batches")
            continue
        counts = ", ".join(f"{n} {k}" for k, n in (part.get("progress") or {}).items() if n)
        where = part.get("provider_status") or part["state"]
        out.append(f"native    {part['provider']} {part.get('provider_batch') or '(not created yet)'}: "
                   f"{count(part['requests'], 'request')}, {where}" + (f" ({counts})" if counts else "")
                   + (f"; {part['note']}" if part.get("note") else ""))
    return out


def count(n: int, noun: str) -> str:
    """`1 request`, `2 requests`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def exit_if_some_failed(status: dict[str, Any]) -> None:
    counts = status["request_counts"]
    if counts["errored"] or counts["expired"]:
        sys.exit(SOME_FAILED)


def print_line_errors(errors: list[LineError], registry: Registry, suffix: str = "") -> None:
    """The first MAX_LISTED bad lines on stderr, then a count: a CSV file must not print 20,000 lines."""
    from producer.batchfile import EXPECTED, NotJsonl

    errors = [e for e in errors if e.number]  # line 0 is about the whole file: its caller says it once
    for err in errors[:MAX_LISTED]:
        click.echo(f"{err}{suffix}{_did_you_mean(err, registry)}", err=True)
    if len(errors) > MAX_LISTED:
        click.echo(f"... and {len(errors) - MAX_LISTED:,} more bad lines ({len(errors):,} in all)", err=True)
    if any(isinstance(e.error, NotJsonl) and EXPECTED not in e.error.message for e in errors):  # (not said yet)
        click.echo(f"note: {EXPECTED}, each a JSON object (not CSV, a JSON array or a compressed file)", err=True)


def _did_you_mean(err: LineError, registry: Registry) -> str:
    """A hint after an unknown model id; the error itself stays exactly as the API words it."""
    close = registry.suggest(err.error.model_id) if isinstance(err.error, ModelNotFound) else []
    return f"  (did you mean {' or '.join(close)}?)" if close else ""


@contextmanager
def opened(file: str) -> Iterator[Iterable[bytes]]:
    """FILE's lines as bytes, read once as they are used: a path, or `-` for stdin."""
    if file == "-":
        yield sys.stdin.buffer
        return
    path = Path(file)
    if path.is_dir():
        raise click.ClickException(f"{file}: is a directory, not a batch file")
    try:  # a file, or what a shell hands over as one: <(...), /dev/stdin, a named pipe
        fh = path.open("rb")
    except FileNotFoundError:
        raise click.ClickException(f"{file}: no such file") from None
    except OSError as exc:
        raise click.ClickException(f"{file}: cannot be read ({exc.strerror or exc})") from None
    with fh:
        yield fh
