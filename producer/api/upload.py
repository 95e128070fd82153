"""A multipart/form-data upload streamed from the socket straight into a FileWriter.

Starlette's form parser spools every file to a temporary file first and knows no size limit for
it; this reads the body as it arrives, hands the file part's bytes to the writer about 1 MiB at a
time (in a worker thread: Redis calls are blocking) and stops at the first byte over the limit.
So the server holds about one chunk of an upload, never the file, and a refused upload leaves
nothing behind. The other fields are small (`purpose`, `expires_after[...]`) and are kept in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import python_multipart
import python_multipart.exceptions
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from .errors import ApiError
from .filestore import CHUNK, FileWriter

MAX_FIELD_BYTES = 64 * 1024  # all the non-file fields together
MAX_FIELDS = 32


def bad_upload(message: str) -> ApiError:
    return ApiError(400, message, code="invalid_request")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"The file is too large: the limit is {limit:,} bytes ({limit / 2**20:g} MiB); split it.",
                    code="file_too_large")


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary, or the 400 a client that sent JSON or nothing gets."""
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise bad_upload(f"Content-Type must be multipart/form-data for a file upload, got {(content_type or 'none')[:100]!r}")
    if not options.get(b"boundary"):
        raise bad_upload("Content-Type multipart/form-data needs a boundary")
    return options[b"boundary"]


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    disposition: bytes = b""
    header_name: bytes = b""
    header_value: bytes = b""


@dataclass
class UploadForm:
    """What the form held: its small fields, and the file's name once its bytes are in the writer."""

    writer: FileWriter
    limit: int
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_field: str | None = None
    _part: _Part = field(default_factory=_Part)
    _pending: bytearray = field(default_factory=bytearray)
    _field_bytes: int = 0
    _ended: bool = False
    _error: ApiError | None = None

    async def read(self, boundary: bytes, stream: AsyncIterator[bytes]) -> None:
        """Parse the whole body; ApiError 400 for a malformed form, 413 past the limit."""
        parser = python_multipart.MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._data,
            "on_part_end": self._part_end, "on_end": self._end})
        async for chunk in stream:
            try:
                parser.write(chunk)
            except python_multipart.exceptions.FormParserError as exc:
                raise bad_upload(f"Malformed multipart body: {str(exc)[:200]}") from exc
            if self._error is not None:
                raise self._error
            if len(self._pending) >= CHUNK:
                await self._flush()
        parser.finalize()
        if not self._ended:
            raise bad_upload("Malformed multipart body: it ends before its closing boundary")
        await self._flush()

    async def _flush(self) -> None:
        data, self._pending = bytes(self._pending), bytearray()
        await run_in_threadpool(self.writer.write, data)

    # -- parser callbacks (synchronous, inside parser.write) ----------------------------------------
    def _begin(self) -> None:
        self._part = _Part()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._part.header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._part.header_value += data[start:end]
        if len(self._part.header_value) > MAX_FIELD_BYTES:
            self._fail(bad_upload("Malformed multipart body: a part header is too long"))

    def _header_end(self) -> None:
        if self._part.header_name.lower() == b"content-disposition":
            self._part.disposition = self._part.header_value
        self._part.header_name = self._part.header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._part.disposition)
        if b"name" not in options:
            return self._fail(bad_upload('Malformed multipart body: a part has no Content-Disposition name'))
        self._part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self.file_field is not None:
                return self._fail(bad_upload("Upload one file per request (the form holds more than one)"))
            self.file_field = self._part.name
            self._part.filename = options[b"filename"].decode("utf-8", "replace")
        elif len(self.fields) >= MAX_FIELDS:
            self._fail(bad_upload(f"Too many form fields (at most {MAX_FIELDS})"))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._error is not None:
            return
        if self._part.filename is None:
            self._field_bytes += end - start
            if self._field_bytes > MAX_FIELD_BYTES:
                return self._fail(bad_upload("The form's fields are too long"))
            self.fields[self._part.name] = self.fields.get(self._part.name, "") + data[start:end].decode("utf-8", "replace")
            return
        if self.writer.size + len(self._pending) + (end - start) > self.limit:
            return self._fail(too_large(self.limit))
        self._pending += data[start:end]

    def _part_end(self) -> None:
        if self._part.filename is not None:
            self.filename = self._part.filename
        else:
            self.fields.setdefault(self._part.name, "")

    def _end(self) -> None:
        self._ended = True

    def _fail(self, error: ApiError) -> None:
        """Callbacks cannot raise through the parser cleanly: remember, and raise after write()."""
        if self._error is None:
            self._error = error
