"""`/v1/files`: upload (multipart, streamed), list (cursor pages), retrieve, download (streamed), delete.

Every route takes the caller's Tenant and reads only under its prefix: another tenant's file id
answers the same 404 as an id that never existed.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from .auth import Tenant, current_tenant
from .errors import ApiError, not_found
from .filestore import BATCH_FILE_TTL, DAY, FileGone, FileMeta, FileStore
from .pages import Order, after_param, cursor_page
from .upload import UploadForm, boundary_of, too_large

router = APIRouter(prefix="/v1/files", tags=["files"])
log = logging.getLogger("otb.api.files")

FORM_SLACK = 64 * 1024  # multipart framing and small fields allowed on top of the file itself
MAX_FILENAME = 255
EXPIRY_RANGE = (3600, 30 * DAY)  # OpenAI's bounds for expires_after[seconds]

_UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "A .jsonl batch input file."},
                   "purpose": {"type": "string", "enum": ["batch"]},
                   "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                   "expires_after[seconds]": {"type": "integer", "minimum": EXPIRY_RANGE[0],
                                              "maximum": EXPIRY_RANGE[1]}}}}}}}


def _store(request: Request) -> FileStore:
    return request.app.state.files


@router.post("", openapi_extra=_UPLOAD_DOC, summary="Upload a batch input file (.jsonl, purpose=batch)")
async def create_file(request: Request, tenant: Tenant = Depends(current_tenant)) -> dict[str, Any]:
    limit: int = request.app.state.max_file_bytes
    boundary = boundary_of(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_SLACK:
        raise too_large(limit)  # refused before a byte of it is read
    writer = _store(request).writer(tenant.name)
    form = UploadForm(writer, limit)
    try:
        await form.read(boundary, request.stream())
        filename, ttl = _checked(form)
        meta = await run_in_threadpool(writer.commit, filename=filename, purpose="batch", ttl=ttl)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return meta.to_openai()


def _checked(form: UploadForm) -> tuple[str, int]:
    """The stored name and lifetime, once the form is known to be a batch file upload."""
    if form.filename is None or form.file_field != "file":
        raise ApiError(400, "Missing required parameter: 'file' (a multipart file field)", code="invalid_request",
                       param="file")
    purpose = form.fields.get("purpose")
    if purpose is None:
        raise ApiError(400, "Missing required parameter: 'purpose' (batch).", code="invalid_request", param="purpose")
    if purpose != "batch":
        raise ApiError(400, f"Invalid value for 'purpose': {str(purpose)[:40]!r}; this server takes 'batch' files",
                       code="invalid_request", param="purpose")
    filename = form.filename.replace("\\", "/").rsplit("/", 1)[-1][:MAX_FILENAME]
    if not filename.lower().endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", code="invalid_request", param="file")
    if form.writer.size == 0:
        raise ApiError(400, "The file is empty: a batch file holds one request per line", code="invalid_request",
                       param="file")
    return filename, _lifetime(form.fields)


def _lifetime(fields: dict[str, str]) -> int:
    """`expires_after[seconds]` counted from `created_at` (the only anchor), else 30 days."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return BATCH_FILE_TTL
    if anchor != "created_at":
        raise ApiError(400, "Invalid value for 'expires_after.anchor': must be 'created_at'",
                       code="invalid_request", param="expires_after.anchor")
    low, high = EXPIRY_RANGE
    if not (seconds or "").strip().isdigit() or not low <= int(seconds or 0) <= high:
        raise ApiError(400, f"Invalid value for 'expires_after.seconds': a whole number from {low} to {high}",
                       code="invalid_request", param="expires_after.seconds")
    return int(seconds or 0)


@router.get("", summary="List your files (cursor pages)")
def list_files(request: Request, tenant: Tenant = Depends(current_tenant), after: str | None = after_param(),
               limit: int = Query(10_000, ge=1, le=10_000), order: Order = "desc",
               purpose: str | None = Query(None, max_length=64)) -> dict[str, Any]:
    files, has_more = _store(request).page(tenant.name, after=after, limit=limit, order=order, purpose=purpose)
    return cursor_page([f.to_openai() for f in files], has_more)


def _own(request: Request, tenant: Tenant, file_id: str) -> FileMeta:
    meta = _store(request).get(tenant.name, file_id)
    if meta is None:
        raise not_found("File", file_id)
    return meta


class _Download(StreamingResponse):
    """A file's bytes under its Content-Length. A file deleted (or expiring) while it streams ends the
    answer short, which the client sees as an error (never as a shorter file); the server logs one line
    (and uvicorn one more, that the answer was not completed) instead of a traceback."""

    def __init__(self, meta: FileMeta, store: FileStore) -> None:
        super().__init__(store.chunks(meta), media_type="application/octet-stream",
                         headers={"content-length": str(meta.bytes)})
        self.file_id = meta.id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except FileGone:
            log.warning("file %s was deleted while it was downloaded: the answer was cut short", self.file_id)


@router.get("/{file_id}/content", summary="Download a file's bytes (streamed)",
            response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}})
def file_content(request: Request, file_id: str, tenant: Tenant = Depends(current_tenant)) -> StreamingResponse:
    return _Download(_own(request, tenant, file_id), _store(request))


@router.get("/{file_id:path}", summary="Retrieve a file object")
def retrieve_file(request: Request, file_id: str, tenant: Tenant = Depends(current_tenant)) -> dict[str, Any]:
    return _own(request, tenant, file_id).to_openai()


@router.delete("/{file_id:path}", summary="Delete a file")
def delete_file(request: Request, file_id: str, tenant: Tenant = Depends(current_tenant)) -> dict[str, Any]:
    if not _store(request).delete(tenant.name, file_id):
        raise not_found("File", file_id)
    return {"id": file_id, "object": "file", "deleted": True}

