"""Progress of a running batch: done/total, errored, requests per second, cost so far, ETA.

On a terminal one line is redrawn in place with a bar; when output is a file or a pipe (CI logs,
`| tee`), a plain line is written every `every` seconds and at the end, so logs stay readable.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

BAR = 24


class Progress:
    def __init__(self, out: TextIO, *, tty: bool, every: float = 5.0) -> None:
        self.out, self.tty, self.every = out, tty, every
        self.started = time.monotonic()
        self.first_done: int | None = None
        self.last_line = 0.0

    def line(self, status: dict[str, Any]) -> str:
        c = status["request_counts"]
        done = c["total"] - c["processing"]
        if self.first_done is None:
            self.first_done = done
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (done - self.first_done) / elapsed
        eta = f"ETA {c['processing'] / rate:.0f}s" if rate > 0 and c["processing"] else ("done" if not c["processing"] else "ETA -")
        failed = c["errored"] + c["canceled"] + c["expired"]
        text = (f"{done}/{c['total']} done, {failed} errored, {rate:.1f} req/s, "
                f"cost ${status['cost']['total']}, {eta}")
        parked = status.get("parked")
        if parked:
            text += f", {parked['requests']} parked ({parked['reason']})"
        if not self.tty:
            return f"{status['id']}: {text}"
        filled = int(BAR * done / c["total"]) if c["total"] else BAR
        return f"[{'#' * filled}{'.' * (BAR - filled)}] {text}"

    def update(self, status: dict[str, Any]) -> None:
        text = self.line(status)
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
        elif time.monotonic() - self.last_line >= self.every or self.last_line == 0.0:
            self.out.write(text + "\n")
            self.out.flush()
            self.last_line = time.monotonic()

    def finish(self, status: dict[str, Any]) -> None:
        text = self.line(status)
        self.out.write(("\r\033[K" + text + "\n") if self.tty else (text + "\n"))
        self.out.flush()
