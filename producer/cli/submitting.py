"""`otb submit` and following a batch (`--wait`, `otb status --watch`).

The seven submit options become one SubmitOptions here, at the edge (`with_submit_options`), and the
file is read once, as it is submitted: stdin works the same as a path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .common import (F, LazyChoice, dumps, exit_if_some_failed, friendly, opened, print_line_errors, registry_of,
                     settings_from_env, shared_redis, status_text)

if TYPE_CHECKING:  # imported where used: `otb --help` loads neither redis nor pydantic
    import redis

    from producer.options import SubmitOptions
    from producer.submit import SubmissionRejected
    from worker.registry import Registry
    from worker.settings import Settings


def _parsed(parser: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: the option's text through producer.options' `parser`, a BadOption shown as
    click's bad parameter."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        from producer import options

        parse: Callable[[Any], Any] = getattr(options, parser)
        try:
            return parse(value)
        except options.BadOption as exc:
            raise click.BadParameter(exc.message, param_hint=exc.option) from None

    return callback


SUBMIT_OPTIONS = [
    click.option("--keep-valid", is_flag=True, help="Enqueue the valid lines; record bad lines as errored results."),
    click.option("--drop-unsupported-params", is_flag=True, help="Drop parameters a model would reject (recorded per result) instead of failing the line."),
    click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", callback=_parsed("parse_metadata"), help="Attach metadata to the batch."),
    click.option("--completion-window", metavar="DURATION", callback=_parsed("parse_duration"), help="End what is not done by then as batch_expired (a number and a unit: 24h, 90m, 3600s, 2d)."),
    click.option("--idempotency-key", metavar="KEY", help="Submitting again with the same key returns the same batch."),
    click.option("--max-cost", metavar="USD", callback=_parsed("parse_usd"), help="Budget: requests that could pass it end as budget_exceeded, unsent."),
    click.option("--mode", type=LazyChoice("worker.routes", "MODES"), help="How lines run: realtime, flex (Gemini, 50%), native (the providers' batch APIs, 50%) or auto (the cheapest route the window allows; the default with a --completion-window of 1h or more)."),
]


def with_submit_options(fn: F) -> F:
    """The submit options on a command, handed to it as one `options: SubmitOptions`."""

    @wraps(fn)
    def wrapper(*args: Any, keep_valid: bool, drop_unsupported_params: bool, metadata: dict[str, str],
                completion_window: float | None, idempotency_key: str | None, max_cost: Any, mode: str | None,
                **kwargs: Any) -> Any:
        from producer.options import BadOption, SubmitOptions

        try:
            options = SubmitOptions(keep_valid=keep_valid, drop_unsupported_params=drop_unsupported_params,
                                    metadata=metadata, completion_window=completion_window,
                                    idempotency_key=idempotency_key, max_cost=max_cost, mode=mode)
        except BadOption as exc:  # named as the CLI spells it (the Python API's own name otherwise)
            raise click.BadParameter(exc.message, param_hint="--" + exc.option.lstrip("-").replace("_", "-")) from None
        return fn(*args, options=options, **kwargs)

    decorated: Any = wrapper
    for option in reversed(SUBMIT_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def submit_file(conn: redis.Redis, settings: Settings, registry: Registry, file: str, options: SubmitOptions,
                as_json: bool) -> str:
    """Validate and enqueue FILE in one pass; bad lines listed on stderr (or the refusal, and exit 1)."""
    from producer.submit import SubmissionRejected, submit

    try:
        with opened(file) as lines:
            done = submit(conn, settings, registry, lines, options)
    except SubmissionRejected as exc:
        _refused(exc, registry, as_json)
    print_line_errors(done.errors, registry, " (recorded as an errored result)")  # kept as errored results
    return done.batch_id


def _refused(exc: SubmissionRejected, registry: Registry, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(dumps({"error": {"message": str(exc), "type": "invalid_request_error", "code": "invalid_batch"},
                          "lines": [e.to_json() for e in exc.errors]}))
    else:
        print_line_errors(exc.errors, registry)
    raise click.ClickException(str(exc)) from None


@click.command("submit")
@click.argument("file")
@with_submit_options
@click.option("--json", "as_json", is_flag=True, help="Print {\"id\": ...} (and errors) as JSON.")
@click.option("--wait", is_flag=True, help="Follow the batch until every request has a result.")
@friendly
def submit_cmd(file: str, options: SubmitOptions, as_json: bool, wait: bool) -> None:
    """Validate FILE (JSONL; - for stdin) and enqueue it. Prints the batch id.

    With --wait, follows the batch to the end; the exit status is then 2 if any request errored or expired.
    """
    settings = settings_from_env()
    registry = registry_of(settings)
    conn = shared_redis(settings)
    bid = submit_file(conn, settings, registry, file, options, as_json)
    if not wait:
        click.echo(dumps({"id": bid}) if as_json else bid)
        return
    if not as_json:
        click.echo(bid)
    status = follow(settings, registry, bid)
    click.echo(dumps(status) if as_json else status_text(status))
    exit_if_some_failed(status)


def follow(settings: Settings, registry: Registry, bid: str) -> dict[str, Any]:
    """Follow a batch to the end on stderr, woken by its events; Ctrl-C stops following, not the batch."""
    from producer.client import Client
    from producer.progress import follow as show_progress

    client = Client(shared_redis(settings, retries=0), settings, registry)  # fails fast: follow shows the retrying
    try:
        return show_progress(client, bid, sys.stderr)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following {bid}; the batch goes on in the workers. Follow it with "
                   f"`otb status {bid} --watch`, stop it with `otb cancel {bid}`.", err=True)
        sys.exit(130)
