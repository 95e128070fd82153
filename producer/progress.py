"""Progress of a running batch: done/total, errored, requests per second, cost so far, ETA.

On a terminal one line is redrawn in place with a bar; when output is a file or a pipe (CI logs,
`| tee`), a plain line is written every `every` seconds, whenever the note changes, and at the end,
so logs stay readable. A note says why nothing moves: Redis unreachable, no worker listening.
"""

from __future__ import annotations

import re
import time
from typing import Any, TextIO

import redis

from worker.connection import PATIENCE, RedisUnreachable

from .client import FINAL, Client, last_event_id, next_events

BAR = 24
NO_WORKER_AFTER = 5.0  # seconds a followed batch waits with no worker on its queue before we say so
HEARTBEAT = 1.0  # seconds: with no event, the bar (rate, ETA) and the notes are redrawn this often
REDRAW = 0.25  # seconds: while events flow, the bar is redrawn at most this often


def follow(client: Client, bid: str, out: TextIO) -> dict[str, Any]:
    """Show a batch's progress until it is final; returns its last status.

    Woken by the batch's event stream: each finished request redraws the bar (at most every
    REDRAW), the batch's end at once; with nothing happening it is redrawn every HEARTBEAT, for the
    rate, the ETA and the notes (and a `lost` batch, which ends without an event). Whether the batch
    is final is read from its status, never from an event: an old `completed` event stays in the
    stream after a `retry`.

    `client` should read through a connection that fails at once (retries=0), so a Redis restart
    shows as "Redis unreachable, retrying (Ns)" instead of a frozen bar; after the patience the
    workers have (PATIENCE) it gives up with RedisUnreachable. The batch itself is never touched.
    """
    progress = Progress(out, tty=out.isatty())
    watch = Watch(client)
    key, ends = client.store.keys.events(bid), client.store.keys.all_events
    cursor: str | None = None
    ends_cursor: str | None = None
    while True:
        try:
            cursor = cursor or last_event_id(client.conn, key)  # before the status: no later event is missed
            ends_cursor = ends_cursor or last_event_id(client.conn, ends)
            status = client.status(bid)
            if status["status"] in FINAL:
                progress.finish(status)
                return status
            progress.update(status, watch.note(status))
            cursor, ends_cursor = _next_wake(client, (key, cursor), (ends, ends_cursor))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            down = watch.unreachable()
            if down > PATIENCE:
                raise RedisUnreachable(f"Redis unreachable for {down:.0f} s; stopped following {bid}, "
                                       f"which goes on (see it with `otb status {bid}`): {exc}") from exc
            progress.update(None, f"Redis unreachable, retrying ({down:.0f}s)")
            time.sleep(1.0)


def _next_wake(client: Client, batch: tuple[str, str], ends: tuple[str, str]) -> tuple[str, str]:
    """Block until the batch's stream has new events (or HEARTBEAT passes); returns the new cursors
    of the batch's stream and of every batch's end (`all_events`).

    While events flow, waits out the rest of REDRAW, so a fast batch is not redrawn thousands of
    times a second; that wait is a blocking read of `all_events`, which wakes at once when a batch
    ends, so the batch's own end is never waited on (it used to be, by up to REDRAW)."""
    (key, cursor), (ends_key, ends_cursor) = batch, ends
    started = time.monotonic()
    read = next_events(client.conn, key, cursor, int(HEARTBEAT * 1000))
    if not read:
        return cursor, ends_cursor
    if all(event.get("type") != "batch" for _, event in read):
        left = REDRAW - (time.monotonic() - started)
        if left > 0.001:
            ended = next_events(client.conn, ends_key, ends_cursor, int(left * 1000))
            ends_cursor = ended[-1][0] if ended else ends_cursor
    return read[-1][0], ends_cursor


class Watch:
    """Why a followed batch does not move: how long Redis has been unreachable, whether any worker listens."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.down_since: float | None = None
        self.no_worker_since: float | None = None
        self.checked = 0.0

    def unreachable(self) -> float:
        """Seconds since Redis stopped answering (0 on the first failure)."""
        now = time.monotonic()
        self.down_since = self.down_since or now
        return now - self.down_since

    def note(self, status: dict[str, Any]) -> str | None:
        """Redis answered: a note if requests have waited NO_WORKER_AFTER seconds with no worker on the queue."""
        self.down_since = None
        now = time.monotonic()
        if now - self.checked >= 1.0:
            self.checked = now
            idle = status["request_counts"]["processing"] and not self.client.listening_workers()
            self.no_worker_since = (self.no_worker_since or now) if idle else None
        if self.no_worker_since is not None and now - self.no_worker_since >= NO_WORKER_AFTER:
            queue = self.client.settings.queue_name
            return (f"no worker is listening on queue {queue!r}: start one with `otb worker` "
                    "(same REDIS_URL) and the batch goes on")
        return None


class Progress:
    def __init__(self, out: TextIO, *, tty: bool, every: float = 5.0) -> None:
        self.out, self.tty, self.every = out, tty, every
        self.started = time.monotonic()
        self.first_done: int | None = None
        self.last_line = 0.0
        self.last_status: dict[str, Any] | None = None
        self.last_note: str | None = None

    def line(self, status: dict[str, Any], note: str | None = None) -> str:
        c = status["request_counts"]
        done = c["total"] - c["processing"]
        if self.first_done is None:
            self.first_done = done
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (done - self.first_done) / elapsed
        eta = f"ETA {c['processing'] / rate:.0f}s" if rate > 0 and c["processing"] else ("done" if not c["processing"] else "ETA -")
        ended = "".join(f", {c[k]} {k}" for k in ("canceled", "expired") if c.get(k))
        text = (f"{done}/{c['total']} done, {c['errored']} errored{ended}, {rate:.1f} req/s, "
                f"cost ${status['cost']['total']}, {eta}")
        parked = status.get("parked")
        if parked:
            text += f", {parked['requests']} parked ({parked['reason']})"
        if note:
            text += f" - {note}"
        if not self.tty:
            return f"{status['id']}: {text}"
        filled = int(BAR * done / c["total"]) if c["total"] else BAR
        return f"[{'#' * filled}{'.' * (BAR - filled)}] {text}"

    def update(self, status: dict[str, Any] | None, note: str | None = None) -> None:
        """Show `status` (None: the last one again, when no new one could be read) with an optional note."""
        status = status or self.last_status
        self.last_status = status
        text = self.line(status, note) if status else (note or "")
        changed = _gist(note) != _gist(self.last_note)  # another note, not the same one with a new count
        self.last_note = note
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
        elif changed or time.monotonic() - self.last_line >= self.every or self.last_line == 0.0:
            self.out.write(text + "\n")
            self.out.flush()
            self.last_line = time.monotonic()

    def finish(self, status: dict[str, Any]) -> None:
        text = self.line(status)
        self.out.write(("\r\033[K" + text + "\n") if self.tty else (text + "\n"))
        self.out.flush()


def _gist(note: str | None) -> str | None:
    return re.sub(r"\d+", "N", note) if note else None
