"""`otb`: thin click commands over the library; library errors become one clear line and exit 1."""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from worker import clock
from worker.errors import ConfigError, ModelNotFound, OTBError
from worker.registry import Registry, load_registry
from worker.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
EXAMPLE = Path(__file__).resolve().parent / "examples" / "demo.jsonl"
MAX_LISTED = 20  # bad lines listed one by one; the rest are counted
SOME_FAILED = 2  # exit status of `submit --wait` and `run` when the batch ended with errored or expired requests


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


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _registry(settings: Settings) -> Registry:
    try:
        return load_registry(settings.registry_path)
    except ConfigError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc


def _shared_redis(settings: Settings, **kwargs: Any) -> Any:
    """The Redis the workers share; one clear line within seconds if REDIS_URL is unset or nothing answers."""
    from producer.local import connect_shared

    try:
        return connect_shared(settings, **kwargs)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _client() -> Any:
    """The Python API on the shared Redis, for commands that read or steer a batch."""
    from producer.client import Client

    settings = _settings()
    return Client(_shared_redis(settings), settings, _registry(settings))


def _safe_url(url: str) -> str:
    """REDIS_URL without its password, for messages."""
    from worker.connection import mask_url

    return mask_url(url)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=lambda o: float(o) if isinstance(o, Decimal) else str(o))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="opentoken-batch", prog_name="otb")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """opentoken-batch: OpenAI-shaped batches over Redis + RQ to Anthropic and Gemini, with exact costs.

    Exit status: 0 on success, 1 when a command fails, 2 when `submit --wait` or `run` saw the
    batch end with errored or expired requests.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- models ------------------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the GET /v1/models list shape.")
@click.option("--all", "show_all", is_flag=True, help="Include retired models.")
def models(as_json: bool, show_all: bool) -> None:
    """List the models you can call and their prices (USD per 1M tokens)."""
    registry = _registry(_settings())
    today = clock.today()
    if as_json:
        click.echo(_dumps(_catalog(registry, today, show_all)))
        return
    from producer.report import format_columns

    rows = []
    for m in registry.models.values():
        retired = m.is_retired(today)
        if retired and not show_all:
            continue
        lc = m.lifecycle
        if m.pricing is not None and not retired:
            r, _ = m.pricing.in_effect(today)
            prices = [format(p, "f") for p in (r.input, r.output, r.cache_read, r.cache_write)]
        else:
            prices = ["-"] * 4
        status = "retired" if retired else lc.status
        when = f"retires {lc.retires_on}" if lc.retires_on and not retired else (f"since {lc.retires_on}" if retired else "")
        if lc.routed_to:
            when = (when + ", then " if lc.retires_on and lc.retires_on > today else "") + f"served as {lc.routed_to}"
        rows.append([m.id, m.kind, status + (" (gated)" if m.access == "gated" else ""), *prices, when])
    head = ["id", "kind", "status", "input", "output", "cache_read", "cache_write", "lifecycle"]
    click.echo(format_columns(head, rows, text_columns=frozenset({0, 1, 2, 7})))


def _catalog(registry: Registry, today: dt.date, show_all: bool) -> dict[str, Any]:
    """GET /v1/models; with --all the retired models too, marked with their retirement and replacement."""
    catalog = registry.catalog(today)
    if show_all:
        catalog["data"] += [{"id": m.id, "object": "model", "owned_by": m.owned_by, "retired_on": m.lifecycle.retires_on,
                             "replacement": m.lifecycle.replacement}
                            for m in registry.models.values() if m.is_retired(today)]
    return catalog


# -- submit ------------------------------------------------------------------------------------
def _read_lines(file: str) -> Iterable[bytes]:
    if file == "-":
        return sys.stdin.buffer
    path = Path(file)
    if not path.is_file():
        raise click.ClickException(f"{file}: no such file")
    return path.open("rb")


def _parse_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        k, v = pair.split("=", 1)
        out[k] = v
    return out


submit_options = [
    click.option("--keep-valid", is_flag=True, help="Enqueue the valid lines; record bad lines as errored results."),
    click.option("--drop-unsupported-params", is_flag=True, help="Drop parameters a model would reject (recorded per result) instead of failing the line."),
    click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="Attach metadata to the batch."),
    click.option("--completion-window", metavar="DURATION", callback=lambda _c, _p, v: _duration(v), help="End what is not done by then as batch_expired (a number and a unit: 24h, 90m, 3600s, 2d)."),
    click.option("--idempotency-key", metavar="KEY", help="Submitting again with the same key returns the same batch."),
    click.option("--max-cost", metavar="USD", callback=lambda _c, _p, v: _usd(v), help="Budget: requests that could pass it end as budget_exceeded, unsent."),
]


MAX_USD = Decimal(2**63 - 1).scaleb(-12).quantize(Decimal(1), rounding="ROUND_FLOOR")  # Redis integers, in pico-USD


def _usd(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text.lstrip("$"))
    except ArithmeticError:
        raise click.BadParameter(f"{text!r} is not an amount in USD such as 25 or 0.50", param_hint="--max-cost") from None
    if not value.is_finite() or value <= 0:
        raise click.BadParameter("must be a positive amount", param_hint="--max-cost")
    if value > MAX_USD:
        raise click.BadParameter(f"{text!r} is more than the largest budget, {MAX_USD} USD "
                                 "(leave --max-cost out for no budget)", param_hint="--max-cost")
    return value.quantize(Decimal("0.000000000001"))


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str | None) -> float | None:
    """A number and a unit (24h, 90m, 3600s, 2d): a bare 3 is refused rather than read as 3 seconds."""
    if not text:
        return None
    number, unit = text[:-1], text[-1:]
    try:
        value = float(number) * DURATION_UNITS[unit]
    except (ValueError, KeyError):
        raise click.BadParameter(f"{text!r} is not a duration: give a number and a unit, such as 24h, 90m, 3600s or 2d",
                                 param_hint="--completion-window") from None
    if not 0 < value < float("inf"):
        raise click.BadParameter("must be positive", param_hint="--completion-window")
    return value


def _with_submit_options(fn: F) -> F:
    for option in reversed(submit_options):
        fn = option(fn)
    return fn


def _validate_and_submit(conn: Any, settings: Settings, registry: Registry, file: str, keep_valid: bool,
                         drop_unsupported_params: bool, metadata: tuple[str, ...], as_json: bool,
                         completion_window: float | None = None, idempotency_key: str | None = None,
                         max_cost: Decimal | None = None) -> str:
    from producer.batchfile import Limits, read_batch, read_bodies
    from producer.submit import SubmissionRejected, submit

    limits = Limits(settings.max_line_bytes, settings.max_lines)
    with _spooled(file) as path:  # read twice: validate everything, then stream bodies into Redis
        with path.open("rb") as fh:
            parsed = read_batch(fh, registry, drop_unsupported=drop_unsupported_params, limits=limits, keep_bodies=False)
        numbers = {ln.number for ln in parsed.lines}

        def bodies() -> Any:
            with path.open("rb") as again:
                yield from read_bodies(again, numbers, limits)

        try:
            bid = submit(conn, settings, parsed, keep_valid=keep_valid, drop_unsupported_params=drop_unsupported_params,
                         metadata=_parse_metadata(metadata), completion_window=completion_window,
                         idempotency_key=idempotency_key, max_cost=max_cost, bodies=bodies)
        except SubmissionRejected as exc:
            _report_rejection(exc, registry, as_json)
    _print_line_errors(parsed.errors, registry, " (recorded as an errored result)")  # kept as errored results
    return bid


def _report_rejection(exc: Any, registry: Registry, as_json: bool) -> None:
    if as_json:
        click.echo(_dumps({"error": {"message": str(exc), "type": "invalid_request_error", "code": "invalid_batch"},
                           "lines": [e.to_json() for e in exc.errors]}))
    else:
        _print_line_errors(exc.errors, registry)
    raise click.ClickException(str(exc)) from None


def _print_line_errors(errors: list[Any], registry: Registry, suffix: str = "") -> None:
    """The first MAX_LISTED bad lines on stderr, then a count: a CSV file must not print 20,000 lines."""
    from producer.batchfile import EXPECTED, NotJsonl

    for err in errors[:MAX_LISTED]:
        click.echo(f"{err}{suffix}{_did_you_mean(err, registry)}", err=True)
    if len(errors) > MAX_LISTED:
        click.echo(f"... and {len(errors) - MAX_LISTED:,} more bad lines ({len(errors):,} in all)", err=True)
    if any(isinstance(e.error, NotJsonl) for e in errors):
        click.echo(f"note: {EXPECTED}, each a JSON object (not CSV, a JSON array or a compressed file)", err=True)


def _did_you_mean(err: Any, registry: Registry) -> str:
    """A hint after an unknown model id; the error itself stays exactly as the API words it."""
    close = registry.suggest(err.error.model_id) if isinstance(err.error, ModelNotFound) else []
    return f"  (did you mean {' or '.join(close)}?)" if close else ""


@contextmanager
def _spooled(file: str) -> Iterator[Path]:
    """A path to read (twice): the file itself, or stdin copied to a temporary file in small blocks."""
    if file != "-":
        path = Path(file)
        if not path.is_file():
            raise click.ClickException(f"{file}: no such file")
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="otb-stdin-", suffix=".jsonl") as tmp:
        shutil.copyfileobj(sys.stdin.buffer, tmp, length=1 << 20)
        tmp.flush()
        yield Path(tmp.name)


@main.command("submit")
@click.argument("file")
@_with_submit_options
@click.option("--json", "as_json", is_flag=True, help="Print {\"id\": ...} (and errors) as JSON.")
@click.option("--wait", is_flag=True, help="Follow the batch until every request has a result.")
@friendly
def submit_cmd(file: str, keep_valid: bool, drop_unsupported_params: bool, metadata: tuple[str, ...],
               completion_window: float | None, idempotency_key: str | None, max_cost: Decimal | None,
               as_json: bool, wait: bool) -> None:
    """Validate FILE (JSONL; - for stdin) and enqueue it. Prints the batch id.

    With --wait, follows the batch to the end; the exit status is then 2 if any request errored or expired.
    """
    settings = _settings()
    registry = _registry(settings)
    conn = _shared_redis(settings)
    bid = _validate_and_submit(conn, settings, registry, file, keep_valid, drop_unsupported_params, metadata, as_json,
                               completion_window, idempotency_key, max_cost)
    if not wait:
        click.echo(_dumps({"id": bid}) if as_json else bid)
        return
    if not as_json:
        click.echo(bid)
    status = _follow(settings, registry, bid)
    click.echo(_dumps(status) if as_json else _status_text(status))
    _exit_if_some_failed(status)


def _exit_if_some_failed(status: dict[str, Any]) -> None:
    counts = status["request_counts"]
    if counts["errored"] or counts["expired"]:
        sys.exit(SOME_FAILED)


def _follow(settings: Settings, registry: Registry, bid: str) -> dict[str, Any]:
    """Follow a batch to the end on stderr; Ctrl-C stops following, not the batch."""
    from producer.client import Client
    from producer.progress import follow

    client = Client(_shared_redis(settings, retries=0), settings, registry)  # fails fast: follow shows the retrying
    try:
        return follow(client, bid, sys.stderr)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following {bid}; the batch goes on in the workers. Follow it with "
                   f"`otb status {bid} --watch`, stop it with `otb cancel {bid}`.", err=True)
        sys.exit(130)


# -- status / results --------------------------------------------------------------------------
def _status_text(s: dict[str, Any]) -> str:
    c, cost = s["request_counts"], s["cost"]
    return "\n".join([
        f"{s['id']}  {s['status']}",
        f"requests  {c['total']} total, {c['succeeded']} succeeded, {c['errored']} errored, "
        f"{c['canceled']} canceled, {c['expired']} expired, {c['processing']} processing",
        f"cost      ${cost['total']}  (input {cost['input']}, cache_read {cost['cache_read']}, "
        f"cache_write {cost['cache_write']}, output {cost['output']})",
        f"spent     ${s['spent']}  (billed by providers for every answer received, repeats included)",
        *([f"budget    ${s['max_cost']}"] if s.get("max_cost") else []),
        *([f"parked    {s['parked']['requests']} requests until "
           f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(s['parked']['until']))}: {s['parked']['reason']}"]
          if s.get("parked") else []),
    ])


@main.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True, help="Follow the batch to the end with a live progress bar.")
@friendly
def status(batch_id: str, as_json: bool, watch: bool) -> None:
    """Show a batch's status, request counts and cost so far."""
    if watch:
        settings = _settings()
        s = _follow(settings, _registry(settings), batch_id)
    else:
        s = _client().status(batch_id)
    click.echo(_dumps(s) if as_json else _status_text(s))


