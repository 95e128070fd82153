"""What things cost: `otb models` (prices), `otb estimate FILE` (before sending), `otb report` (after)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from worker import clock

from .common import LazyChoice, dumps, friendly, opened, print_line_errors, registry_of, settings_from_env, shared_redis

if TYPE_CHECKING:  # imported where used: `otb --help` loads no adapter, pydantic or registry
    from worker.registry import ModelSpec, Registry, TierPricing


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the GET /v1/models list shape.")
@click.option("--all", "show_all", is_flag=True, help="Include retired models.")
def models(as_json: bool, show_all: bool) -> None:
    """List the models you can call and their prices (USD per 1M tokens)."""
    from producer.report import format_columns

    registry = registry_of(settings_from_env(redis=False))
    today = clock.today()
    if as_json:
        click.echo(dumps(_catalog(registry, today, show_all)))
        return
    rows = [_model_row(m, today) for m in registry.models.values() if show_all or not m.is_retired(today)]
    head = ["id", "kind", "status", "input", "output", "cache_read", "cache_write", "batch in/out", "flex in/out",
            "lifecycle"]
    click.echo(format_columns(head, rows, text_columns=frozenset({0, 1, 2, 9})))
    click.echo("USD per 1M tokens, in effect today. batch: Anthropic Message Batches / Gemini Batch Mode; flex: "
               "Gemini's flex tier (otb submit --mode; both 50%, Gemini batch keeps cache reads at the standard rate)")


def _model_row(m: ModelSpec, today: dt.date) -> list[str]:
    """One model's line: prices in effect today (none once retired), status, and what its lifecycle holds."""
    retired = m.is_retired(today)
    lc = m.lifecycle
    if m.pricing is not None and not retired:
        r, _ = m.pricing.in_effect(today)
        prices = [format(p, "f") for p in (r.input, r.output, r.cache_read, r.cache_write)]
        prices += [_in_out(m.pricing.for_tier(tier), today) for tier in ("batch", "flex")]
    else:
        prices = ["-"] * 6
    status = "retired" if retired else lc.status
    when = f"retires {lc.retires_on}" if lc.retires_on and not retired else (f"since {lc.retires_on}" if retired else "")
    if lc.routed_to:
        when = (when + ", then " if lc.retires_on and lc.retires_on > today else "") + f"served as {lc.routed_to}"
    return [m.id, m.kind, status + (" (gated)" if m.access == "gated" else ""), *prices, when]


def _in_out(prices: TierPricing | None, today: dt.date) -> str:
    """A service tier's input/output price today, `-` when the model is not sold in it."""
    if prices is None:
        return "-"
    r, _ = prices.in_effect(today)
    return f"{format(r.input, 'f')}/{format(r.output, 'f')}"


def _catalog(registry: Registry, today: dt.date, show_all: bool) -> dict[str, Any]:
    """GET /v1/models; with --all the retired models too, marked with their retirement and replacement."""
    catalog = registry.catalog(today)
    if show_all:
        catalog["data"] += [{"id": m.id, "object": "model", "owned_by": m.owned_by, "retired_on": m.lifecycle.retires_on,
                             "replacement": m.lifecycle.replacement}
                            for m in registry.models.values() if m.is_retired(today)]
    return catalog


