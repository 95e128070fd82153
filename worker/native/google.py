"""Gemini Batch Mode over HTTP, file mode: the JSONL written to disk as it is built, uploaded through
the resumable Files API in slices, the job created with the intent's `displayName` (so a lost create
is found by listing), polled, cancelled; its output downloaded to disk and checked (count and key
set) before any line of it is handed on."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from typing import IO

import httpx

from ..providers.google import batches as wire
from ..registry import Registry
from ..settings import Settings
from .api import ERRORED, SUCCEEDED, Answer, CallFailed, Poll, auth, checked
from .records import Line
from .state import Part

log = logging.getLogger("otb.native")

UPLOAD_SLICE = 8 * 1024**2
KEY = re.compile(rb'"key"\s*:\s*"([0-9.]{5,40})"')
LIST_PAGE = 100


class GeminiBatches:
    def __init__(self, client: httpx.Client, settings: Settings, registry: Registry) -> None:
        self.client = client
        self.base = settings.base_url("google").rstrip("/")
        self.version = registry.api_version("google")
        self.headers = auth(settings, "google")

    def write(self, part: Part, lines: Iterator[Line | None], spool: IO[bytes]) -> int:
        """JSONL lines `{"key": position, "request": body}`; an embeddings line, one per input text
        (keys `{position}.{index}.{inputs}`). How many requests the file holds."""
        sent = 0
        embed = wire.is_embedding(part.group)
        for position, line in enumerate(lines):
            if line is None:
                continue
            items = line.call.json["requests"] if embed else [line.call.json]
            for index, request in enumerate(items):
                key = wire.embed_key(position, index, len(items)) if embed else str(position)
                spool.write(json.dumps({"key": key, "request": request}, separators=(",", ":")).encode() + b"\n")
            sent += len(items)
        return sent

    def create(self, part: Part, spool: IO[bytes], size: int) -> str:
        """Upload the file (free: redone after a kill), then create the job named with the intent."""
        spool.seek(0)
        part.input_file = self._upload(spool, size, part.marker)
        body = wire.create_body(part.marker, part.input_file)
        r = self.client.post(self.base + wire.create_path(part.group), json=body, headers=self.headers)
        return str(checked(r).json()["name"])

    def _upload(self, spool: IO[bytes], size: int, name: str) -> str:
        start = {**self.headers, "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                 "X-Goog-Upload-Header-Content-Length": str(size),
                 "X-Goog-Upload-Header-Content-Type": "application/jsonl"}
        r = checked(self.client.post(self.base + wire.UPLOAD_PATH.format(version=self.version), headers=start,
                                     json={"file": {"displayName": name}}))
        url = r.headers["x-goog-upload-url"]
        offset = 0
        while True:
            piece = spool.read(UPLOAD_SLICE)
            last = offset + len(piece) >= size
            r = checked(self.client.post(url, content=piece, headers={
                "X-Goog-Upload-Command": "upload, finalize" if last else "upload", "X-Goog-Upload-Offset": str(offset)}))
            offset += len(piece)
            if last:
                return str(r.json()["file"]["name"])

    def find(self, part: Part) -> list[str]:
        """Jobs named with the intent's displayName (unique per intent)."""
        found: list[str] = []
        token: str | None = None
        while True:
            query: dict[str, str | int] = {"pageSize": LIST_PAGE, **({"pageToken": token} if token else {})}
            page = checked(self.client.get(f"{self.base}/{self.version}/batches", params=query,
                                           headers=self.headers)).json()
            found += [str(op["name"]) for op in page.get("operations") or [] if wire.display_name(op) == part.marker]
            token = page.get("nextPageToken")
            if not token:
                return found[::-1]

    def poll(self, part: Part) -> Poll:
        op = checked(self.client.get(f"{self.base}/{self.version}/{part.provider_id}", headers=self.headers)).json()
        state = wire.state_of(op)
        ended = state in wire.TERMINAL
        return Poll(state, ended, has_results=ended and state not in wire.ENDED_WITHOUT_RESULTS
                    and wire.responses_file(op) is not None, progress=wire.stats(op))

    def cancel(self, part: Part) -> None:
        r = self.client.post(f"{self.base}/{self.version}/{part.provider_id}:cancel", headers=self.headers)
        if r.status_code != 400:  # FAILED_PRECONDITION: it has ended already
            checked(r)

    def cleanup(self, part: Part) -> None:
        """Delete the input and output files (20 GB of storage per project); they would expire in 48 h."""
        names = [part.input_file]
        try:
            op = checked(self.client.get(f"{self.base}/{self.version}/{part.provider_id}", headers=self.headers)).json()
            names.append(wire.responses_file(op) or "")
            for name in filter(None, names):
                self.client.delete(f"{self.base}/{self.version}/{name}", headers=self.headers)
        except (CallFailed, httpx.HTTPError) as exc:
            log.warning("%s: its files were not deleted (%s); they expire in 48 h", part.provider_id, exc)

    def results(self, part: Part) -> Iterator[Answer]:
        """The output file, downloaded to disk; its keys checked against the part before any is handed on:
        a line whose key is unknown, repeated or unreadable is dropped (its request counts as unanswered)."""
        op = checked(self.client.get(f"{self.base}/{self.version}/{part.provider_id}", headers=self.headers)).json()
        name = wire.responses_file(op)
        if name is None:
            raise CallFailed(0, f"{part.provider_id} ended without an output file")
        with tempfile.TemporaryFile() as spool:
            url = f"{self.base}/download/{self.version}/{name}:download"
            with self.client.stream("GET", url, params={"alt": "media"}, headers=self.headers) as r:
                if not r.is_success:
                    r.read()
                    checked(r)
                for piece in r.iter_bytes():
                    spool.write(piece)
            if wire.is_embedding(part.group):
                yield from self._embeddings(spool, part)
                return
            keep = self._check(spool, part)
            spool.seek(0)
            for number, raw in enumerate(spool):
                if number not in keep:
                    continue
                line = json.loads(raw)
                position = int(line["key"])
                if isinstance(line.get("response"), dict):
                    yield Answer(position, SUCCEEDED, data=line["response"])
                else:
                    yield Answer(position, ERRORED, error=wire.line_error(line.get("error") or {}))

    def _embeddings(self, spool: IO[bytes], part: Part) -> Iterator[Answer]:
        """Each line whose every input came back (the file is in completion order: one pass notes where
        each input's output line is, then each complete line is read back from the spool): its vectors,
        or the first error among its inputs. A key unknown, repeated or unreadable is dropped."""
        spool.seek(0)
        where: dict[int, dict[int, int]] = {}
        inputs: dict[int, int] = {}
        got = 0
        while raw := spool.readline():
            offset = spool.tell() - len(raw)
            key = wire.parse_embed_key(_key_of(raw))
            if key is None or not 0 <= key[0] < part.count or inputs.setdefault(key[0], key[2]) != key[2]:
                continue
            if where.setdefault(key[0], {}).setdefault(key[1], offset) == offset:
                got += 1
        if got != part.sent:
            log.warning("%s: %d of %d inputs came back; lines missing any count as unanswered", part.provider_id,
                        got, part.sent)
        for position in sorted(where):
            if len(where[position]) != inputs[position]:
                continue
            answers = []
            for index in range(inputs[position]):
                spool.seek(where[position][index])
                answer = json.loads(spool.readline())
                if answer.get("key") != wire.embed_key(position, index, inputs[position]):
                    break  # the quick read of its key was wrong: the line counts as unanswered
                answers.append(answer)
            if len(answers) != inputs[position]:
                continue
            failed = [a for a in answers if not isinstance(a.get("response"), dict)]
            if failed:
                yield Answer(position, ERRORED, error=wire.line_error(failed[0].get("error") or {}))
            else:
                yield Answer(position, SUCCEEDED, data=wire.embed_answer([a["response"] for a in answers]))

    def _check(self, spool: IO[bytes], part: Part) -> set[int]:
        """The numbers of the file's lines to use: one per known key, the first of each."""
        spool.seek(0)
        seen: set[int] = set()
        keep: set[int] = set()
        for number, raw in enumerate(spool):
            try:
                key = json.loads(raw).get("key")
                position = int(key)
            except (ValueError, TypeError, AttributeError):
                continue
            if str(position) != key or not 0 <= position < part.count or position in seen:
                continue
            seen.add(position)
            keep.add(number)
        if len(seen) != part.sent:
            log.warning("%s: %d of %d keys came back; the rest count as unanswered", part.provider_id, len(seen),
                        part.sent)
        return keep


def _key_of(raw: bytes) -> object:
    """An output line's `key` without parsing its vectors (a line is ~60 KB of numbers): the first
    `"key": "..."` in it, checked against the full parse when the line is read back; else parsed."""
    found = KEY.search(raw, 0, 200) or KEY.search(raw)
    if found:
        return found.group(1).decode()
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    return line.get("key") if isinstance(line, dict) else None