@main.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print {\"object\": \"list\", \"data\": [status, ...]}.")
@friendly
def batches(limit: int, as_json: bool) -> None:
    """List the newest batches: id, status, when, request counts and cost."""
    from producer.report import format_columns

    found = _client().batches(limit)
    if as_json:
        click.echo(_dumps({"object": "list", "data": found}))
        return
    rows = [[s["id"], s["status"], _when(s["created_at"]), *(str(s["request_counts"][k]) for k in BATCH_COUNTS),
             s["cost"]["total"]] for s in found]
    click.echo(format_columns(["id", "status", "created (UTC)", *BATCH_COUNTS, "$ cost"], rows,
                              text_columns=frozenset({0, 1, 2})))


BATCH_COUNTS = ("total", "succeeded", "errored", "canceled", "expired", "processing")


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) if stamp else "-"


@main.command()
@click.argument("batch_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to a file instead of stdout.")
@friendly
def results(batch_id: str, output: str | None) -> None:
    """Write the OpenAI batch output lines (plus cost) in input order."""
    from producer.client import write_jsonl

    client = _client()
    s = client.status(batch_id)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            n = write_jsonl(client.results(batch_id), fh)
        click.echo(f"wrote {n} result lines to {output}", err=True)
    else:
        n = write_jsonl(client.results(batch_id), sys.stdout)
    if s["request_counts"]["processing"]:
        click.echo(f"note: {s['request_counts']['processing']} requests have no result yet", err=True)


