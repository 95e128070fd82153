"""One blocked read of every batch's end per server process, waking the calls that wait on those batches.

A call is a one-request batch, and its end is an entry on `{p}:events` (the stream the commit script
adds every batch's end to). Instead of a blocked XREAD per waiting call (a Redis connection and three
commands each), one reader follows that stream from where it was when the first call came, and
resolves the future of the call whose batch ended. A call registers before its batch is submitted,
so its end cannot pass unseen. The reader also fetches what each ended batch's waiter wants (its
result line), all the ends of one read in one round trip. If the reader cannot read (Redis restarting),
calls still look up their result every few seconds on their own (calls.BLOCK_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import redis

from .aredis import AsyncRedis
from .codec import text

log = logging.getLogger("otb.api")

READ_BLOCK_MS = 5000  # one blocked read of the stream (the client's socket timeout is longer)
READ_COUNT = 1000  # entries taken per read
RETRY_S = 0.5  # pause after a failed read


Ended = asyncio.Future[bytes | None]  # resolved when the batch ended: the field `fetch` names (None: not there)


class BatchEnds:
    """Futures for batches someone waits on, resolved when the stream says the batch ended, with the
    hash field `fetch(batch_id)` names (a call's result line) read at once."""

    def __init__(self, redis_: AsyncRedis, stream: str, fetch: Callable[[str], tuple[str, str]]) -> None:
        self.redis, self.stream, self.fetch = redis_, stream, fetch
        self.waiting: dict[str, Ended] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None

    @contextlib.asynccontextmanager
    async def watch(self, batch_id: str) -> AsyncIterator[Ended]:
        """A future resolved when `batch_id` ends; register before submitting the batch."""
        await self._started()
        ended: Ended = asyncio.get_running_loop().create_future()
        self.waiting[batch_id] = ended
        try:
            yield ended
        finally:
            self.waiting.pop(batch_id, None)

    async def _started(self) -> None:
        """The reader runs (started on the first call, in the server's loop) and knows where the stream is."""
        if self._reader is None or self._reader.done():
            self._ready = asyncio.Event()
            self._reader = asyncio.create_task(self._read(self._ready), name="otb-batch-ends")
        assert self._ready is not None
        await self._ready.wait()

    async def _read(self, ready: asyncio.Event) -> None:
        last: str | None = None
        while True:
            try:
                if last is None:
                    last = await self._tail()
                    ready.set()
                read = cast(list[tuple[Any, list[tuple[bytes, dict[bytes, bytes]]]]], await self.redis.client.xread(
                    {self.stream: last}, block=READ_BLOCK_MS, count=READ_COUNT))
            except (redis.RedisError, OSError) as exc:
                ready.set()  # the calls look up their results on their own meanwhile
                log.warning("reading the batch ends (%s) failed: %s; again in %.1f s", self.stream, exc, RETRY_S)
                await asyncio.sleep(RETRY_S)
                continue
            ended: list[str] = []
            for _, entries in read or []:
                for entry_id, fields in entries:
                    last = text(entry_id)
                    bid = text(fields.get(b"batch", b""))
                    if bid in self.waiting and not self.waiting[bid].done():
                        ended.append(bid)
            if ended:
                await self._resolve(ended)

    async def _tail(self) -> str:
        """The id of the stream's last entry: reading starts after it ("0-0" for an empty stream)."""
        newest = cast(list[tuple[bytes, Any]], await self.redis.client.xrevrange(self.stream, count=1))
        return text(newest[0][0]) if newest else "0-0"

    async def _resolve(self, batch_ids: list[str]) -> None:
        """Wake the waiters of these ended batches with what they want, read in one round trip (None if
        the read fails: each looks it up itself)."""
        try:
            async with self.redis.client.pipeline(transaction=False) as pipe:
                for bid in batch_ids:
                    pipe.hget(*self.fetch(bid))
                found: list[bytes | None] = await pipe.execute()
        except (redis.RedisError, OSError):
            found = [None] * len(batch_ids)
        for bid, value in zip(batch_ids, found):
            ended = self.waiting.get(bid)
            if ended is not None and not ended.done():
                ended.set_result(value)
