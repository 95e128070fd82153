"""Files in Redis, per tenant, written and read in chunks: no whole file in memory, one copy in Redis.

A file is a hash of its FileObject fields and a list of its bytes in chunks of about 1 MiB. A writer
pushes chunks as they arrive under a short staging lifetime and makes the file visible (its record,
its lifetime, its place in the tenant's list) in one transaction at the end; a writer that fails
deletes what it pushed, and one that is killed leaves it to expire within `STAGING_TTL`. Readers
stream the chunks (`chunks()`), or lines (`lines()`, for batches that read an input file line by line).

Ids are `file-` + the creation time in milliseconds (11 hex digits) + 13 random hex digits, so they
sort by time: the tenant's list is a sorted set of ids with score 0, read by range after a cursor id,
which stays valid when the file it names is deleted. Times come from worker/clock.py.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from worker import clock
from worker.errors import OTBError
from worker.keys import Keys

from .codec import Fields, binary, text, text_hash


# Bytes per Redis list element: just under 1 MiB, because jemalloc rounds an allocation of 1 MiB plus
# Redis's string header up to its next size class (1.25 MiB): 25% more memory than the file.
CHUNK = 1024 * 1024 - 1024
STAGING_TTL = 900  # seconds an upload's chunks live before the upload completes
DAY = 24 * 3600
BATCH_FILE_TTL = 30 * DAY  # OpenAI: files with purpose batch expire after 30 days by default
FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")


_last_ms = 0
_id_lock = threading.Lock()


class FileGone(OTBError):
    """The file vanished (deleted, or its lifetime ended) while it was being read: what was read is
    not the file, however well it parses (a cut at a line end looks like a shorter file)."""


def new_id(prefix: str) -> str:
    """Time-ordered: two ids made by one process in the same millisecond still sort in creation order."""
    global _last_ms
    with _id_lock:
        _last_ms = max(int(clock.now() * 1000), _last_ms + 1)
        ms = _last_ms
    return f"{prefix}{ms:011x}{secrets.token_hex(7)[:13]}"


def new_file_id() -> str:
    return new_id("file-")


@dataclass(frozen=True)
class FileMeta:
    """A stored file: OpenAI's FileObject fields, plus its owner and line count (ours, not sent)."""

    id: str
    tenant: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None
    lines: int

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": self.expires_at, "status_details": None}

    def fields(self) -> Fields:
        return {k: "" if v is None else str(v) for k, v in asdict(self).items()}

    @classmethod
    def parse(cls, raw: Mapping[Any, Any]) -> "FileMeta":
        f = text_hash(raw)
        return cls(id=f["id"], tenant=f["tenant"], bytes=int(f["bytes"]), created_at=int(f["created_at"]),
                   filename=f["filename"], purpose=f["purpose"],
                   expires_at=int(f["expires_at"]) if f.get("expires_at") else None, lines=int(f.get("lines") or 0))

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= clock.now()


class FileWriter:
    """Appends a new file's bytes chunk by chunk; `commit()` makes it visible, `abort()` removes it."""

    def __init__(self, store: "FileStore", tenant: str) -> None:
        self.store, self.tenant = store, tenant
        self.id = new_file_id()
        self.size = self.lines = 0
        self._pending = bytearray()
        self._ends_with_newline = True

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        self.lines += data.count(b"\n")
        self._ends_with_newline = data.endswith(b"\n")
        self._pending += data
        while len(self._pending) >= CHUNK:
            self._push(bytes(self._pending[:CHUNK]))
            del self._pending[:CHUNK]

    def _push(self, chunk: bytes) -> None:
        key = self.store.keys.file_data(self.tenant, self.id)
        with self.store.conn.pipeline(transaction=False) as pipe:
            pipe.rpush(key, chunk)
            pipe.expire(key, STAGING_TTL)
            pipe.execute()

    def flush(self) -> None:
        """Push what is still buffered (still staged: invisible, short-lived)."""
        if self._pending:
            self._push(bytes(self._pending))
            self._pending.clear()

    def commit(self, *, filename: str, purpose: str, ttl: int | None) -> FileMeta:
        """Flush, then record, date and list the file in one transaction."""
        self.flush()
        with self.store.conn.pipeline() as pipe:
            meta = self.queue_commit(pipe, filename=filename, purpose=purpose, ttl=ttl)
            pipe.execute()
        return meta

    def queue_commit(self, pipe: Any, *, filename: str, purpose: str, ttl: int | None) -> FileMeta:
        """Queue the commit on the caller's transaction (flushed first), so the file appears together
        with what else it writes, or not at all."""
        self.flush()
        created = int(clock.now())
        lines = self.lines + (0 if self._ends_with_newline or not self.size else 1)
        meta = FileMeta(self.id, self.tenant, self.size, created, filename, purpose,
                        created + ttl if ttl else None, lines)
        keys = self.store.keys
        pipe.hset(keys.file(self.tenant, self.id), mapping=meta.fields())
        for key in (keys.file(self.tenant, self.id), keys.file_data(self.tenant, self.id)):
            pipe.expire(key, ttl) if ttl else pipe.persist(key)
        pipe.zadd(keys.files(self.tenant), {self.id: 0})
        return meta

    def abort(self) -> None:
        self._pending.clear()
        self.store.conn.unlink(self.store.keys.file_data(self.tenant, self.id))