@main.command("cancel")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the batch status as JSON.")
@friendly
def cancel_cmd(batch_id: str, as_json: bool) -> None:
    """Stop a batch: unstarted requests end as batch_cancelled, in-flight ones finish; results are kept."""
    client = _client()
    client.cancel(batch_id)
    s = client.status(batch_id)
    click.echo(_dumps(s) if as_json else f"{batch_id}: {s['status']}")


@main.command("retry")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print {\"id\", \"retried\"} as JSON.")
@friendly
def retry_cmd(batch_id: str, as_json: bool) -> None:
    """Re-run only the errored requests of a batch (results of the others are kept)."""
    n = _client().retry(batch_id)
    click.echo(_dumps({"id": batch_id, "retried": n}) if as_json else f"{batch_id}: {n} errored requests re-enqueued")


# -- estimate ----------------------------------------------------------------------------------
@main.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print the otb.estimate/1 JSON.")
@friendly
def estimate(file: str, as_json: bool) -> None:
    """Expected and maximum cost of FILE per model, before anything is sent (nothing is enqueued)."""
    from producer.batchfile import Limits, read_batch
    from producer.estimate import estimate as run_estimate
    from producer.report import format_columns

    settings = _settings()
    registry = _registry(settings)
    parsed = read_batch(_read_lines(file), registry, drop_unsupported=True,
                        limits=Limits(settings.max_line_bytes, settings.max_lines))
    _print_line_errors(parsed.errors, registry, " (not counted)")
    data = run_estimate(parsed, registry)
    if as_json:
        click.echo(_dumps(data))
        return
    head = ["model", "reqs", "input tok (est)", "output tok (est)", "output tok (max)", "$ expected (est)", "$ max (bound)"]
    body = [[r.get("model", "total"), str(r["requests"]), str(r["input_tokens"]), str(r["output_tokens_expected"]),
             str(r["output_tokens_max"]), r["cost_expected"], r["cost_max"]] for r in [*data["rows"], data["total"]]]
    click.echo(format_columns(head, body, separator_before_last=True))
    click.echo(f"prices in effect on {data['priced_on']}; input tokens are estimated from the text (chars/4), "
               "the max assumes every request uses its whole output limit, expected assumes typical answers")


