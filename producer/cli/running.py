"""Processes: `otb worker`, `otb emulator`, and `otb run` / `otb demo` (submit, work and report in one process)."""

from __future__ import annotations

import errno
import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import exit_if_some_failed, friendly, registry_of, safe_url, settings_from_env, shared_redis, status_text
from .submitting import submit_file, with_submit_options

if TYPE_CHECKING:
    from producer.options import SubmitOptions

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "demo.jsonl"
DEMO_METADATA = {"source": "demo"}


@click.command()
@click.option("--concurrency", type=click.IntRange(1, 10_000), help="HTTP calls in flight per process (default 64, OTB_CONCURRENCY).")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty and no native provider batch is open "
              "(it polls those until they end).")
@click.option("--name", help="Worker name (default: RQ's).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (README, Metrics).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Address the metrics are served on.")
@friendly
def worker(concurrency: int | None, burst: bool, name: str | None, metrics_port: int | None, metrics_host: str) -> None:
    """Run an RQ worker (JSON serializer) that processes batch chunks concurrently."""
    from worker.rqworker import run_worker

    settings = settings_from_env()
    if concurrency:
        settings = settings.with_(concurrency=concurrency)
    registry_of(settings)  # a malformed registry stops the worker here, not mid-batch
    shared_redis(settings)
    click.echo(f"otb worker: queue {settings.queue_name!r} on {safe_url(settings.redis_url or '')}, "
               f"concurrency {settings.concurrency}, keys for {sorted(settings.api_keys) or 'no provider'}", err=True)
    # RQ logs a line per job at INFO: only with -v, so two workers in a terminal do not flood it
    run_worker(settings, burst=burst, name=name, logging_level=logging.getLevelName(logging.getLogger().level),
               metrics_port=metrics_port, metrics_host=metrics_host)


@click.command()
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
@click.option("--flex-shed-rate", default=0.0, show_default=True, help="Fraction of Gemini flex calls shed (503).")
@click.option("--batch-delay", default=0.5, show_default=True, help="Seconds a native batch job takes to process.")
@click.option("--batch-cancel", default=0.0, show_default=True, help="Seconds a cancelled Anthropic batch stays canceling.")
def emulator(host: str, port: int, latency_ms: float, jitter_ms: float, error_rate: float, rate_429: float,
             retry_after: float, seed: int | None, rpm_limit: int, tpm_limit: int, flex_shed_rate: float,
             batch_delay: float, batch_cancel: float) -> None:
    """Serve the Anthropic and Gemini wire formats locally (point OTB_*_BASE_URL at it)."""
    from worker.emulator import EmulatorConfig, serve

    config = EmulatorConfig(latency_ms=latency_ms, jitter_ms=jitter_ms, error_rate=error_rate, rate_429=rate_429,
                            retry_after=retry_after, seed=seed, rpm_limit=rpm_limit, tpm_limit=tpm_limit,
                            flex_shed_rate=flex_shed_rate, batch_delay_s=batch_delay, batch_cancel_s=batch_cancel)
    try:
        serve(host, port, config, registry_of(settings_from_env(redis=False)))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise click.ClickException(f"port {port} on {host} is already in use (another emulator?): "
                                   "stop it, or pick another with --port") from None


@click.command()
@click.argument("file")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write result lines here.")
@with_submit_options
@click.option("--emulator/--no-emulator", "use_emulator", default=False,
              help="Send to the built-in provider emulator instead of the real APIs.")
@click.option("--latency-ms", default=0.0, help="Emulator latency per call.")
@friendly
def run(file: str, output: str | None, options: SubmitOptions, use_emulator: bool, latency_ms: float) -> None:
    """Submit, process and report FILE in one process (embedded Redis when REDIS_URL is unset).

    The exit status is 2 if any request errored or expired.
    """
    status = _run_and_report(file, output, options, use_emulator, latency_ms, show_lines=False)
    exit_if_some_failed(status)


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write result lines here.")
@friendly
def demo(output: str | None) -> None:
    """Run the bundled example batch (both providers, chat + embeddings, one bad line) on the emulator."""
    from producer.options import SubmitOptions

    click.echo(f"demo batch: {EXAMPLE}", err=True)
    now = _run_and_report(str(EXAMPLE), output, SubmitOptions(keep_valid=True, metadata=DEMO_METADATA), True, 20.0,
                          show_lines=True)
    click.echo("\nthe same batch for a caller who can wait: --mode auto --completion-window 24h "
               "(the providers' batch APIs, at half price)", err=True)
    later = _run_and_report(str(EXAMPLE), None, SubmitOptions(keep_valid=True, metadata=DEMO_METADATA, mode="auto",
                                                              completion_window=86400), True, 20.0,
                            show_lines=False, show_table=False, native_poll_interval=0.5)
    click.echo(f"real time ${now['cost']['total']}, half price ${later['cost']['total']}: "
               f"saved ${later.get('saved') or '0'}")


def _run_and_report(file: str, output: str | None, options: SubmitOptions, use_emulator: bool, latency_ms: float, *,
                    show_lines: bool, show_table: bool = True, native_poll_interval: float | None = None
                    ) -> dict[str, Any]:
    from producer.client import Client, write_jsonl
    from producer.local import connect, drain, emulated
    from producer.report import Query, build_report, render_table
    from worker.emulator import EmulatorConfig

    settings = settings_from_env()
    if native_poll_interval is not None:  # the demo's emulator answers batches at once: look again soon
        settings = settings.with_(native_poll_interval=native_poll_interval)
    registry = registry_of(settings)
    with ExitStack() as stack:
        if use_emulator:
            settings = stack.enter_context(emulated(settings, registry, EmulatorConfig(latency_ms=latency_ms)))
        conn = connect(settings)
        where = "embedded Redis" if not settings.redis_url else safe_url(settings.redis_url)
        bid = submit_file(conn, settings, registry, file, options, False)
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
    if show_table:
        click.echo(render_table(report))
    click.echo(status_text(status))
    click.echo(f"processed in {elapsed:.2f} s", err=True)
    return status


def _result_lines_text(lines: list[dict[str, Any]]) -> str:
    """One line per result for the demo: id, model, cost and the gist of the answer or the error."""
    return "\n".join(f"{line['custom_id']:<22} {str((line.get('meta') or {}).get('model')):<32} "
                     f"${line['cost']['total']:<12} {_gist(line)}" for line in lines)


def _gist(line: dict[str, Any]) -> str:
    if (line.get("meta") or {}).get("outcome") != "succeeded":
        err = line.get("error") or (line.get("response") or {}).get("body", {}).get("error", {})
        return f"ERROR {err.get('code')}: {err.get('message')}"
    body = line["response"]["body"]
    if body.get("object") == "list":
        return f"{len(body['data'])} embedding(s) of {len(body['data'][0]['embedding'])} dims"
    msg = body["choices"][0]["message"]
    calls = msg.get("tool_calls") or []
    return str((msg.get("content") or "")[:60] or ", ".join(f"calls {c['function']['name']}" for c in calls))
