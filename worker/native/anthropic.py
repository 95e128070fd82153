"""Anthropic Message Batches over HTTP: create (the body streamed), find a lost create, retrieve,
cancel, and the results streamed line by line (any order; never the whole file in memory)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import IO

import httpx

from ..providers.anthropic import batches as wire
from ..registry import Registry
from ..settings import Settings
from .api import CANCELED, ERRORED, EXPIRED, SUCCEEDED, Answer, CallFailed, Poll, auth, checked, chunks
from .records import Line
from .state import Part

LIST_PAGE = 100
CLOCK_SKEW = 300.0  # a batch created this long before the intent (by the provider's clock) may still be ours


class AnthropicBatches:
    def __init__(self, client: httpx.Client, settings: Settings, registry: Registry) -> None:
        self.client = client
        self.base = settings.base_url("anthropic").rstrip("/")
        self.headers = {**auth(settings, "anthropic"), "anthropic-version": registry.api_version("anthropic")}

    def write(self, part: Part, lines: Iterator[Line | None], spool: IO[bytes]) -> int:
        """`{"requests": [...]}`, one request at a time."""
        spool.write(b'{"requests":[')
        sent = 0
        for position, line in enumerate(lines):
            if line is None:
                continue
            item = {"custom_id": wire.sent_id(part.marker, position), "params": line.call.json}
            spool.write((b"," if sent else b"") + json.dumps(item, separators=(",", ":")).encode())
            sent += 1
        spool.write(b"]}")
        return sent

    def create(self, part: Part, spool: IO[bytes], size: int) -> str:
        headers = {**json.loads(part.group or "{}"), **self.headers, "content-type": "application/json",
                   "content-length": str(size)}
        r = self.client.post(self.base + wire.PATH, content=chunks(spool), headers=headers)
        return str(checked(r).json()["id"])

    def find(self, part: Part) -> list[str]:
        """Batches created around the intent with the part's request count, the closest in time first:
        the first not recorded by another intent is the one a lost create made. (Anthropic keeps no
        name on a batch, and its custom_ids show only in the results, so time and count must do.)"""
        since = part.intent_at - CLOCK_SKEW
        after: str | None = None
        found: list[tuple[float, str]] = []
        while True:
            query: dict[str, str | int] = {"limit": LIST_PAGE, **({"after_id": after} if after else {})}
            page = checked(self.client.get(self.base + wire.PATH, params=query, headers=self.headers)).json()
            for batch in page.get("data") or []:
                created = _timestamp(batch.get("created_at"))
                if created < since:
                    return _closest(found)
                if sum((batch.get("request_counts") or {}).values()) == part.sent:
                    found.append((abs(created - part.intent_at), str(batch["id"])))
            if not page.get("has_more") or not page.get("last_id"):
                return _closest(found)
            after = page["last_id"]

    def poll(self, part: Part) -> Poll:
        r = checked(self.client.get(f"{self.base}{wire.PATH}/{part.provider_id}", headers=self.headers)).json()
        status = str(r.get("processing_status"))
        return Poll(status, status == wire.ENDED, progress=dict(r.get("request_counts") or {}))

    def cancel(self, part: Part) -> None:
        r = self.client.post(f"{self.base}{wire.PATH}/{part.provider_id}/cancel", headers=self.headers)
        if r.status_code != 409:  # already ended: nothing to cancel
            checked(r)

    def cleanup(self, part: Part) -> None:
        """Nothing to do: results stay downloadable for 29 days and count against no quota."""

    def results(self, part: Part) -> Iterator[Answer]:
        url = f"{self.base}{wire.PATH}/{part.provider_id}/results"
        with self.client.stream("GET", url, headers=self.headers) as r:
            if not r.is_success:
                r.read()
                checked(r)
            for raw in r.iter_lines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                position = wire.position_of(part.marker, str(line.get("custom_id")))
                if position is None or position >= part.count:
                    continue  # not one this part sent: ignored
                result = line.get("result") or {}
                kind = result.get("type")
                if kind == SUCCEEDED:
                    yield Answer(position, SUCCEEDED, data=result.get("message"))
                elif kind == ERRORED:
                    yield Answer(position, ERRORED, error=wire.result_error(result))
                elif kind in (CANCELED, EXPIRED):
                    yield Answer(position, kind)


def _closest(found: list[tuple[float, str]]) -> list[str]:
    return [batch for _, batch in sorted(found)]


def _timestamp(text: object) -> float:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


__all__ = ["AnthropicBatches", "CallFailed"]