@click.command()
@click.argument("file")
@click.option("--mode", type=LazyChoice("worker.routes", "MODES"), help="Price each line on the route this mode gives it (see otb submit --mode) and show the saving.")
@click.option("--completion-window", metavar="DURATION", help="The window the batch would have (auto's choice depends on it).")
@click.option("--json", "as_json", is_flag=True, help="Print the otb.estimate/1 JSON.")
@friendly
def estimate(file: str, mode: str | None, completion_window: str | None, as_json: bool) -> None:
    """Expected and maximum cost of FILE per model (and route), before anything is sent (nothing is enqueued)."""
    from producer.batchfile import Limits, read_batch
    from producer.estimate import estimate as run_estimate
    from producer.options import BadOption, SubmitOptions, parse_duration
    from producer.report import format_columns
    from worker.routes import mode_note

    settings = settings_from_env(redis=False)
    registry = registry_of(settings)
    try:
        options = SubmitOptions(completion_window=parse_duration(completion_window), mode=mode)
    except BadOption as exc:
        raise click.BadParameter(exc.message, param_hint=exc.option) from None
    chosen = options.resolved_mode(settings)
    with opened(file) as lines:
        parsed = read_batch(lines, registry, drop_unsupported=True,
                            limits=Limits(settings.max_line_bytes, settings.max_lines), mode=chosen)
    print_line_errors(parsed.errors, registry, " (not counted)")
    if not parsed.lines:
        raise click.ClickException("the file has no request lines" if not parsed.errors or parsed.errors[0].number == 0
                                   else "no line is valid: nothing to estimate (fix them)")
    data = run_estimate(parsed, registry, mode=chosen, window=options.completion_window, settings=settings)
    if as_json:
        click.echo(dumps(data))
        return
    click.echo(format_columns(*_estimate_table(data), separator_before_last=True,
                              text_columns=frozenset({0, 1}) if chosen != "realtime" else frozenset({0})))
    click.echo(f"prices in effect on {data['priced_on']}; input tokens are estimated from the text (chars/4), "
               "the max assumes every request uses its whole output limit, expected assumes typical answers")
    if chosen != "realtime":
        note = mode_note(chosen)
        click.echo(f"mode {chosen}: expected ${data['total']['cost_expected']}, saving ${data['total']['saved_expected']} "
                   "against real time" + (f" ({note})" if note else ""))


def _estimate_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The estimate as columns; the route and the saving once a mode other than realtime is asked for."""
    routed = data["mode"] != "realtime"
    head = ["model", *(["route"] if routed else []), "reqs", "input tok (est)", "output tok (est)", "output tok (max)",
            *(["$ saved (est)"] if routed else []), "$ expected (est)", "$ max (bound)"]
    body = [[r.get("model", "total"), *([r.get("route", "")] if routed else []), str(r["requests"]),
             str(r["input_tokens"]), str(r["output_tokens_expected"]), str(r["output_tokens_max"]),
             *([r["saved_expected"]] if routed else []), r["cost_expected"], r["cost_max"]]
            for r in [*data["rows"], data["total"]]]
    return head, body


@click.command()
@click.option("--by", "group_by", multiple=True, default=("model",), show_default=True,
              help="Group rows by batch, model, provider, route (realtime, flex, native), day, tag (the whole tag "
                   "set) or tag:KEY; repeatable.")
@click.option("--batch", "batch_id", help="Only this batch.")
@click.option("--model", help="Only this model id (requested or billed).")
@click.option("--provider", type=LazyChoice("worker.providers", "ADAPTERS"), help="Only this provider.")
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
    from producer.report import Query, build_report, render_csv, render_table

    _check_groups(group_by)
    _check_zone(timezone)
    settings = settings_from_env()
    query = Query(group_by=list(group_by), batch=batch_id, model=model, provider=provider,
                  tags=_tags(tags), since=_moment(since, "--since"), until=_moment(until, "--until"),
                  timezone=timezone)
    from worker.keys import Keys

    conn = shared_redis(settings)
    if batch_id and not conn.exists(Keys(settings.key_prefix).batch(batch_id)):
        from producer.status import not_found

        raise click.ClickException(str(not_found(batch_id)))  # an all-zero report would read as a $0 batch
    data = build_report(conn, settings.key_prefix, query)
    if html_path:
        from producer.report import render_html

        Path(html_path).write_text(render_html(data), encoding="utf-8")
        click.echo(f"wrote {html_path}", err=True)
    click.echo(dumps(data) if fmt == "json" else render_csv(data).rstrip("\n") if fmt == "csv" else render_table(data))


def _check_groups(group_by: tuple[str, ...]) -> None:
    from producer.report import GROUPS

    for g in group_by:
        if g not in GROUPS and not g.startswith("tag:"):
            raise click.BadParameter(f"{g!r}: use one of {', '.join(GROUPS)} or tag:KEY", param_hint="--by")


def _check_zone(timezone: str) -> None:
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except Exception:
        raise click.BadParameter(f"unknown time zone {timezone!r} (e.g. UTC, Europe/Lisbon)", param_hint="--timezone") from None


def _tags(pairs: tuple[str, ...]) -> dict[str, str]:
    from producer.options import BadOption, parse_metadata

    try:
        return parse_metadata(pairs, "--tag")
    except BadOption as exc:
        raise click.BadParameter(exc.message, param_hint=exc.option) from None


def _moment(text: str | None, option: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (2026-11-27) or datetime (2026-11-27T14:00)",
                                 param_hint=option) from None