# -- report ------------------------------------------------------------------------------------
@main.command()
@click.option("--by", "group_by", multiple=True, default=("model",), show_default=True,
              help="Group rows by batch, model, provider, day, tag (the whole tag set) or tag:KEY; repeatable.")
@click.option("--batch", "batch_id", help="Only this batch.")
@click.option("--model", help="Only this model id (requested or billed).")
@click.option("--provider", type=click.Choice(["anthropic", "google"]), help="Only this provider.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only results carrying this tag; repeatable.")
@click.option("--since", help="From this date or datetime (hour resolution).")
@click.option("--until", help="Until this date or datetime, exclusive (hour resolution).")
@click.option("--timezone", default="UTC", show_default=True, help="Zone for days and for --since/--until.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write a self-contained HTML page with charts.")
@friendly
def report(group_by: tuple[str, ...], batch_id: str | None, model: str | None, provider: str | None,
           tags: tuple[str, ...], since: str | None, until: str | None, timezone: str, fmt: str,
           html_path: str | None) -> None:
    """Cost and tokens from the running aggregates, grouped and filtered; exact to the last digit."""
    from producer.report import GROUPS, Query, build_report, render_csv, render_table

    for g in group_by:
        if g not in GROUPS and not g.startswith("tag:"):
            raise click.BadParameter(f"{g!r}: use one of {', '.join(GROUPS)} or tag:KEY", param_hint="--by")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except Exception:
        raise click.BadParameter(f"unknown time zone {timezone!r} (e.g. UTC, Europe/Lisbon)", param_hint="--timezone") from None
    settings = _settings()
    query = Query(group_by=list(group_by), batch=batch_id, model=model, provider=provider,
                  tags=_parse_metadata(tags), since=_moment(since, "--since"), until=_moment(until, "--until"),
                  timezone=timezone)
    data = build_report(_shared_redis(settings), settings.key_prefix, query)
    if html_path:
        from producer.html_report import render_html

        Path(html_path).write_text(render_html(data), encoding="utf-8")
        click.echo(f"wrote {html_path}", err=True)
    click.echo(_dumps(data) if fmt == "json" else render_csv(data).rstrip("\n") if fmt == "csv" else render_table(data))


