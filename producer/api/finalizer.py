"""Finish API batches: write the output and error files once the engine is done, then make the batch final.

Every `otb serve` runs a `Finalizer` thread. It wakes on the engine's stream of batch ends
(`{p}:events`) and, every `SWEEP_S`, looks at every open API batch (`{p}:api:open`): a batch the
engine is done with is finalized, and one left `validating` by a server that died is validated
again. A GET of a done batch may finalize it inline: the same function, under the same lock.

Finalizing streams the engine's results (Store.iter_results, input order) into two FileWriters of
the tenant: 2xx lines to the output file, every other line (4xx/5xx answers, no answer,
batch_cancelled, batch_expired) to the error file, each in OpenAI's line format with our `cost` and
`meta`. The files are staged (invisible, short-lived) while written, and appear in the one
transaction that also makes the record final and freezes its figures (the key's spend took each
result's cost as it was committed: the engine batch's pool is the tenant). So a server killed mid-write leaves no visible file (its chunks expire) and another server
writes them again once its lock lapses; two servers can never both commit, since the transaction
checks that the record is still open.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from decimal import Decimal
from typing import Any, cast

import redis

from worker import clock
from worker.pricing import to_pico

from . import batchcreate
from .batchcontext import BatchContext
from .batchlock import BatchLock
from .batchobject import ENDED, figures, final_status, lost_error
from .batchrecords import BatchRecord
from .codec import text
from .filestore import BATCH_FILE_TTL, FileWriter
from .tenants import SPENT

log = logging.getLogger("otb.api.batches")
SWEEP_S = 10.0  # seconds between looks at every open batch (the engine's events wake it sooner)
BLOCK_MS = 2000  # the longest wait on the events stream (so a stop is seen within it)


def finalize(ctx: BatchContext, record: BatchRecord) -> BatchRecord | None:
    """The batch made final if the engine is done with it; None if another server holds it now."""
    lock = BatchLock(ctx.conn, ctx.records.keys.api_batch_lock(record.tenant, record.id))
    if not lock.acquire():
        return None
    with lock:
        fresh = ctx.records.get(record.tenant, record.id)
        if fresh is None or fresh.status != "in_progress":
            return fresh
        engine = ctx.store.status(fresh.id)
        final = final_status(engine)
        return fresh if final is None else _finish(ctx, fresh, engine, final)


def _finish(ctx: BatchContext, record: BatchRecord, engine: dict[str, Any] | None, final: str) -> BatchRecord | None:
    now = int(clock.now())
    writers: list[FileWriter] = []
    changes: dict[str, Any] = {"status": final, f"{final}_at": now, "figures": figures(engine)}
    if final == "failed":
        changes["errors"] = [lost_error(engine)]
    else:
        if final != "cancelled":  # (a cancelled batch goes from cancelling to cancelled, as at OpenAI)
            ctx.records.mark(record, "finalizing_at", now)
        out, err = write_outputs(ctx, record)
        writers = [w for w in (out, err) if w.size]
        changes.update(output_file_id=out.id if out.size else None, error_file_id=err.id if err.size else None)
    if final == "cancelled" and "cancelling_at" not in record.times:
        changes["cancelling_at"] = now  # cancelled outside the API (otb cancel)
    spend = 0 if pooled(ctx, record.id) else to_pico(Decimal(changes["figures"]["cost"]["total"]))
    ttl = record.output_ttl or BATCH_FILE_TTL

    def with_files(pipe: Any) -> None:
        for writer in writers:
            kind = "output" if writer.id == changes["output_file_id"] else "error"
            writer.queue_commit(pipe, filename=f"{record.id}_{kind}.jsonl", purpose="batch_output", ttl=ttl)
        if spend:  # a batch submitted before batches had pools: its commits did not add to the key's spend
            pipe.hincrby(ctx.records.keys.tenant(record.tenant), SPENT, spend)

    try:
        done = ctx.records.update(record, "in_progress", also=with_files, **changes)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    if done is None:
        for writer in writers:
            writer.abort()  # another server made it final first: its files are the batch's
        return ctx.records.get(record.tenant, record.id)
    ctx.ended(record.tenant, record.id, final)
    return done


def pooled(ctx: BatchContext, bid: str) -> bool:
    """Did the engine batch's commits add its spend to its tenant's (it has a pool)? A batch whose record
    is gone has no figures to add either way."""
    options = ctx.conn.hget(ctx.records.keys.batch(bid), "options")
    return options is None or bool(json.loads(options).get("pool"))


def write_outputs(ctx: BatchContext, record: BatchRecord) -> tuple[FileWriter, FileWriter]:
    """The result lines split into the output (2xx) and error files, staged, one page of results in memory."""
    out, err = ctx.files.writer(record.tenant), ctx.files.writer(record.tenant)
    try:
        for line in ctx.store.iter_results(record.id):
            if line is None:
                continue  # no result (a lost one): nothing to write
            status = (line.get("response") or {}).get("status_code") or 0
            target = out if 200 <= status < 300 else err
            target.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        out.flush()
        err.flush()
    except BaseException:
        out.abort()
        err.abort()
        raise
    return out, err


def settle(ctx: BatchContext, tenant: str, bid: str) -> None:
    """Move one open batch on: finalize it if the engine is done, validate it again if its creator died,
    run the hooks of one made final by a server that died before it could."""
    record = ctx.records.get(tenant, bid)
    if record is None:
        ctx.records.forget_open(bid)  # expired
    elif record.status == "in_progress":
        finalize(ctx, record)
    elif record.status == "validating":
        resume(ctx, record)
    else:
        ctx.ended(tenant, bid, record.status)


def resume(ctx: BatchContext, record: BatchRecord) -> None:
    """Validate and submit again a batch whose creating server died (its lock lapsed)."""
    lock = BatchLock(ctx.conn, ctx.records.keys.api_batch_lock(record.tenant, record.id))
    if not lock.acquire():
        return  # its creator is still at it
    with lock:
        fresh = ctx.records.get(record.tenant, record.id)
        if fresh is not None and fresh.status == "validating":
            log.warning("batch %s was left validating (its server stopped): validating it again", record.id)
            batchcreate.start(ctx, fresh)


class Finalizer(threading.Thread):
    """The background finalizer of one server process."""

    def __init__(self, ctx: BatchContext, sweep_s: float = SWEEP_S) -> None:
        super().__init__(name="otb-finalizer", daemon=True)
        self.ctx, self.sweep_s = ctx, sweep_s
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=BLOCK_MS / 1000 + 5)

    def run(self) -> None:
        last: str | None = None
        next_sweep = 0.0
        while not self.stopped.is_set():
            try:
                if last is None:
                    last = self._stream_end()
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.sweep_s
                last = self._follow(last)
            except redis.RedisError as exc:
                log.warning("finalizer: Redis unavailable (%s); retrying", exc)
                self.stopped.wait(1)
            except Exception:  # never let the finalizer die silently
                log.exception("finalizer pass failed")
                self.stopped.wait(1)

    def _stream_end(self) -> str:
        """Where to follow the events stream from: what is there already, the first sweep sees."""
        newest = cast(list[tuple[bytes, Any]], self.ctx.conn.xrevrange(self.ctx.records.keys.all_events, count=1))
        return text(newest[0][0]) if newest else "0-0"

    def _follow(self, last: str) -> str:
        """Wait for batch ends and settle those that are open API batches; the stream position after them."""
        got = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], self.ctx.conn.xread(
            {self.ctx.records.keys.all_events: last}, count=500, block=BLOCK_MS))
        ended: list[str] = []
        for _, entries in got or []:
            for entry_id, fields in entries:
                last = text(entry_id)
                if text(fields.get(b"status", b"")) in ENDED:
                    ended.append(text(fields.get(b"batch", b"")))
        # most ends are other batches' (each call is a batch): one HMGET tells which are API batches
        for bid, tenant in zip(ended, self.ctx.records.tenants_of_open(ended)):
            if tenant is not None:
                settle(self.ctx, tenant, bid)
        return last

    def sweep(self) -> None:
        """Look at every open batch: two reads each, in one round trip per page."""
        entries = list(self.ctx.records.open_batches())
        keys = self.ctx.records.keys
        for start in range(0, len(entries), 500):
            page = entries[start:start + 500]
            with self.ctx.conn.pipeline(transaction=False) as pipe:
                for bid, tenant in page:
                    pipe.hget(keys.api_batch(tenant, bid), "status")
                    pipe.hget(keys.batch(bid), "status")
                    pipe.exists(keys.api_batch_lock(tenant, bid))
                answers = pipe.execute()
            for i, (bid, tenant) in enumerate(page):
                phase, engine, locked = answers[3 * i: 3 * i + 3]
                phase = text(phase) if phase is not None else None
                engine_done = engine is None or text(engine) in ENDED
                if phase is None or (phase == "validating" and not locked) or (phase == "in_progress" and engine_done) \
                        or phase not in ("validating", "in_progress"):
                    settle(self.ctx, tenant, bid)
