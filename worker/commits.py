"""Group commit: the results a chunk run finishes close together go to Redis in one script call.

Committing each result on its own cost a thread hop, a round trip and ~45 Redis commands (the
counters of the batch record and of two aggregate hashes, one by one); at the defaults that was 30
commands and a quarter of the work horse's CPU per request. Here a request hands its result line to
the run's `Committer` and waits; one writer task takes everything that has gathered, at most
`linger` seconds after the first of it (at once when no other call is in flight, so a lone request
is never held back), and writes it with `Store.commit_many`: per batch and hour, one script call
that stores every line once and adds the sums once. The once-only rules are the script's, the same
for a group as for one line. While Redis refuses writes the group waits, whole, and is sent again
(`Writes.persist`): a line already written by a send whose answer was lost counts as written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .store import Store
from .writes import Writes

LINGER = 0.025  # seconds a result may wait for others to share its script call
GROUP = 500  # results per flush at most


class Committer:
    """The run's one writer of results. `commit` returns what `Store.commit` would have."""

    def __init__(self, store: Store, writes: Writes, *, quiet: Callable[[], bool] = lambda: True,
                 linger: float = LINGER) -> None:
        """`quiet()`: no call is in flight, so no other result is coming soon (flush at once)."""
        self.store, self.writes, self.quiet, self.linger = store, writes, quiet, linger
        self._queue: list[tuple[str, str, str, dict[str, Any], str, asyncio.Future[int]]] = []  # bid, pool, entry, done
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._alone = False  # an `alone` result waits: write without the linger
        self.flushes = self.committed = 0  # for tests and the bench: results per script call

    async def commit(self, bid: str, custom_id: str, line: dict[str, Any], outcome: str, *,
                     alone: bool = False, pool: str = "") -> bool:
        """Store one final result once; False if another answer was there or the batch is gone. `alone`:
        the result of a one-request batch (an HTTP call someone waits on): groups are per batch, so nothing
        could share its script call, and it is written without the linger. `pool`: the batch's tenant,
        whose spend its cost is added to (Store.commit_many)."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((bid, pool, custom_id, line, outcome, done))
        self._alone = self._alone or alone
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        return await done == 1

    async def close(self) -> None:
        """Write what is still waiting, at once, and stop the writer (a stop may have cancelled the
        requests of some of it: their results are stored all the same, as their calls were paid)."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer

    async def _write(self) -> None:
        while self._queue or not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            first = time.monotonic()
            while len(self._queue) < GROUP and not self._closing and not self.quiet() and not self._alone \
                    and time.monotonic() - first < self.linger:
                await asyncio.sleep(0.002)
            await self._flush()

    async def _flush(self) -> None:
        self._alone = False
        group, self._queue = self._queue[:GROUP], self._queue[GROUP:]
        if self._queue:
            self._wake.set()
        by_batch: dict[str, list[int]] = {}
        for i, (bid, *_rest) in enumerate(group):
            by_batch.setdefault(bid, []).append(i)

        def write() -> list[int]:
            codes = [0] * len(group)
            for bid, positions in by_batch.items():
                got = self.store.commit_many(bid, [group[i][2:5] for i in positions], pool=group[positions[0]][1])
                for i, code in zip(positions, got):
                    codes[i] = code
            return codes

        try:
            codes = await self.writes.persist(write)
        except Exception as exc:  # Redis refused for good (not a pause): each request says so itself
            for *_rest, done in group:
                if not done.done():
                    done.set_exception(exc)
            return
        self.flushes += 1
        self.committed += len(group)
        for (*_rest, done), code in zip(group, codes):
            if not done.done():  # its request may have been cut off by a stop meanwhile
                done.set_result(code)
