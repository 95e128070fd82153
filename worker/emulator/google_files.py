"""Gemini's Files API: the resumable upload, file metadata, list, delete and the download of generated files.

Upload, as python-genai does it: `POST /upload/v1beta/files` with `X-Goog-Upload-Protocol: resumable`,
`X-Goog-Upload-Command: start` and `X-Goog-Upload-Header-Content-Length/-Type` (body `{"file": {...}}`)
answers an `X-Goog-Upload-URL`; chunks are POSTed there with `X-Goog-Upload-Command: upload` (the last
`upload, finalize`) and `X-Goog-Upload-Offset` equal to the bytes received so far. Each answer carries
`X-Goog-Upload-Status` (`active`, then `final` with `{"file": File}`); `query` reports
`X-Goog-Upload-Size-Received`. Only generated files (batch output) can be downloaded, as at Google:
`GET /download/v1beta/files/{id}:download?alt=media` (or `/v1beta/files/{id}:download`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import string
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .batch_jobs import now as clock_now
from .batch_jobs import rfc3339, token_page
from .batch_pipeline import Handler, base_url, control_route, parse_object, read_body, serve_control, stream_lines
from .core import EmuError, json_response
from .google import DIALECT
from .state import State

FILE_LIFETIME = 48 * 3600.0  # files are deleted 48 h after upload
FILE_ID = re.compile(r"[a-z0-9-]{1,40}")
CHUNK_GRANULARITY = 8 * 1024 * 1024
_ALPHABET = string.ascii_lowercase + string.digits


def new_id(n: int = 12) -> str:
    """Lowercase letters and digits, the shape python-genai extracts from file URIs."""
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in os.urandom(n))


@dataclass
class StoredFile:
    """One file: an upload in progress (`complete` False) or an ACTIVE file."""

    id: str
    display_name: str
    mime_type: str
    created: float
    source: str = "UPLOADED"  # or GENERATED (batch output: the only kind that downloads)
    declared: int | None = None  # X-Goog-Upload-Header-Content-Length, checked at finalize
    data: bytearray = field(default_factory=bytearray)
    complete: bool = False


class FileStore:
    """Files by id and upload sessions by upload id; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        self._uploads: dict[str, StoredFile] = {}

    def start(self, f: StoredFile) -> str:
        with self._lock:
            if f.id in self._files or any(u.id == f.id for u in self._uploads.values()):
                raise EmuError(409, f"File files/{f.id} already exists.", kind="ALREADY_EXISTS")
            upload_id = new_id(24)
            self._uploads[upload_id] = f
            return upload_id

    def session(self, upload_id: str) -> StoredFile | None:
        with self._lock:
            return self._uploads.get(upload_id)

    def finish(self, upload_id: str) -> None:
        with self._lock:
            f = self._uploads.pop(upload_id)
            f.complete = True
            self._files[f.id] = f

    def cancel(self, upload_id: str) -> None:
        with self._lock:
            self._uploads.pop(upload_id, None)

    def add_generated(self, file_id: str, display_name: str, mime_type: str, data: bytes) -> StoredFile:
        f = StoredFile(file_id, display_name, mime_type, clock_now(), "GENERATED", data=bytearray(data), complete=True)
        with self._lock:
            self._files[file_id] = f
        return f

    def get(self, file_id: str) -> StoredFile | None:
        """An ACTIVE file, or None when unknown, deleted or past its 48 hours."""
        with self._lock:
            f = self._files.get(file_id)
        return f if f is not None and clock_now() < f.created + FILE_LIFETIME else None

    def delete(self, file_id: str) -> bool:
        with self._lock:
            return self._files.pop(file_id, None) is not None

    def listed(self) -> list[StoredFile]:
        with self._lock:
            return sorted(self._files.values(), key=lambda f: -f.created)


FILES = web.AppKey("gemini_files", FileStore)


def file_resource(f: StoredFile, request: web.Request) -> dict[str, Any]:
    """The File resource, camelCase with int64 as a string, as the REST API writes it."""
    version = request.match_info.get("version", "v1beta")
    base = base_url(request)
    resource = {
        "name": f"files/{f.id}", "displayName": f.display_name, "mimeType": f.mime_type,
        "sizeBytes": str(len(f.data)), "createTime": rfc3339(f.created), "updateTime": rfc3339(f.created),
        "expirationTime": rfc3339(f.created + FILE_LIFETIME),
        "sha256Hash": base64.b64encode(hashlib.sha256(f.data).digest()).decode(),
        "uri": f"{base}/{version}/files/{f.id}", "state": "ACTIVE", "source": f.source,
    }
    if f.source == "GENERATED":
        resource["downloadUri"] = f"{base}/download/{version}/files/{f.id}:download?alt=media"
    return resource


def _lookup(request: web.Request) -> StoredFile:
    file_id = request.match_info["file_id"]
    f = request.app[FILES].get(file_id)
    if f is None:
        raise EmuError(404, f"File files/{file_id} was not found.", kind="NOT_FOUND")
    return f


