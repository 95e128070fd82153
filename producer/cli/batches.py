"""Commands on batches that exist: `otb status`, `otb batches`, `otb results`, `otb cancel`, `otb retry`."""

from __future__ import annotations

import sys
import time

import click

from .common import client, count, dumps, friendly, registry_of, settings_from_env, shared_redis, status_text
from .submitting import follow

BATCH_COUNTS = ("total", "succeeded", "errored", "canceled", "expired", "processing")


@click.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True, help="Follow the batch to the end with a live progress bar.")
@friendly
def status(batch_id: str, as_json: bool, watch: bool) -> None:
    """Show a batch's status, request counts and cost so far."""
    settings = settings_from_env()
    if watch:
        s = follow(settings, registry_of(settings), batch_id)
    else:  # the store alone: a status must answer fast (no registry, no Client)
        from producer.status import batch_status
        from worker.store import Store

        s = batch_status(Store.of(shared_redis(settings), settings), batch_id, settings)
    click.echo(dumps(s) if as_json else status_text(s))


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print {\"object\": \"list\", \"data\": [status, ...]}.")
@friendly
def batches(limit: int, as_json: bool) -> None:
    """List the newest batches: id, status, when, request counts and cost."""
    from producer.report import format_columns

    found = client().batches(limit)
    if as_json:
        click.echo(dumps({"object": "list", "data": found}))
        return
    rows = [[s["id"], s["status"], _when(s["created_at"]), *(str(s["request_counts"][k]) for k in BATCH_COUNTS),
             s["cost"]["total"]] for s in found]
    click.echo(format_columns(["id", "status", "created (UTC)", *BATCH_COUNTS, "$ cost"], rows,
                              text_columns=frozenset({0, 1, 2})))


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) if stamp else "-"


@click.command()
@click.argument("batch_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to a file instead of stdout.")
@friendly
def results(batch_id: str, output: str | None) -> None:
    """Write the OpenAI batch output lines (plus cost) in input order."""
    from producer.client import write_jsonl

    api = client()
    s = api.status(batch_id)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            n = write_jsonl(api.results(batch_id), fh)
        click.echo(f"wrote {n} result lines to {output}", err=True)
    else:
        write_jsonl(api.results(batch_id), sys.stdout)
    if s["request_counts"]["processing"]:
        click.echo(f"note: {count(s['request_counts']['processing'], 'request')} without a result yet", err=True)


@click.command("cancel")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the batch status as JSON.")
@friendly
def cancel_cmd(batch_id: str, as_json: bool) -> None:
    """Stop a batch: unstarted requests end as batch_cancelled, in-flight ones finish; results are kept."""
    api = client()
    api.cancel(batch_id)
    s = api.status(batch_id)
    click.echo(dumps(s) if as_json else f"{batch_id}: {s['status']}")


@click.command("retry")
@click.argument("batch_id")
@click.option("--expired", is_flag=True, help="Also re-run what expired or was cancelled (an expired or cancelled "
              "batch opens again).")
@click.option("--json", "as_json", is_flag=True, help="Print {\"id\", \"retried\"} as JSON.")
@friendly
def retry_cmd(batch_id: str, expired: bool, as_json: bool) -> None:
    """Re-run only the errored requests of a batch (results of the others are kept), in the route its mode
    and window allow; a window that has ended starts again."""
    api = client()
    n = api.retry(batch_id, expired=expired)
    what = "errored, expired or cancelled" if expired else "errored"
    if as_json:
        click.echo(dumps({"id": batch_id, "retried": n}))
        return
    click.echo(f"{batch_id}: {count(n, what + ' request')} re-enqueued")
    errored = api.status(batch_id)["request_counts"]["errored"] if n == 0 else 0
    if errored:  # what is left errored was refused at submit (--keep-valid): running it again would refuse it again
        click.echo(f"note: {count(errored, 'errored line')} {'was' if errored == 1 else 'were'} refused at submit "
                   f"(their errors: `otb results {batch_id}`); running them again would refuse them again: fix "
                   f"and submit them anew", err=True)