class FileStore:
    """One tenant's view is every call's first argument: nothing here reads across tenants."""

    def __init__(self, conn: redis.Redis, prefix: str = "otb") -> None:
        self.conn, self.keys = conn, Keys(prefix)

    def writer(self, tenant: str) -> FileWriter:
        return FileWriter(self, tenant)

    def get(self, tenant: str, file_id: str) -> FileMeta | None:
        """The tenant's own live file, else None: an unknown id, another tenant's and an expired one
        read the same."""
        if not FILE_ID.match(file_id):
            return None
        raw = self.conn.hgetall(self.keys.file(tenant, file_id))
        if not raw:
            return None
        meta = FileMeta.parse(raw)
        return None if meta.tenant != tenant or meta.expired() else meta

    def delete(self, tenant: str, file_id: str) -> bool:
        if self.get(tenant, file_id) is None:
            return False
        with self.conn.pipeline() as pipe:
            pipe.unlink(self.keys.file(tenant, file_id), self.keys.file_data(tenant, file_id))
            pipe.zrem(self.keys.files(tenant), file_id)
            pipe.execute()
        return True

    def chunks(self, meta: FileMeta) -> Iterator[bytes]:
        """The file's bytes, one stored chunk at a time; FileGone after the last one read if the file
        was deleted or expired meanwhile (what was read is then not the file)."""
        key = self.keys.file_data(meta.tenant, meta.id)
        index = read = 0
        while True:
            got = self.conn.lrange(key, index, index)
            if not got:
                break
            chunk = binary(got[0])
            read += len(chunk)
            yield chunk
            index += 1
        if read < meta.bytes:
            raise FileGone(f"The file {meta.id} was deleted or expired while it was read ({read:,} of "
                           f"{meta.bytes:,} bytes)")

    def lines(self, meta: FileMeta) -> Iterator[bytes]:
        """The file's lines without their line ends, holding one chunk and one line at a time;
        FileGone (before its last, cut line) if the file was deleted or expired while it was read."""
        tail = b""
        for chunk in self.chunks(meta):
            parts = (tail + chunk).split(b"\n")
            tail = parts.pop()
            for part in parts:
                yield part.removesuffix(b"\r")
        if tail:
            yield tail.removesuffix(b"\r")

    def page(self, tenant: str, *, after: str | None, limit: int, order: str,
             purpose: str | None = None) -> tuple[list[FileMeta], bool]:
        """Up to `limit` live files after the cursor id, newest first for `desc`, and whether more follow.

        Index entries whose file has expired are dropped as they are met.
        """
        index = self.keys.files(tenant)
        found: list[FileMeta] = []
        cursor = after
        while len(found) <= limit:
            ids = self._ids_after(index, cursor, order, max(limit + 1 - len(found), 100))
            if not ids:
                break
            for meta, file_id in zip(self._metas(tenant, ids), ids):
                if meta is None:
                    self.conn.zrem(index, file_id)
                elif purpose is None or meta.purpose == purpose:
                    found.append(meta)
            cursor = ids[-1]
        return found[:limit], len(found) > limit

    def _ids_after(self, index: str, cursor: str | None, order: str, count: int) -> list[str]:
        if order == "asc":
            ids = self.conn.zrangebylex(index, f"({cursor}" if cursor else "-", "+", start=0, num=count)
        else:
            ids = self.conn.zrevrangebylex(index, f"({cursor}" if cursor else "+", "-", start=0, num=count)
        return [text(i) for i in ids]

    def _metas(self, tenant: str, ids: list[str]) -> list[FileMeta | None]:
        with self.conn.pipeline(transaction=False) as pipe:
            for file_id in ids:
                pipe.hgetall(self.keys.file(tenant, file_id))
            raws = pipe.execute()
        metas = [FileMeta.parse(raw) if raw else None for raw in raws]
        return [m if m is not None and m.tenant == tenant and not m.expired() else None for m in metas]