def _moment(text: str | None, option: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (2026-11-27) or datetime (2026-11-27T14:00)",
                                 param_hint=option) from None


# -- worker ------------------------------------------------------------------------------------
@main.command()
@click.option("--concurrency", type=click.IntRange(1, 10_000), help="HTTP calls in flight per process (default 64, OTB_CONCURRENCY).")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--name", help="Worker name (default: RQ's).")
@friendly
def worker(concurrency: int | None, burst: bool, name: str | None) -> None:
    """Run an RQ worker (JSON serializer) that processes batch chunks concurrently."""
    from worker.rqworker import run_worker

    settings = _settings()
    if concurrency:
        settings = settings.with_(concurrency=concurrency)
    _registry(settings)  # a malformed registry stops the worker here, not mid-batch
    _shared_redis(settings)
    click.echo(f"otb worker: queue {settings.queue_name!r} on {_safe_url(settings.redis_url or '')}, "
               f"concurrency {settings.concurrency}, keys for {sorted(settings.api_keys) or 'no provider'}", err=True)
    # RQ logs a line per job at INFO: only with -v, so two workers in a terminal do not flood it
    run_worker(settings, burst=burst, name=name, logging_level=logging.getLevelName(logging.getLogger().level))


# -- emulator ----------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option("--latency-ms", default=0.0, show_default=True, help="Added to every call.")
@click.option("--jitter-ms", default=0.0, show_default=True)
@click.option("--error-rate", default=0.0, show_default=True, help="Fraction answered 500/503/529.")
@click.option("--rate-429", default=0.0, show_default=True, help="Fraction answered 429 with Retry-After.")
@click.option("--retry-after", default=1.0, show_default=True, help="Seconds sent in Retry-After.")
@click.option("--seed", type=int, help="Seed for the random faults.")
@click.option("--rpm-limit", default=0, show_default=True, help="Per-model requests per minute before 429 (0: none).")
@click.option("--tpm-limit", default=0, show_default=True, help="Per-model input tokens per minute before 429 (0: none).")
def emulator(host: str, port: int, latency_ms: float, jitter_ms: float, error_rate: float, rate_429: float,
             retry_after: float, seed: int | None, rpm_limit: int, tpm_limit: int) -> None:
    """Serve the Anthropic and Gemini wire formats locally (point OTB_*_BASE_URL at it)."""
    from worker.emulator import EmulatorConfig, serve

    config = EmulatorConfig(latency_ms=latency_ms, jitter_ms=jitter_ms, error_rate=error_rate, rate_429=rate_429,
                            retry_after=retry_after, seed=seed, rpm_limit=rpm_limit, tpm_limit=tpm_limit)
    try:
        serve(host, port, config, _registry(_settings()))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise click.ClickException(f"port {port} on {host} is already in use (another emulator?): "
                                   "stop it, or pick another with --port") from None


# -- run / demo --------------------------------------------------------------------------------
@main.command()
@click.argument("file")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write result lines here.")
@_with_submit_options
@click.option("--emulator/--no-emulator", "use_emulator", default=False,
              help="Send to the built-in provider emulator instead of the real APIs.")
@click.option("--latency-ms", default=0.0, help="Emulator latency per call.")
@friendly
def run(file: str, output: str | None, keep_valid: bool, drop_unsupported_params: bool,
        metadata: tuple[str, ...], completion_window: float | None, idempotency_key: str | None,
        max_cost: Decimal | None, use_emulator: bool, latency_ms: float) -> None:
    """Submit, process and report FILE in one process (embedded Redis when REDIS_URL is unset).

    The exit status is 2 if any request errored or expired.
    """
    status = _run_and_report(file, output, keep_valid, drop_unsupported_params, metadata, use_emulator, latency_ms,
                             show_lines=False, completion_window=completion_window, idempotency_key=idempotency_key,
                             max_cost=max_cost)
    _exit_if_some_failed(status)


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write result lines here.")
@friendly
def demo(output: str | None) -> None:
    """Run the bundled example batch (both providers, chat + embeddings, one bad line) on the emulator."""
    click.echo(f"demo batch: {EXAMPLE}", err=True)
    _run_and_report(str(EXAMPLE), output, True, False, ("source=demo",), True, 20.0, show_lines=True)


def _run_and_report(file: str, output: str | None, keep_valid: bool, drop: bool, metadata: tuple[str, ...],
                    use_emulator: bool, latency_ms: float, *, show_lines: bool,
                    completion_window: float | None = None, idempotency_key: str | None = None,
                    max_cost: Decimal | None = None) -> dict[str, Any]:
    from contextlib import ExitStack

    from producer.client import Client, write_jsonl
    from producer.local import connect, drain, emulated
    from producer.report import Query, build_report, render_table
    from worker.emulator import EmulatorConfig

    settings = _settings()
    registry = _registry(settings)
    with ExitStack() as stack:
        if use_emulator:
            settings = stack.enter_context(emulated(settings, registry, EmulatorConfig(latency_ms=latency_ms)))
        conn = connect(settings)
        where = "embedded Redis" if not settings.redis_url else _safe_url(settings.redis_url)
        bid = _validate_and_submit(conn, settings, registry, file, keep_valid, drop, metadata, False,
                                   completion_window, idempotency_key, max_cost)
        click.echo(f"{bid}: submitted to {where}; processing in this process"
                   + (" against the built-in emulator" if use_emulator else ""), err=True)
        started = time.monotonic()
        drain(conn, settings)
        elapsed = time.monotonic() - started
        client = Client(conn, settings, registry)
        status = client.status(bid)
        lines = list(client.results(bid))
        report = build_report(conn, settings.key_prefix, Query(group_by=["model"], batch=bid))
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            write_jsonl(lines, fh)
        click.echo(f"wrote {len(lines)} result lines to {output}", err=True)
    if show_lines:
        click.echo(_result_lines_text(lines))
    click.echo(render_table(report))
    click.echo(_status_text(status))
    click.echo(f"processed in {elapsed:.2f} s", err=True)
    return status


def _result_lines_text(lines: list[dict[str, Any]]) -> str:
    out = []
    for line in lines:
        meta = line.get("meta") or {}
        if meta.get("outcome") == "succeeded":
            body = line["response"]["body"]
            if body.get("object") == "list":
                gist = f"{len(body['data'])} embedding(s) of {len(body['data'][0]['embedding'])} dims"
            else:
                msg = body["choices"][0]["message"]
                calls = msg.get("tool_calls") or []
                gist = (msg.get("content") or "")[:60] or ", ".join(f"calls {c['function']['name']}" for c in calls)
        else:
            err = line.get("error") or (line.get("response") or {}).get("body", {}).get("error", {})
            gist = f"ERROR {err.get('code')}: {err.get('message')}"
        out.append(f"{line['custom_id']:<22} {str(meta.get('model')):<32} ${line['cost']['total']:<12} {gist}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