def _new_upload(request: web.Request, body: dict[str, Any], max_bytes: int) -> StoredFile:
    meta = body.get("file") or {}
    if not isinstance(meta, dict):
        raise EmuError(400, "Invalid JSON payload received. Invalid value at 'file': expected an object")
    declared_text = request.headers.get("X-Goog-Upload-Header-Content-Length")
    try:
        declared = int(declared_text) if declared_text is not None else None
    except ValueError:
        raise EmuError(400, "X-Goog-Upload-Header-Content-Length must be an integer") from None
    if declared is not None and not 0 <= declared <= max_bytes:
        raise EmuError(400, f"File size {declared} exceeds the limit of {max_bytes} bytes.")
    name = meta.get("name")
    file_id = name.removeprefix("files/") if isinstance(name, str) and name else new_id()
    if not FILE_ID.fullmatch(file_id):
        raise EmuError(400, f"Invalid file name {name!r}: use lowercase letters, digits and dashes (at most 40).")
    mime = (request.headers.get("X-Goog-Upload-Header-Content-Type") or meta.get("mimeType") or meta.get("mime_type")
            or "application/octet-stream")  # proto JSON takes camelCase and the proto's snake_case names alike
    display = meta.get("displayName") or meta.get("display_name") or ""
    return StoredFile(file_id, str(display), str(mime), clock_now(), declared=declared)


async def _start(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    if request.headers.get("X-Goog-Upload-Protocol", "").lower() != "resumable":
        raise EmuError(400, "The emulator supports only X-Goog-Upload-Protocol: resumable")
    if request.headers.get("X-Goog-Upload-Command", "").lower() != "start":
        raise EmuError(400, "A resumable upload begins with X-Goog-Upload-Command: start")
    body = parse_object(await request.read())
    upload_id = request.app[FILES].start(_new_upload(request, body, state.config.files_max_bytes))
    version = request.match_info["version"]
    headers.update({
        "X-Goog-Upload-URL": f"{base_url(request)}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable",
        "X-Goog-Upload-Status": "active", "X-Goog-Upload-Chunk-Granularity": str(CHUNK_GRANULARITY)})
    return web.Response(status=200, headers=headers)


async def _chunk(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """upload / upload, finalize / finalize / query / cancel on an upload URL."""
    store, upload_id = request.app[FILES], request.query["upload_id"]
    f = store.session(upload_id)
    if f is None:
        raise EmuError(404, "No upload session with this upload_id (finished, cancelled or never started).")
    commands = {c.strip().lower() for c in request.headers.get("X-Goog-Upload-Command", "").split(",")}
    if "cancel" in commands:
        store.cancel(upload_id)
        return web.Response(status=200, headers={**headers, "X-Goog-Upload-Status": "cancelled"})
    headers.update({"X-Goog-Upload-Status": "active", "X-Goog-Upload-Size-Received": str(len(f.data))})
    if commands == {"query"}:
        return web.Response(status=200, headers=headers)  # errors below keep these headers: the client resumes
    if not commands <= {"upload", "finalize"} or not commands:
        raise EmuError(400, f"Unknown X-Goog-Upload-Command {request.headers.get('X-Goog-Upload-Command')!r}")
    if "upload" in commands:
        offset = request.headers.get("X-Goog-Upload-Offset")
        if offset != str(len(f.data)):
            raise EmuError(400, f"X-Goog-Upload-Offset {offset!r} does not match the {len(f.data)} bytes received")
        f.data += await read_body(request, state.config.files_max_bytes - len(f.data), EmuError(
            400, f"The upload exceeds the limit of {state.config.files_max_bytes} bytes."))
        headers["X-Goog-Upload-Size-Received"] = str(len(f.data))
    if "finalize" not in commands:
        return web.Response(status=200, headers=headers)
    if f.declared is not None and len(f.data) != f.declared:
        raise EmuError(400, f"Upload finalized with {len(f.data)} bytes, but {f.declared} were declared at start.")
    store.finish(upload_id)
    headers["X-Goog-Upload-Status"] = "final"
    return json_response(200, {"file": file_resource(f, request)}, headers)


async def _upload(request: web.Request) -> web.StreamResponse:
    if "upload_id" in request.query:
        return await serve_control(request, DIALECT, "files.upload", _chunk, auth=False)
    return await serve_control(request, DIALECT, "files.upload.start", _start)


async def _get(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    return json_response(200, file_resource(_lookup(request), request), headers)


async def _delete(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    request.app[FILES].delete(_lookup(request).id)
    return json_response(200, {}, headers)


async def _list(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    page, token = token_page(request.app[FILES].listed(), request.query, 10, 100)
    body: dict[str, Any] = {"files": [file_resource(f, request) for f in page]}
    if token:
        body["nextPageToken"] = token
    return json_response(200, body, headers)


def _slices(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def _download(state: State, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    f = _lookup(request)
    if request.query.get("alt") != "media":
        raise EmuError(400, "Downloading file content needs ?alt=media")
    if f.source != "GENERATED":
        raise EmuError(400, "Only generated files can be downloaded; uploaded files can't be downloaded.",
                       kind="FAILED_PRECONDITION")
    return await stream_lines(request, _slices(bytes(f.data)), headers, f.mime_type)


def _route(kind: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    return control_route(DIALECT, kind, handler)


def install(app: web.Application) -> None:
    """The store and routes (before the realtime ones); version is v1beta or v1."""
    app[FILES] = FileStore()
    one = "/{version:v1beta|v1}/files/{file_id}"
    app.add_routes([
        web.post("/upload/{version:v1beta|v1}/files", _upload),
        web.get("/download/{version:v1beta|v1}/files/{file_id}:download", _route("files.download", _download)),
        web.get(one + ":download", _route("files.download", _download)),
        web.get("/{version:v1beta|v1}/files", _route("files.list", _list)),
        web.get(one, _route("files.get", _get)),
        web.delete(one, _route("files.delete", _delete)),
    ])
